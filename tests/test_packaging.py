"""The package a user installs: a built wheel imports in a fresh venv; docs match the code."""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import tempo_rl
from tempo_rl.reference import advantage as ref_advantage
from tempo_rl.reference import padding as ref_padding
from tempo_rl.reference.example import render
from tempo_rl.testing import adapters as testing_adapters
from tempo_rl.testing import check as testing_check
from tempo_rl.testing import strategies as testing_strategies

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in tracked.stdout.split():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        check=True,
    )
    (wheel,) = wheels.glob("tempo_rl-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # torch and numpy come from this environment's site-packages (a plain path entry, so the
    # editable install's finder there is not loaded and the wheel's code is what runs).
    site = next(Path(p) for p in (env_dir / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import tempo_rl, tempo_rl.reference, tempo_rl.fast, tempo_rl.trainer, torch;"
        "print(tempo_rl.__file__); print(tempo_rl.reference.__file__);"
        "y = torch.tensor([[1, 2], [1, 3]]);"
        "print(tempo_rl.tempo_advantages(y, torch.ones_like(y), torch.tensor([1., 0.]), [0, 0],"
        " norm_by_std=False, backend='reference').tolist())"
    )
    out = subprocess.run(
        [py, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.split("\n")
    assert out[0].startswith(str(env_dir)) and out[1].startswith(str(env_dir))
    assert out[2] == "[[0.5, 1.0], [-0.5, -1.0]]"
    cli = subprocess.run([env_dir / "bin" / "tempo-rl", "example"], capture_output=True, text=True, check=True)
    assert cli.stdout == render()
    _check_command_works_from_the_wheel(env_dir, tmp_path)


def _check_command_works_from_the_wheel(env_dir: Path, tmp_path: Path) -> None:
    """The wheel ships tempo_rl.testing, and `tempo-rl check` passes a right and fails a wrong function."""
    py = env_dir / "bin" / "python"
    where = subprocess.run(
        [py, "-c", "import tempo_rl.testing as t; print(t.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(env_dir))
    (tmp_path / "impls.py").write_text(
        "import tempo_rl\n"
        "def right(*args, **options):\n"
        "    return tempo_rl.tempo_advantages(*args, backend='torch', **options)\n"
        "def wrong(*args, td_coef=1.0, **options):\n"
        "    return tempo_rl.grpo_advantages(*args, backend='torch', **options)\n"
    )
    command = [env_dir / "bin" / "tempo-rl", "check", "--max-examples", "20", "--seed", "0"]
    ok = subprocess.run([*command, "impls.py:right"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0 and "no counterexample" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run([*command, "impls.py:wrong"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "fails: equals the reference" in bad.stdout, bad.stdout + bad.stderr


def test_worked_example_note_matches_the_code():
    """proofs_notes/worked-example.md quotes `python -m tempo_rl example` verbatim."""
    note = (ROOT / "proofs_notes" / "worked-example.md").read_text()
    assert render() in note


def test_python_m_tempo_rl_example_prints_it():
    out = subprocess.run([sys.executable, "-m", "tempo_rl", "example"], capture_output=True, text=True, check=True)
    assert out.stdout == render()


@pytest.mark.parametrize(
    "module", [ref_advantage, ref_padding, tempo_rl.api, testing_strategies, testing_adapters, testing_check]
)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_reference_imports_no_torch_fast_or_trainer():
    # Import the reference package without the facade's torch-using __init__.
    loader = (
        "import importlib.util, sys, types;"
        f"root = {str(ROOT)!r};"
        "pkg = types.ModuleType('tempo_rl'); pkg.__path__ = []; sys.modules['tempo_rl'] = pkg;"
        "spec = importlib.util.spec_from_file_location('tempo_rl.reference', root + '/reference/__init__.py',"
        " submodule_search_locations=[root + '/reference']);"
        "mod = importlib.util.module_from_spec(spec); sys.modules['tempo_rl.reference'] = mod;"
        "spec.loader.exec_module(mod);"
        "print(sorted(m for m in sys.modules if m in ('torch', 'numpy') or m.startswith(('tempo_rl.fast', 'tempo_rl.trainer'))))"
    )
    out = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
