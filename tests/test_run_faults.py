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
import subprocess
from contextlib import contextmanager
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
    assert rc == 1 and fix in line and ".tmp-step_000002" in line
    assert "--overwrite (no checkpoint was written yet)" in line  # --resume latest would find none
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


# ----------------------------------------------------------------------------- another run's directory
def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_resume_into_another_runs_directory_is_refused_naming_both(tiny_path, here, capsys):
    """--resume A/checkpoints/step_000001 --output-dir B, B holding another run: refused before
    anything is written, so B's checkpoints, config.json and metrics stay B's."""
    assert _train(_args(tiny_path, "A", "--save-every", "1"), capsys)[0] == 0
    assert _train(_args(tiny_path, "B", "--seed", "1"), capsys)[0] == 0
    before = _files(here / "B")
    ckpt = here / "A" / "checkpoints" / "step_000001"
    rc, _, err = _train(_args(tiny_path, "B", "--steps", "4", "--resume", str(ckpt), "--discard-later"), capsys)
    line = _one_line(err)
    assert rc == 2 and str(here / "A") in line and "--output-dir 'B'" in line and "belongs to the run in" in line
    assert _files(here / "B") == before
    rc, _, err = _train(_args(tiny_path, "fresh", "--steps", "4", "--resume", str(ckpt)), capsys)  # an empty one too
    assert rc == 2 and "belongs to the run in" in _one_line(err) and not (here / "fresh").exists()


def test_a_checkpoint_copied_into_another_run_is_refused_by_run_id(tiny_path, here, capsys):
    """Each run directory records the run it holds (run_manifest.json's run_id), and so does every
    checkpoint: a checkpoint of A copied under B/checkpoints is still A's."""
    assert _train(_args(tiny_path, "A", "--save-every", "1"), capsys)[0] == 0
    assert _train(_args(tiny_path, "B"), capsys)[0] == 0
    run_a, run_b = (run_dir.manifest_run_id(here / name) for name in ("A", "B"))
    assert run_a and run_b and run_a != run_b
    assert checkpoint.load_state(here / "A" / "checkpoints" / "step_000002")["run_id"] == run_a
    shutil.copytree(here / "A" / "checkpoints" / "step_000001", here / "B" / "checkpoints" / "step_000001")
    before = _files(here / "B")
    copied = here / "B" / "checkpoints" / "step_000001"
    rc, _, err = _train(_args(tiny_path, "B", "--steps", "4", "--resume", str(copied), "--discard-later"), capsys)
    line = _one_line(err)
    assert rc == 2 and f"run {run_a}" in line and f"holds run {run_b}" in line
    assert _files(here / "B") == before
    # its own checkpoint resumes, and the run keeps its id
    rc, _, err = _train(_args(tiny_path, "A", "--steps", "3", "--resume", "latest"), capsys)
    assert rc == 0, err
    assert run_dir.manifest_run_id(here / "A") == run_a
    assert checkpoint.load_state(checkpoint.resolve("latest", here / "A" / "checkpoints"))["run_id"] == run_a


# ----------------------------------------------------------------------------- recovery advice that works
def test_the_offered_intact_checkpoint_resumes_as_advised(tiny_path, here, capsys):
    """The advice after a damaged latest checkpoint, followed word for word, is not refused."""
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    (ckpts / "step_000002" / "tokenizer.json").unlink()
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    line = _one_line(err)
    advice = line.rsplit(": --resume ", 1)[1].split()
    assert rc == 2 and advice == [str(ckpts.relative_to(here) / "step_000001"), "--discard-later"]
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", *advice), capsys)
    assert rc == 0, err


def test_a_checkpoint_renamed_into_place_but_not_recorded_is_latest(tiny_path, here, capsys):
    """A run killed between the rename of step 2 and the update of written.json (the order file then
    lists step 1 only): --resume latest takes step 2, not step 1 followed by advice to use latest."""
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    (ckpts / checkpoint.ORDER_FILE).write_text(json.dumps(["step_000001"]))
    assert checkpoint.resolve("latest", ckpts).name == "step_000002"
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    assert rc == 0, err


def test_latest_never_advises_itself(tiny_path, here, capsys):
    """Were `latest` an older checkpoint than one on disk, the refusal names the newer one, not
    --resume latest again."""
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    (ckpts / checkpoint.ORDER_FILE).write_text(json.dumps(["step_000002", "step_000001"]))
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    line = _one_line(err)
    assert rc == 2 and f"--resume {ckpts.relative_to(here) / 'step_000002'}" in line and "--resume latest" not in line


