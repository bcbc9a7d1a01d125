"""How the codebase stays readable (STYLE.md), checked: one `Rollout`, a short training loop, short
trainer functions, a README that is a front door, and research kept out of the installed package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("tempo_rl", "reference", "fast", "trainer", "benchmarks", "viz", "integrations", "experiments", "tests")
MAX_TRAIN_LINES = 300
MAX_TRAINER_FUNCTION_LINES = 60
MAX_README_LINES = 150


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _packaged_dirs() -> list[str]:
    """The repository folders pyproject maps into the installed package."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return sorted(set(setuptools["package-dir"].values()) | {"tempo_rl"})


def test_one_rollout_class():
    where = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _python_files(*SOURCE_DIRS)
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ClassDef) and node.name == "Rollout"
    ]
    assert [w.split(":")[0] for w in where] == ["trainer/rollout.py"], where


def test_training_loop_fits_on_a_few_screens():
    n = len((ROOT / "trainer" / "train.py").read_text().splitlines())
    assert n <= MAX_TRAIN_LINES, f"trainer/train.py has {n} lines (at most {MAX_TRAIN_LINES})"


def test_no_trainer_function_is_long():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _python_files("trainer")
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_TRAINER_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_TRAINER_FUNCTION_LINES} lines: {long}"


def test_readme_is_a_front_door():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}); move detail to docs/"


def test_experiments_are_not_packaged():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any("experiments" in p for p in setuptools["packages"])
    assert "experiments" not in _packaged_dirs()


def test_the_package_does_not_import_experiments():
    """No packaged module names `experiments` in an import, and importing every module of the
    installed package's layers (engines and optional viewers aside) loads none of it."""
    offenders = []
    for path in _python_files(*_packaged_dirs()):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "experiments" or n.startswith("experiments.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
    script = (
        "import importlib, pkgutil, sys\n"
        "import tempo_rl\n"
        "for sub in ('reference', 'fast', 'trainer', 'benchmarks'):\n"
        "    pkg = importlib.import_module('tempo_rl.' + sub)\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'tempo_rl.{sub}.{m.name}')\n"
        "import tempo_rl.cli, tempo_rl.testing\n"
        "print(sorted(n for n in sys.modules if n == 'experiments' or n.startswith('experiments.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout
