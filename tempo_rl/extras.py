"""Optional dependencies: which extra installs each one, and the one-line error when it is missing.

tempo-rl installs from a clone of its repository (it is not on a package index), so the command
that adds an extra is `pip install -e '.[NAME]'`, run in the repository root. Every place that
imports an optional package goes through `requires` (an import) or `require` (a check before
work starts), so a missing package always reads the same way:

    tempo_rl.integrations.trl needs the Python package 'trl', which is not installed: pip install -e '.[trl]'
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator

# The extra of pyproject.toml that installs each optional package (its import name).
EXTRA_OF = {
    "accelerate": "trl",
    "trl": "trl",
    "verl": "verl",
    "matplotlib": "viz",
    "hypothesis": "testing",
    "triton": "triton",
    "mkdocs": "docs",
    "transformers": "train",
    "tokenizers": "train",
    "safetensors": "train",
    "datasets": "train",
    "tqdm": "train",
    "yaml": "train",
    "pydantic": "train",
    "filelock": "train",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
}


# Where the package's name differs from the name it is imported by.
PACKAGE_OF = {"yaml": "pyyaml"}


def install_command(extra: str) -> str:
    """The command that installs `extra` into a clone: `pip install -e '.[extra]'`."""
    return f"pip install -e '.[{extra}]'"


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed; the message is one line naming it and its install."""

    def __init__(self, what: str, module: str, extra: str):
        super().__init__(
            f"{what} needs the Python package {PACKAGE_OF.get(module, module)!r}, which is not installed: "
            + install_command(extra),
            name=module,
        )
        self.extra = extra


def _top(name: str) -> str:
    return name.split(".")[0]


@contextlib.contextmanager
def requires(extra: str, what: str) -> Iterator[None]:
    """Imports inside this block that fail for a missing package raise `MissingExtra`.

    >>> with requires("viz", "the PNG"):
    ...     import math
    """
    try:
        yield
    except ModuleNotFoundError as e:
        if isinstance(e, MissingExtra) or not e.name:
            raise
        module = _top(e.name)
        raise MissingExtra(what, module, EXTRA_OF.get(module, extra)) from None


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # a module object without a spec (made in memory) is in sys.modules: it is there
        return True


def require(modules: tuple[str, ...] | list[str], what: str, extra: str | None = None) -> None:
    """`MissingExtra` for the first of `modules` that is not installed (checked, not imported)."""
    for name in modules:
        if not _installed(name):
            raise MissingExtra(what, name, extra or EXTRA_OF.get(_top(name), "train"))