def test_the_write_order_is_recorded_before_the_rename(tiny_path, here, capsys, monkeypatch):
    """A kill at the rename (here: the rename raises) leaves the order naming a checkpoint that is
    not there, which `latest` ignores, and never an unrecorded complete checkpoint."""
    assert _train(_args(tiny_path, "out", "--steps", "1"), capsys)[0] == 0
    real = Path.rename

    def killed(self, target):
        if Path(target).name == "step_000002":
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(tiny_path, "out", "--resume", "latest"))
    monkeypatch.undo()
    ckpts = here / "out" / "checkpoints"
    assert json.loads((ckpts / checkpoint.ORDER_FILE).read_text())[-1] == "step_000002"
    assert checkpoint.resolve("latest", ckpts).name == "step_000001"
    assert not list(ckpts.glob(".tmp-*"))


# ----------------------------------------------------------------------------- damaged weights that load
def _flip_to_nan(path: Path, tensor: str) -> None:
    """Overwrite one float32 word of `tensor`'s payload with a NaN, keeping the size and header."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0]
    raw[start : start + 4] = bytes.fromhex("0000c07f")  # float32 NaN, little endian
    path.write_bytes(bytes(raw))


def test_nan_weights_in_a_checkpoint_are_refused_before_training(tiny_path, here, capsys):
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    model_file = ckpts / "step_000002" / "model.safetensors"
    header = json.loads(model_file.read_bytes()[8 : 8 + int.from_bytes(model_file.read_bytes()[:8], "little")])
    name = sorted(k for k in header if k != "__metadata__")[0]
    _flip_to_nan(model_file, name)
    checkpoint.check_complete(ckpts / "step_000002")  # sizes and headers still agree
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    line = _one_line(err)
    assert rc == 2 and "NaN or inf" in line and "step_000002 is damaged" in line
    assert f"--resume {Path('out', 'checkpoints', 'step_000001')} --discard-later" in line
    assert "probability tensor" not in err


def test_nan_weights_refused_before_discard_later_deletes_anything(tiny_path, here, capsys):
    """--resume <older, damaged> --discard-later: refused, and the later checkpoints are all kept."""
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    model_file = ckpts / "step_000001" / "model.safetensors"
    raw = model_file.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    _flip_to_nan(model_file, sorted(k for k in header if k != "__metadata__")[0])
    args = _args(tiny_path, "out", "--steps", "3", "--resume", str(ckpts / "step_000001"), "--discard-later")
    rc, _, err = _train(args, capsys)
    assert rc == 2 and "NaN or inf" in _one_line(err)
    assert [p.name for p in checkpoint.list_checkpoints(ckpts)] == ["step_000001", "step_000002"]


def test_nan_in_the_optimizer_state_is_refused(tiny_path, here, capsys):
    ckpts = _two_checkpoints(tiny_path, here, capsys)
    state_file = ckpts / "step_000002" / checkpoint.TENSOR_FILE
    raw = state_file.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32" and v["shape"])
    _flip_to_nan(state_file, name)
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)
    assert rc == 2 and "NaN or inf" in _one_line(err)


# ----------------------------------------------------------------------------- a real full disk, a real read-only directory
SAVE_COVERED = (
    "test_a_safetensors_error_is_one_line, test_a_failed_save_is_one_line_and_leaves_no_partial_checkpoint "
    "and test_a_lock_that_cannot_be_cleaned_up_masks_nothing"
)


def _need_mount(covered_by: str = SAVE_COVERED) -> None:
    """Mounting needs root. Elsewhere the test is skipped, naming the tests that cover the same fix
    without a mount; as root a failing mount fails the test."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a filesystem needs root; the same fix is covered without it by {covered_by}")


@contextmanager
def _tmpfs(where: Path, size: str):
    """A real tmpfs of `size` mounted at `where` (root and a working `mount` needed)."""
    where.mkdir(parents=True, exist_ok=True)
    _need_mount()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    assert done.returncode == 0, f"mount failed as root: {done.stderr.decode()}"  # loud, never a silent skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.parametrize("size, at", [("96k", "model.safetensors"), ("320k", "trainer_state.safetensors")])
