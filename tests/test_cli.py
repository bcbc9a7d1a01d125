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
    threads: list[int] = []
    monkeypatch.setattr(bench_advantage.torch, "set_num_threads", threads.append)
    monkeypatch.chdir(tmp_path)
    before = bench_advantage.torch.get_num_threads()
    assert cli.main(["bench", "--quick"]) == 0
    # one thread for the timings, then the caller's count back: an in-process bench leaves torch as it was
    assert rows == [(Path("."), "advantage_cpu_quick_1thread")] and threads == [1, before]


def test_bench_compares_methods_on_one_thread_by_default_and_says_why(capsys):
    """One thread is the default of every bench op (the steady figure on a shared machine); 0 leaves
    torch's default; the help says why; the table names the setting."""
    from tempo_rl.benchmarks import bench_advantage

    parser = cli.build_parser()
    assert parser.parse_args(["bench"]).threads == 1
    assert parser.parse_args(["bench", "--op", "policy_loss"]).threads == 1
    assert parser.parse_args(["bench", "--scale", "--threads", "0"]).threads == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 1: the steady figure on a shared machine" in help_text and "0: torch's default" in help_text
    env = {"device": "cpu", "threads": 1}
    assert "with the same 1 torch thread(s)" in bench_advantage.markdown([], env)


def test_inspect_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    example = Path(__file__).resolve().parent.parent / "examples" / "worked_example.jsonl"
    assert cli.main(["inspect", str(example), "-o", str(tmp_path)]) == 2
    assert "pip install -e '.[viz]'" in capsys.readouterr().err
