"""The `tempo-rl` entry point: version, where commands write, and the install hint for a missing extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import tempo_rl
from tempo_rl import cli


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"tempo-rl {tempo_rl.__version__}"


def test_bench_writes_to_the_working_directory_by_default():
    bench_out = cli.build_parser().parse_args(["bench"]).out
    assert not bench_out.is_absolute() and bench_out == Path(".")


def test_bench_writes_where_told(tmp_path, monkeypatch):
    from tempo_rl.benchmarks import bench_advantage

    rows = []
    monkeypatch.setattr(bench_advantage, "shapes_for", lambda device, quick: [])
    monkeypatch.setattr(bench_advantage, "write", lambda rows_, env, out, name: rows.append((out, name)))
    monkeypatch.setattr(bench_advantage, "markdown", lambda rows_, env: "")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 0
    assert rows == [(Path("."), "advantage_cpu_quick")]


def test_inspect_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    example = Path(__file__).resolve().parent.parent / "examples" / "worked_example.jsonl"
    assert cli.main(["inspect", str(example), "-o", str(tmp_path)]) == 2
    assert "pip install -e '.[viz]'" in capsys.readouterr().err