def test_a_real_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tiny_path, here, capsys, size, at):
    """--output-dir on a small tmpfs: the checkpoint does not fit (the model's weights at 96k, the
    optimizer state at 320k), safetensors fails with its own error type, and the user sees one line."""
    with _tmpfs(here / "out", size):
        rc, _, err = _train(_args(tiny_path, "out"), capsys)
        line = _one_line(err)
        ckpts = here / "out" / "checkpoints"
        assert rc == 1 and "no space left on the device" in line and ".tmp-step_000002" in line, line
        assert not list(ckpts.glob(".tmp-*")) and checkpoint.list_checkpoints(ckpts) == []
        assert (here / "out" / "metrics.jsonl").is_file() and not (here / "out" / run_dir.LOCK_INFO).exists()


def test_a_safetensors_error_is_one_line(tiny_path, here, capsys, monkeypatch):
    """The error type safetensors raises on a full disk, from safetensors itself (not an OSError)."""
    from safetensors import SafetensorError

    def fail(tensors, filename, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    line = _one_line(err)
    assert rc == 1 and "no space left on the device" in line and ".tmp-step_000002" in line
    assert not list((here / "out" / "checkpoints").glob(".tmp-*"))


def test_any_other_save_error_is_one_line_naming_the_path(tiny_path, here, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "encode", lambda obj, tensors: (_ for _ in ()).throw(TypeError("no JSON")))
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    line = _one_line(err)
    assert rc == 1 and "TypeError: no JSON" in line and ".tmp-step_000002" in line
    assert not list((here / "out" / "checkpoints").glob(".tmp-*"))


def test_a_directory_made_read_only_mid_run_is_one_line_and_the_lock_masks_nothing(
    tiny_path, here, capsys, monkeypatch
):
    """The run directory is remounted read-only just before the second checkpoint: the save fails
    with the file system's own EROFS, the lock's clean-up (which cannot delete its info file now)
    adds no traceback, and the first checkpoint is intact."""
    out = here / "out"
    real_write = checkpoint._write
    mounted = []

    def read_only_then_write(tmp, step, *args):
        if step == 2:  # a read-only bind mount of the directory over itself (the lock's open file is below it)
            subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
            mounted.append(out)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        return real_write(tmp, step, *args)

    _need_mount()
    monkeypatch.setattr(checkpoint, "_write", read_only_then_write)
    try:
        rc, _, err = _train(_args(tiny_path, "out", "--save-every", "1"), capsys)
        assert mounted, err
        line = _one_line(err)
        assert rc == 1 and "the file system is read-only" in line and "--resume latest" in line, err
        assert [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")] == ["step_000001"]
        checkpoint.check_complete(out / "checkpoints" / "step_000001")
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=True)
    assert _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest"), capsys)[0] == 0


def test_a_lock_that_cannot_be_cleaned_up_masks_nothing(tmp_path, monkeypatch):
    """unlock_run never raises: the error that ended the run is the one reported."""
    lock = run_dir.lock_run(tmp_path)

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", denied)
    run_dir.unlock_run(lock, tmp_path)
    assert not lock.is_locked


# ----------------------------------------------------------------------------- limits before the first step
def test_a_prompt_longer_than_the_context_is_refused_before_sampling(tiny_path, here, capsys, monkeypatch):
    """100k characters against the tiny model's 64 positions: one line naming the row, no sampling."""
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(10, 40)]
    rows[7]["prompt"] = "1+" * 50_000 + "1="
    (here / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def never(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr("tempo_rl.trainer.train.sample_groups", never)
    rc, _, err = _train(_args(tiny_path, "out", "--dataset", "long.jsonl"), capsys)
    line = _one_line(err)
    assert rc == 2 and "long.jsonl:8: the prompt is" in line and "context of 64 positions" in line


def test_the_smallest_temperature_accepted_trains_finitely(tiny_path, here, capsys):
    """1e-45 is refused (test_cli_errors); at the bound, log-probs and gradients stay finite."""
    from tempo_rl.trainer.config import MIN_TEMPERATURE

    rc, _, err = _train(_args(tiny_path, "out", "--temperature", str(MIN_TEMPERATURE)), capsys)
    assert rc == 0, err
    rows = [json.loads(r) for r in (here / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(
        all(v == v and abs(v) != float("inf") for v in r.values() if isinstance(v, float)) for r in rows
    )


def test_bench_out_on_a_read_only_filesystem_is_refused_before_the_benchmark(here, capsys):
    """A real read-only directory (a read-only bind mount; as root, chmod does not stop writes)."""
    _need_mount("test_cli_errors.py's bench --out a_file/results and /proc/results rows")
    ro = here / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        rc = cli.main(["bench", "--quick", "--out", str(ro / "results")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "results cannot be written there (Read-only file system)" in err
    finally:
        subprocess.run(["umount", str(ro)], check=True)
