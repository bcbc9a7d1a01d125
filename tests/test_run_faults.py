"""Faults a run directory meets, injected one at a time: --overwrite aimed at the model, a resume of
an older checkpoint, a second writer, damaged checkpoints, a full disk or a directory made
read-only mid-save, and resumes that must continue exactly. Each is refused or reported in one line
naming the path, and nothing the user did not ask to lose is lost. (A kill mid-save is
test_trainer.py::test_failed_save_leaves_previous_checkpoint.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from tempo_rl import cli
from tempo_rl.trainer import checkpoint, run_dir

CONSTANT = "def constant(completion, answer):\n    return 1.0\n"


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _args(model, out="out", *extra):
    return [
        "train",
        *("--model", str(model), "--output-dir", str(out), "--steps", "2"),
        *("--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "4", "--mini-batches", "2"),
        *("--eval-every", "0", "--no-progress", "--threads", "1"),
        *extra,
    ]


def _train(args, capsys):
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tempo-rl train:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _copy_model(tiny_path, where: Path) -> Path:
    shutil.copytree(tiny_path, where)
    return where


# ----------------------------------------------------------------------------- --overwrite and the model
def test_output_dir_equal_to_the_model_is_refused_and_the_model_kept(tiny_path, here, capsys):
    model = _copy_model(tiny_path, here / "mymodel")
    before = sorted(p.name for p in model.iterdir())
    rc, _, err = _train(_args(model, model, "--overwrite"), capsys)
    assert rc == 2 and "is the model directory" in _one_line(err)
    assert sorted(p.name for p in model.iterdir()) == before


def test_output_dir_inside_the_model_is_refused(tiny_path, here, capsys):
    model = _copy_model(tiny_path, here / "mymodel")
    rc, _, err = _train(_args(model, model / "run"), capsys)
    assert rc == 2 and "inside the model directory" in _one_line(err)
    assert not (model / "run").exists()


def test_overwrite_never_deletes_a_model_inside_the_run(tiny_path, here, capsys):
    """--model out/checkpoints/step_000002 --overwrite would delete the model it loads."""
    assert _train(_args(tiny_path, "out"), capsys)[0] == 0
    ckpt = here / "out" / "checkpoints" / "step_000002"
    rc, _, err = _train(_args(ckpt, "out", "--overwrite"), capsys)
    assert rc == 2 and "--overwrite would delete" in _one_line(err)
    assert (ckpt / "config.json").is_file()


def test_overwrite_deletes_only_what_the_manifest_lists(tiny_path, here, capsys):
    assert _train(_args(tiny_path, "out", "--steps", "1"), capsys)[0] == 0
    assert set(run_dir.manifest_names(here / "out")) >= {"metrics.jsonl", "config.json", "checkpoints"}
    (here / "out" / "notes.txt").write_text("mine")
    assert _train(_args(tiny_path, "out", "--steps", "1", "--overwrite"), capsys)[0] == 0
    assert (here / "out" / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_run_files_no_manifest_lists(tiny_path, here, capsys):
    (here / "out").mkdir()
    (here / "out" / "config.json").write_text("{}")  # someone else's config.json
    rc, _, err = _train(_args(tiny_path, "out", "--overwrite"), capsys)
    assert rc == 2 and "config.json" in _one_line(err) and run_dir.MANIFEST in err
    assert (here / "out" / "config.json").read_text() == "{}"


# ----------------------------------------------------------------------------- resume from an older checkpoint
def test_resume_of_an_older_checkpoint_is_refused_unless_discard_later(tiny_path, here, capsys):
    assert (
        _train(_args(tiny_path, "out", "--steps", "4", "--save-every", "1", "--keep-checkpoints", "0"), capsys)[0] == 0
    )
    ckpts = here / "out" / "checkpoints"
    metrics = (here / "out" / "metrics.jsonl").read_text()
    older = _args(tiny_path, "out", "--steps", "4", "--resume", str(ckpts / "step_000002"), "--keep-checkpoints", "0")
    rc, _, err = _train(older, capsys)
    line = _one_line(err)
    assert rc == 2 and "step_000003 ... step_000004 (2 in all)" in line and "--discard-later" in line
    assert [p.name for p in checkpoint.list_checkpoints(ckpts)][-1] == "step_000004"
    assert (here / "out" / "metrics.jsonl").read_text() == metrics  # nothing lost
    rc, _, err = _train([*older, "--discard-later"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in checkpoint.list_checkpoints(ckpts)) == [f"step_00000{i}" for i in (1, 2, 4)]


def test_resume_past_the_end_says_so(tiny_path, here, capsys):
    assert _train(_args(tiny_path, "out"), capsys)[0] == 0
    rc, _, err = _train(_args(tiny_path, "out", "--resume", "latest"), capsys)
    assert rc == 2 and "at step 2 and --steps is 2" in _one_line(err)
    rc, _, err = _train(_args(tiny_path, "out", "--resume", "latest", "--steps", "3"), capsys)
    assert rc == 0, err
    assert [json.loads(r)["step"] for r in (here / "out" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ----------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_naming_the_first(tiny_path, here, capsys):
    lock = run_dir.lock_run(here / "out")  # a run in progress (its lock is per open file, so this counts)
    try:
        rc, _, err = _train(_args(tiny_path, "out"), capsys)
        line = _one_line(err)
        assert rc == 2 and f"pid {os.getpid()}" in line and "another tempo-rl train" in line
        assert not (here / "out" / "metrics.jsonl").exists()
    finally:
        run_dir.unlock_run(lock, here / "out")
    assert _train(_args(tiny_path, "out"), capsys)[0] == 0


def test_a_stale_lock_is_taken_over_with_a_warning(tiny_path, here, capsys, caplog):
    (here / "out").mkdir()
    (here / "out" / run_dir.LOCK_INFO).write_text(json.dumps({"pid": 999999, "host": "gone", "started": 0}))
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    assert rc == 0, err
    assert "pid 999999 on host gone" in caplog.text and "without releasing" in caplog.text
    assert not (here / "out" / run_dir.LOCK_INFO).exists()


def test_a_refused_run_leaves_no_directory_behind(here, capsys):
    rc, _, err = _train(_args("no-such-model", "fresh"), capsys)
    assert rc == 2 and not (here / "fresh").exists()
    rc, _, err = _train(_args("no-such-model", "runs/fresh"), capsys)  # nor the parent it made
    assert rc == 2 and not (here / "runs").exists()


# ----------------------------------------------------------------------------- exact resume of the loop's counters
def test_zero_variance_stop_comes_at_the_same_step_after_a_resume(tiny_path, here, capsys):
    (here / "flat.py").write_text(CONSTANT)
    flat = ("--reward", "flat.py:constant", "--max-zero-variance-steps", "3")
    rc, _, err = _train(_args(tiny_path, "whole", "--steps", "6", *flat), capsys)
    assert rc == 1 and "to step 3" in err
    assert _train(_args(tiny_path, "split", "--steps", "2", *flat), capsys)[0] == 0
    rc, _, err = _train(_args(tiny_path, "split", "--steps", "6", "--resume", "latest", *flat), capsys)
    assert rc == 1 and "to step 3" in err
    state = checkpoint.load_state(checkpoint.resolve("latest", here / "split" / "checkpoints"))
    assert state["run"] == {"flat_steps": 2, "trust_checked": 1}


# ----------------------------------------------------------------------------- damaged checkpoints
def _two_checkpoints(tiny_path, here, capsys) -> Path:
    assert _train(_args(tiny_path, "out", "--save-every", "1"), capsys)[0] == 0
    return here / "out" / "checkpoints"


@pytest.mark.parametrize(
    "damage, file, why",
    [
        (lambda p: p.write_bytes(b""), "model.safetensors", "is 0 bytes"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "model.safetensors", "is"),
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "trainer_state.safetensors", "truncated ("),
        (lambda p: p.write_text(p.read_text()[:50]), "trainer_state.json", "is not valid JSON"),
        (lambda p: p.unlink(), "tokenizer.json", "is missing"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_the_intact_one_offered(tiny_path, here, capsys, damage, file, why):
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    damage(ckpts / "step_000002" / file)
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    line = _one_line(err)
    assert rc == 2 and f"step_000002 is damaged: {file} {why}" in line
    assert f"the newest intact one is {Path('out', 'checkpoints', 'step_000001')}" in line
    rc, _, err = _train(
        _args(tiny_path, "out", "--steps", "3", "--resume", str(ckpts / "step_000001"), "--discard-later"), capsys
    )
    assert rc == 0, err


# ----------------------------------------------------------------------------- failed writes
@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")])
@pytest.mark.parametrize("at", ["model", "state"])
def test_a_failed_save_is_one_line_and_leaves_no_partial_checkpoint(
    tiny_path, here, capsys, monkeypatch, code, fix, at
):
    ckpts = here / "out" / "checkpoints"

    def fail(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    if at == "state":
        monkeypatch.setattr(checkpoint, "write_state", fail)
    else:
        from transformers import PreTrainedModel

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", lambda self, path, **kw: fail(path))
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    line = _one_line(err)
    assert rc == 1 and fix in line and ".tmp-step_000002" in line and "--resume latest" in line
    assert not list(ckpts.glob(".tmp-*")) and checkpoint.list_checkpoints(ckpts) == []


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")])
def test_a_failed_metrics_write_is_one_line_naming_the_file(tiny_path, here, capsys, monkeypatch, code, fix):
    real_open = open

    def open_(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(code, os.strerror(code))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_)
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    line = _one_line(err)
    assert rc == 1 and fix in line and str(Path("out") / "metrics.jsonl") in line
