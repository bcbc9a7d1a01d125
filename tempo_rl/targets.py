"""Load the object a command-line target names: `package.module:attr` or `path/to/file.py:attr`.

One loader for every place a user names their own code (`tempo-rl check TARGET`, `tempo-rl train
--reward TARGET`). The working directory is importable, as under `python -m` (the `tempo-rl`
script alone would not put it on sys.path), and a file's own folder is importable so it can
import its neighbours. `attr` may be dotted (`module:Class.method`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["load_target"]


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    name = f"tempo_rl_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r} as Python source")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(
            f"cannot import {name!r} ({type(e).__name__}: {e}); run from the directory that holds "
            f"it, or give a file: path/to/{name.replace('.', '/')}.py:function"
        ) from None


def load_target(target: str) -> Any:
    """The object `target` names ("module:attr" or "path/to/file.py:attr").

    Raises ValueError (no ":"), FileNotFoundError, ImportError or AttributeError, each message
    naming what is missing.
    """
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"expected 'module:function' or 'path/to/file.py:function', got {target!r}")
    module = _import_file(Path(where)) if where.endswith(".py") or os.sep in where else _import_module(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{where} has no {attr!r}")
        obj = getattr(obj, part)
    return obj
