"""Every command, given each kind of bad argument: exit status 2, one line on stderr naming the flag
or file, no traceback, and nothing started. One table; each row is a command line and what the line
must name. (A resume past --steps is test_run_faults.py::test_resume_past_the_end_says_so: it needs
a finished run.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempo_rl import backends, cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "worked_example.jsonl")
HUGE = str(10**12)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Bad inputs, in a scratch working directory (so nothing a command writes lands in the repository)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    (tmp_path / "steps_true.yaml").write_text("steps: true\n")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "answer": "1"}\n')
    (tmp_path / "latin1.csv").write_bytes(b"prompt,answer\ncaf\xe9,1\n")
    (tmp_path / "header_only.csv").write_text("prompt,answer\n")
    (tmp_path / "not_saved").mkdir()
    (tmp_path / "not_saved" / "notes.txt").write_text("not a dataset")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "seed_big.yaml").write_text("seed: 4294967296\n")
    (tmp_path / "seed_digits.yaml").write_text("seed: " + "9" * 5000 + "\n")  # more digits than int() reads
    (tmp_path / "seed_digits.json").write_text('{"seed": ' + "9" * 5000 + "}\n")
    (tmp_path / "huge.yaml").write_text("seed: " + "9" * (1 << 21) + "\n")
    (tmp_path / "long_list.yaml").write_text("seed: [" + ", ".join(["1"] * 100_000) + "]\n")
    (tmp_path / "million_rewards.yaml").write_text("reward: [" + ", ".join(["numeric"] * 1_000_000) + "]\n")
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]  # the 0.6 KB alias bomb
    levels += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\nreward: [*i]\n")
    (tmp_path / "surrogate.jsonl").write_text('{"prompt": "1+1=\\ud800", "answer": "2"}\n')
    return tmp_path


def _hide_triton(monkeypatch, request) -> None:
    """This machine as one without triton: the import fails, and the backend cache forgets it."""
    import tempo_rl.fast

    for key in [k for k in sys.modules if k == "triton" or k.startswith("triton.") or "_triton" in k]:
        monkeypatch.delitem(sys.modules, key)
        if key.startswith("tempo_rl.fast."):
            monkeypatch.delattr(tempo_rl.fast, key.rsplit(".", 1)[1], raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)
    backends._try_load.cache_clear()
    request.addfinalizer(backends._try_load.cache_clear)  # later tests load triton again


NO_CUDA = not torch.cuda.is_available()
NO_VLLM = importlib.util.find_spec("vllm") is None  # make test's venv; .venv-vllm has it
TINY_POLICY = ("--tokens", "16", "--hidden", "8", "--vocab", "32", "--min-free-gib", "0")

# (argv, what the line must contain, needs: "no-triton" / "no-cuda" / "no-vllm" / None)
CASES = [
    # train: config files
    (["train", "--config", "bad.yaml"], "--config bad.yaml: not valid YAML (line 2", None),
    (["train", "--config", "a_dir"], "--config a_dir: a directory", None),
    (["train", "--config", "missing.yaml"], "--config missing.yaml: no such file", None),
    (
        ["train", "--config", "steps_true.yaml"],
        "steps (--steps): Value error, a number is expected, not a boolean",
        None,
    ),
    (["train", "--steps", "0"], "--steps", None),
    # train: limits checked before any work
    (["train", "--seed", "4294967296"], "seed (--seed): Input should be less than or equal to 4294967295", None),
    (["train", "--seed", "-1"], "seed (--seed)", None),
    (["train", "--config", "seed_big.yaml"], "seed (--seed): Input should be less than or equal to 4294967295", None),
    (["train", "--config", "seed_digits.yaml"], "--config seed_digits.yaml: Exceeds the limit (4300 digits)", None),
    (["train", "--config", "seed_digits.json"], "--config seed_digits.json: Exceeds the limit (4300 digits)", None),
    (["train", "--config", "huge.yaml"], "--config huge.yaml: 2097159 bytes, more than a config file's", None),
    (
        ["train", "--config", "long_list.yaml"],
        "seed (--seed): Input should be a valid integer (given: [1, 1, 1, 1, ...])",
        None,
    ),
    (
        ["train", "--config", "million_rewards.yaml"],
        "--config million_rewards.yaml: 9000009 bytes",
        None,
    ),
    (["train", "--reward", *["numeric"] * 100_000], "reward (--reward): 100000 reward functions, more than 1024", None),
    (["train", "--config", "bomb.yaml"], "--config bomb.yaml: line 2, column 8: a YAML alias (*name)", None),
    (
        ["train", "--temperature", "1e-45"],
        "temperature (--temperature): Input should be greater than or equal to",
        None,
    ),
    (["train", "--output-dir", ""], "output_dir (--output-dir): empty", None),
    (["train", "--dataset", "surrogate.jsonl"], "surrogate.jsonl:1: 'prompt' holds '\\ud800' at character 4", None),
    (["train", "--steps", "x"], "argument --steps: invalid int value: 'x'", None),
    (["train", "--generator", "nope"], "argument --generator: invalid choice: 'nope'", None),
    (["train", "--generator", "vllm"], "generator 'vllm' needs the Python package 'vllm'", "no-vllm"),
    # train: datasets
    (["train", "--dataset", "latin1.jsonl"], "dataset 'latin1.jsonl': not UTF-8 text", None),
    (["train", "--dataset", "latin1.csv"], "dataset 'latin1.csv': not UTF-8 text", None),
    (["train", "--dataset", "header_only.csv"], "dataset 'header_only.csv': no rows", None),
    (["train", "--dataset", "not_saved"], "dataset 'not_saved': not a directory written by save_to_disk", None),
    (["train", "--dataset", "nope.parquet"], "dataset 'nope.parquet': no such file", None),
    # inspect
    (["inspect", "a_dir"], "a_dir: a directory", None),
    (["inspect", "missing.jsonl"], "missing.jsonl", None),
    (["inspect", "latin1.jsonl"], "latin1.jsonl:1: not UTF-8", None),
    (["inspect", EXAMPLE, "--tokenizer", EXAMPLE], f"tokenizer {EXAMPLE}: not a tokenizer.json file", None),
    (["inspect", EXAMPLE, "--tokenizer", "a_dir"], "tokenizer a_dir: not a directory AutoTokenizer can load", None),
    (["inspect", EXAMPLE, "-o", "a_file"], "-o a_file: an existing file", None),
    (["inspect", EXAMPLE, "--backend", "nope"], "argument --backend: invalid choice: 'nope'", None),
    (["inspect", EXAMPLE, "--backend", "triton"], "--backend triton: backend 'triton' is not available", "no-triton"),
    # bench
    (["bench", "--repeats", "0"], "argument --repeats: must be at least 1, got 0", None),
    (["bench", "--threads", "-1"], "argument --threads: must be at least 0, got -1", None),
    (["bench", "--shape", "0x1x8"], "argument --shape", None),
    (["bench", "--shape", "8x4x" + HUGE], "--op advantage needs about", None),
    (["bench", "--quick", "--out", "a_file"], "--out a_file: an existing file", None),
    (["bench", "--quick", "--out", "a_file/results"], "--out a_file/results: results cannot be written there", None),
    (["bench", "--quick", "--out", "/proc/results"], "--out /proc/results: results cannot be written there", None),
    (["bench", "--op", "policy_loss", "--out", "a_file/r", *TINY_POLICY], "--out a_file/r: results cannot", None),
    (["bench", "--op", "nope"], "argument --op: invalid choice: 'nope'", None),
    (["bench", "--device", "cuda"], "--device cuda: no CUDA device here", "no-cuda"),
    (["bench", "--op", "policy_loss", "--tokens", "-4"], "argument --tokens: must be at least 4, got -4", None),
    (["bench", "--op", "policy_loss", "--hidden", "0"], "argument --hidden", None),
    (["bench", "--op", "policy_loss", "--tokens", HUGE], "--op policy_loss (torch) needs about", None),
    (["bench", "--op", "policy_loss", "--methods", "nope", *TINY_POLICY], "--methods: unknown method 'nope'", None),
    (["bench", "--op", "tree_forward", "--repeats", "0"], "argument --repeats", None),
    (["bench", "--op", "tree_forward", "--tree-hidden", "-8"], "argument --tree-hidden", None),
    (["bench", "--op", "tree_forward", "--tree-hidden", "1000000"], "--op tree_forward needs about", None),
    (["bench", "--op", "tree_forward", "--fractions", "0,2"], "argument --fractions", None),
    (["bench", "--scale", "--backend", "nope"], "argument --backend: invalid choice: 'nope'", None),
    (["bench", "--scale", "--backend", "triton", "--prompts", "1", "--length", "8"], "--backend triton", "no-triton"),
    (["bench", "--scale", "--prompts", HUGE], "--scale needs about", None),
    (["bench", "--scale", "--length", "-1"], "argument --length", None),
    # check, the command itself
    (["check", "tempo_rl:tempo_advantages", "--max-examples", "0"], "--max-examples must be >= 1", None),
    (["check", "no_such_module_here:f"], "cannot load no_such_module_here:f", None),
    (["inspect", EXAMPLE, "--top", "-1"], "argument --top: must be at least 0, got -1", None),
    (["inspect", EXAMPLE, "--eps", "-1"], "eps must be >= 0", None),
    (["nope"], "argument COMMAND: invalid choice: 'nope'", None),
]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, needle, needs", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_argument_is_one_line_and_exit_2(files, capsys, monkeypatch, request, argv, needle, needs):
    if needs == "no-cuda" and not NO_CUDA:
        pytest.skip("this machine has CUDA")
    if needs == "no-vllm" and not NO_VLLM:
        pytest.skip("vLLM is installed here (tests/integrations/test_vllm.py covers it)")
    if needs == "no-triton":
        _hide_triton(monkeypatch, request)
    before = sorted(p.name for p in files.iterdir())
    rc, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"tempo-rl {argv[0]}: error: " if argv[0] != "nope" else "tempo-rl: error: "), err
    assert needle in lines[0], err
    assert "usage:" not in out + err
    assert sorted(p.name for p in files.iterdir()) == before  # refused before anything was written


def test_the_installed_command_prints_no_traceback(files):
    """The same through a new process, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "tempo_rl", "inspect", "a_dir"], capture_output=True, text=True, timeout=120
    )
    assert (
        done.returncode == 2
        and done.stderr.strip() == "tempo-rl inspect: error: a_dir: a directory; give a JSONL file of rollouts"
    )
