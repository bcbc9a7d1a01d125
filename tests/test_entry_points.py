"""Every `tempo-rl` command and every `tempo-rl bench` op, run once as a user would, at the smallest
sizes their flags allow: exit 0, the output it promises, tables with a header row. The tables list
every command and op: a new one fails here until it is added."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tempo_rl import cli
from tempo_rl.benchmarks import bench_advantage

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "worked_example.jsonl")
SMALL_TRAIN = [
    *("--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4"),
    *("--mini-batches", "1", "--eval-every", "0", "--threads", "1", "--no-progress"),
]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def hf_progress_restored(monkeypatch):
    """`train --no-progress` switches off the Hugging Face libraries' bars for the process: back on after."""
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    yield
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    huggingface_hub.utils.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()
    datasets.enable_progress_bars()


def assert_tables_have_headers(markdown: str, where: str) -> None:
    """Each table: a header row, a separator row, then rows, all with the same number of columns."""
    lines = markdown.splitlines()
    starts = [
        i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
    ]
    assert starts, f"{where}: no table"
    for i in starts:
        block = [line for line in lines[i:] if line.startswith("|")]
        block = block[: next((k for k, line in enumerate(lines[i:]) if not line.startswith("|")), len(block))]
        width = block[0].count("|")
        assert len(block) >= 2 and re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", block[1].replace(" ", "")), (
            where,
            block[:2],
        )
        assert re.search(r"[A-Za-z]", block[0]), f"{where}: the first row is not a header: {block[0]}"
        assert all(line.count("|") == width for line in block), (where, block)


def _run(argv: list[str], capsys) -> tuple[str, str]:
    rc = cli.main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Traceback" not in out.err
    return out.out, out.err


# ----------------------------------------------------------------------------- every command
def _example(here, tiny_path, capsys):
    out, _ = _run(["example"], capsys)
    assert "TEMPO worked example" in out and "A_tempo" in out and "A_grpo" in out


def _inspect(here, tiny_path, capsys):
    out, _ = _run(["inspect", EXAMPLE, "-o", "pages"], capsys)
    assert (here / "pages" / "worked_example.html").is_file() and (here / "pages" / "worked_example.png").is_file()
    assert "wrote" in out


def _bench(here, tiny_path, capsys):
    out, _ = _run(["bench", "--shape", "8x4x16", "--repeats", "1"], capsys)
    name = "advantage_cpu_1thread"  # the default: every method on one torch thread, named in the file
    assert_tables_have_headers((here / f"{name}.md").read_text(), f"{name}.md")
    assert (here / f"{name}.png").is_file() and "torch" in out


def _train(here, tiny_path, capsys):
    out, err = _run(["train", "--model", tiny_path, "--output-dir", "run", *SMALL_TRAIN], capsys)
    assert "reward_mean per step:" in out and "per 1 steps" not in out
    assert "it/s" not in err and "Loading weights" not in err, err  # --no-progress: no bar of any library
    assert [json.loads(r)["step"] for r in (here / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


def _check(here, tiny_path, capsys):
    out, _ = _run(["check", "tempo_rl:tempo_advantages", "--max-examples", "5", "--seed", "0"], capsys)
    assert "tempo_rl:tempo_advantages" in out


COMMAND_RUNS = {
    "example": _example,
    "inspect": _inspect,
    "bench": _bench,
    "train": _train,
    "check": _check,
}


def test_every_command_is_in_the_table():
    assert set(COMMAND_RUNS) == set(cli.COMMANDS)


@pytest.mark.parametrize("name", list(COMMAND_RUNS))
def test_command_runs_on_its_defaults(name, here, tiny_path, capsys, hf_progress_restored):
    COMMAND_RUNS[name](here, tiny_path, capsys)


# ----------------------------------------------------------------------------- every bench op
BENCH_RUNS = {
    "advantage": (["--shape", "8x4x16", "--repeats", "1"], ["advantage_cpu_1thread.md", "advantage_cpu_1thread.png"]),
    "policy_loss": (
        ["--tokens", "16", "--hidden", "8", "--vocab", "32", "--repeats", "1", "--min-free-gib", "0"],
        ["policy_loss_cpu.md", "policy_loss_cpu.json"],
    ),
    "tree_forward": (
        [
            *("--fractions", "0.6", "--tree-prompts", "1", "--tree-group", "2", "--tree-prompt-len", "4"),
            *("--tree-completion", "8", "--tree-layers", "1", "--tree-hidden", "16", "--tree-vocab", "32"),
            *("--repeats", "1", "--quick", "--tree-leaves", "2", "--tree-completions", "1024", "--tree-kinds", "tree"),
        ],
        ["tree_forward_cpu.md", "tree_forward_cpu.png", "tree_forward_cpu_lengths_quick.md"],
    ),
}
SCALE = (["--scale", "--prompts", "2", "--length", "16", "--repeats", "1"], ["scale_cpu.md", "scale_cpu.json"])


def test_every_bench_op_is_in_the_table():
    assert set(BENCH_RUNS) == set(bench_advantage.OPS)


@pytest.mark.parametrize("op", [*BENCH_RUNS, "--scale"])
def test_bench_op_runs_at_its_smallest(op, here, capsys):
    flags, files = SCALE if op == "--scale" else (["--op", op, *BENCH_RUNS[op][0]], BENCH_RUNS[op][1])
    out, _ = _run(["bench", *flags, "--out", "results"], capsys)
    for name in files:
        assert (here / "results" / name).stat().st_size > 0, name
        if name.endswith(".md"):
            assert_tables_have_headers((here / "results" / name).read_text(), name)
    assert out.strip()


def test_help_states_each_default_once(monkeypatch, capsys):
    """One '(default: ...)' per option, and no 'per 1 steps', in every command's --help."""
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option
    for name in ["", *cli.COMMANDS]:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"] if name else ["--help"])
        text = capsys.readouterr().out
        doubled = [line for line in text.splitlines() if line.count("(default") > 1]
        assert not doubled, (name, doubled)
        assert "per 1 steps" not in text
