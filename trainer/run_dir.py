"""The run directory: what a run writes into `output_dir`, when, and what may ever delete it.

What a run writes, and when:
- `run_manifest.json`, first, before anything else: the run's id and the names (below) it writes.
  It is the only list `--overwrite` deletes from. Every checkpoint records the same run id.
- `.tempo-rl.lock` and `.tempo-rl.lock.json` while it runs: a lock (filelock) that a second
  `tempo-rl train` on the same directory meets and refuses on, and the pid, host and start time
  of the holder, which the refusal names. A lock whose holder died is released by the operating
  system; the next run takes it and says that the previous run did not end cleanly.
- `config.json` (the run's options) and `metrics.jsonl` (one row per step) as training starts;
  `rollouts.jsonl` with --dump-rollouts-every, `tb/` and `wandb/` with --report-to.
- `checkpoints/step_NNNNNN/` at --save-every and after the last step, each written into a hidden
  temporary directory and renamed into place (trainer/checkpoint.py); a failed save (disk full,
  permission lost, a read-only file system, whatever library raised it: safetensors, json, the OS)
  removes its temporary directory at once and stops the run with one line naming the path and the
  fix. The lock's clean-up never replaces that line with an error of its own. The write order
  (`checkpoints/written.json`) is updated before the rename, so a kill between the two never hides
  the newest checkpoint from `--resume latest`.

What may delete something:
- `--overwrite` (a new run in a directory that holds one) deletes the names listed in the
  directory's run_manifest.json, and nothing else. A directory holding run files that no manifest
  lists is refused: delete them yourself. The output directory is never the model's directory or
  inside it, and a model inside the output directory is refused when --overwrite would delete it.
- `--resume CKPT` writes only into the run directory CKPT belongs to (the one above its
  `checkpoints/`, holding the run id CKPT records); another `--output-dir` is refused, naming both
  directories, before anything is written. It continues CKPT under the options it was saved with
  (MAY_CHANGE_ON_RESUME lists the ones that may differ), drops the metrics and rollouts rows
  written after its step (they are written again, identically), and refuses when checkpoints of
  later steps exist, since rotation would delete them: `--discard-later` deletes those up front and
  continues. A damaged checkpoint (a file missing or truncated, or weights or optimizer state
  holding NaN or inf) is refused, offering the newest intact one with the flags that resuming it
  takes.
- Checkpoint rotation (--keep-checkpoints) deletes the oldest checkpoints by write order.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tempo_rl.extras import install_command

from .config import TrainConfig, UsageError
from .rewards import TrainingStopped

log = logging.getLogger("tempo_rl.trainer")

MANIFEST = "run_manifest.json"
LOCK_FILE = ".tempo-rl.lock"
LOCK_INFO = ".tempo-rl.lock.json"
# What the run itself keeps in the directory besides its outputs (never counted as "a run is here").
BOOKKEEPING = (LOCK_FILE, LOCK_INFO)


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows of a JSONL log written after `step` (all of them for step 0), so a resumed run
    never mixes in rows of a later, abandoned stretch. A torn last line (a kill mid-write) is dropped;
    a torn line elsewhere is an error."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: dropping its torn last line", path)
                continue
            raise UsageError(f"{path}:{i + 1}: not JSON; the log is damaged") from None
        if row.get("step", 0) <= step:
            rows.append(line)
    with writing(path):
        path.write_text("".join(line + "\n" for line in rows) if step > 0 else "")


# Options that may differ when a run resumes; a difference in any other option is refused unless
# --force-resume, since the continued run would no longer be the run the checkpoint belongs to.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "steps",
        "output_dir",
        "overwrite",
        "resume",
        "force_resume",
        "discard_later",
        "save_every",
        "keep_checkpoints",
        "save_final",
        "eval_every",
        "eval_greedy",
        "dump_rollouts_every",
        "device",
        "threads",
        "progress",
        "report_to",
        "tensorboard",
        "reward_time_limit",
        "trust_batches",
        "trust_atol",
        "backend",
        "accuracy_threshold",
        "max_zero_variance_steps",
        "tiny_dir",
    }
)
# Every name a run may write (the manifest lists the ones a given run does write).
RUN_FILES = ("metrics.jsonl", "rollouts.jsonl", "config.json", "checkpoints", "tb", "wandb", MANIFEST)


def check_resume(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to continue a checkpoint under options that change what the run is."""
    now = cfg.to_dict()
    diffs = [
        k
        for k, v in state.get("config", {}).items()
        if k not in MAY_CHANGE_ON_RESUME and k in now and json.loads(json.dumps(now[k])) != v
    ]
    if diffs and not cfg.force_resume:
        was = ", ".join(f"{k}={state['config'][k]!r}" for k in diffs)
        now_ = ", ".join(f"{k}={now[k]!r}" for k in diffs)
        raise UsageError(
            f"--resume {path}: the checkpoint's run has {was}, this command {now_}; resume with the "
            "same options, or pass --force-resume to continue under the new ones"
        )
    if diffs:
        log.warning("resuming %s with changed options: %s", path, ", ".join(diffs))


def check_checkpoint(cfg: TrainConfig, path: Path) -> None:
    """A checkpoint is used only when complete; a damaged one is named with the file, and the
    newest intact checkpoint of the run is offered instead."""
    from .checkpoint import DamagedCheckpoint, check_complete

    try:
        check_complete(path)
    except DamagedCheckpoint as e:
        raise damaged(cfg, path, str(e)) from None


def damaged(cfg: TrainConfig, path: Path, why: str) -> UsageError:
    """The refusal of a damaged checkpoint, offering the newest intact one with the flags that
    resuming it needs (so following the advice is never refused in turn)."""
    from .checkpoint import newest_intact

    intact = newest_intact(path.parent, but=path)
    offer = "no intact checkpoint is left"
    if intact:
        # Resuming it abandons the damaged one (a later step): say up front what that takes.
        later = later_checkpoints(path.parent.parent, step_of(intact))
        offer = f"the newest intact one is {intact}: --resume {intact}" + (" --discard-later" if later else "")
    return UsageError(f"--resume {cfg.resume}: {why}; {offer}")


def check_steps_left(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A resumed run that has nothing left to train says so instead of exiting quietly."""
    if state["step"] >= cfg.steps:
        raise UsageError(
            f"--resume {path}: the checkpoint is at step {state['step']} and --steps is {cfg.steps}, so "
            f"there is nothing to train; raise --steps above {state['step']} to continue the run"
        )


def later_checkpoints(out_dir: Path, step: int) -> list[Path]:
    """The checkpoints under out_dir/checkpoints of steps after `step`, by step."""
    from .checkpoint import list_checkpoints

    found = [p for p in list_checkpoints(out_dir / "checkpoints") if step_of(p) > step]
    return sorted(found, key=step_of)


def step_of(path: Path | str) -> int:
    """The step number of a checkpoint `step_NNNNNN` (-1 for another name)."""
    try:
        return int(Path(path).name.split("_")[1])
    except (IndexError, ValueError):
        return -1


def check_later_checkpoints(cfg: TrainConfig, path: Path, step: int) -> list[Path]:
    """Resuming an older checkpoint abandons the steps after it: their checkpoints would fall to
    rotation and their metrics rows be dropped. Refused unless --discard-later; returns what
    `discard_later` then deletes."""
    later = later_checkpoints(Path(cfg.output_dir), step)
    if later and not cfg.discard_later:
        names = later[0].name if len(later) == 1 else f"{later[0].name} ... {later[-1].name} ({len(later)} in all)"
        newest = "resume the checkpoint written last with --resume latest"
        if cfg.resume == "latest":  # `latest` is this one: the later ones are not in the write order
            newest = f"resume the newest of them with --resume {later[-1]}"
        raise UsageError(
            f"--resume {path} (step {step}): continuing from it would delete the later checkpoints "
            f"{names} and the metrics rows after step {step}; pass --discard-later to do so, or {newest}"
        )
    return later


def discard_later(later: list[Path]) -> None:
    """--discard-later: delete the checkpoints of the abandoned steps now, saying which."""
    if later:
        log.warning("--discard-later: deleting %s", ", ".join(str(p) for p in later))
    for path in later:
        shutil.rmtree(path)


# ----------------------------------------------------------------------------- what a run owns
def run_names(cfg: TrainConfig) -> list[str]:
    """The names this run writes into its output directory."""
    names = [MANIFEST, "config.json", "metrics.jsonl", "checkpoints"]
    if cfg.dump_rollouts_every:
        names.append("rollouts.jsonl")
    names += [{"tensorboard": "tb", "wandb": "wandb"}[name] for name in cfg.loggers]
    return names


def _manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of out_dir ({} without one); UsageError when it is damaged."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest["files"], list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path}: not a run manifest (damaged); delete the run's files yourself") from None
    return manifest


def manifest_names(out_dir: Path) -> list[str]:
    """The names the manifest of out_dir lists ([] without a manifest); only names a run writes
    count, so an edited manifest cannot make --overwrite delete anything else."""
    return [n for n in _manifest(out_dir).get("files", []) if n in RUN_FILES]


def manifest_run_id(out_dir: Path) -> str | None:
    """The id of the run out_dir holds (None: no manifest, or one written before run ids)."""
    run_id = _manifest(out_dir).get("run_id")
    return run_id if isinstance(run_id, str) else None


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def write_manifest(out_dir: Path, names: list[str], run_id: str) -> None:
    """Record (atomically) which run the directory holds and the names it writes, added to those a
    resumed run wrote before."""
    listed = list(dict.fromkeys(manifest_names(out_dir) + names))
    tmp = out_dir / f".{MANIFEST}.{os.getpid()}"
    with writing(tmp):
        tmp.write_text(json.dumps({"run_id": run_id, "files": listed}, indent=1))
        tmp.replace(out_dir / MANIFEST)


def check_resume_target(cfg: TrainConfig, path: Path, state: dict[str, Any]) -> None:
    """A resume writes only into the run directory its checkpoint belongs to: the directory above its
    `checkpoints/` folder, and the run whose id the checkpoint carries. Anything else would rotate
    away another run's checkpoints, replace its config.json and splice two runs' metrics."""
    out = Path(cfg.output_dir)
    here = path.resolve().parent
    owner = here.parent if here.name == "checkpoints" else None
    fix = f"continue it with --output-dir {str(owner)!r}, or " if owner else ""
    fix += f"start a new run from its weights with --model {str(path)!r} (and another --output-dir)"
    if owner is not None and owner != out.resolve():
        raise UsageError(
            f"--resume {path}: the checkpoint belongs to the run in {str(owner)!r}, not to --output-dir "
            f"{str(out)!r}; {fix}"
        )
    held, ours = manifest_run_id(out), state.get("run_id")
    if held and ours and held != ours:
        raise UsageError(
            f"--resume {path}: the checkpoint is of run {ours}, but --output-dir {str(out)!r} holds run {held}; {fix}"
        )


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_model_location(cfg: TrainConfig) -> None:
    """The run never writes into its model's directory, and --overwrite never deletes the model."""
    model = Path(cfg.tiny_dir if cfg.model == "tiny" else cfg.model).resolve()
    out = Path(cfg.output_dir).resolve()
    flag = "--tiny-dir" if cfg.model == "tiny" else "--model"
    if _inside(out, model):
        where = "is the model directory" if out == model else "is inside the model directory"
        raise UsageError(
            f"--output-dir {cfg.output_dir!r} {where} ({flag} {str(model)!r}); the run would write its "
            "files among the model's; choose another --output-dir"
        )
    if cfg.overwrite and not cfg.resume and _inside(model, out):
        doomed = [n for n in manifest_names(out) if _inside(model, out / n)]
        if doomed:
            raise UsageError(
                f"{flag} {str(model)!r} is inside {str(out / doomed[0])!r}, which --overwrite would delete; "
                "copy the model out of the run directory first"
            )


def check_output_dir(cfg: TrainConfig) -> None:
    """A new run never writes into a directory that holds another run unless told to replace it,
    and --overwrite replaces only what a run's manifest lists."""
    out = Path(cfg.output_dir)
    if cfg.resume or not out.is_dir():
        return
    if cfg.overwrite:
        listed = set(manifest_names(out))
        unlisted = [n for n in RUN_FILES if (out / n).exists() and n not in listed]
        if unlisted:
            raise UsageError(
                f"--overwrite: {str(out)!r} holds {', '.join(unlisted)}, which no run manifest "
                f"({MANIFEST}) lists as written by a run, so they are not deleted; delete them "
                "yourself or choose another --output-dir"
            )
        return
    held = sorted(p.name for p in out.iterdir() if p.name not in BOOKKEEPING)
    if held:
        listed = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise UsageError(
            f"output_dir {str(out)!r} is not empty ({listed}); "
            "continue that run with --resume latest, replace it with --overwrite, or choose "
            "another --output-dir"
        )


def clear_run(out_dir: Path) -> None:
    """--overwrite: delete what the directory's manifest lists (and only that)."""
    names = manifest_names(out_dir)
    for name in sorted(names, key=lambda n: n == MANIFEST):  # the manifest last, so a kill can resume it
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ----------------------------------------------------------------------------- one writer at a time
def _lock_info(out_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((out_dir / LOCK_INFO).read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder(info: dict[str, Any]) -> str:
    if not info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, since {since}"


def lock_run(out_dir: Path):
    """Take the run directory's lock (a FileLock); UsageError naming the holder when another run
    has it. A lock-info file left by a run that died (the OS released its lock) is reported."""
    try:
        from filelock import FileLock, Timeout
    except ImportError:
        raise UsageError(
            f"tempo-rl train needs the Python package 'filelock', which is not installed: {install_command('train')}"
        ) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out_dir / LOCK_FILE), timeout=0)
        lock.acquire()
    except Timeout:
        raise UsageError(
            f"output_dir {str(out_dir)!r}: another tempo-rl train is writing to it ({_holder(_lock_info(out_dir))}); "
            "wait for it to finish, stop it, or choose another --output-dir"
        ) from None
    except OSError as e:
        raise UsageError(f"output_dir {str(out_dir)!r}: cannot take its lock ({e.strerror or e})") from None
    stale = _lock_info(out_dir)
    if stale:
        log.warning(
            "%s: the previous run (%s) ended without releasing its lock; taking it over", out_dir, _holder(stale)
        )
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    try:
        (out_dir / LOCK_INFO).write_text(json.dumps(info))
    except OSError as e:
        lock.release()
        raise UsageError(f"output_dir {str(out_dir)!r}: not writable ({e.strerror or e})") from None
    return lock


def unlock_run(lock, out_dir: Path) -> None:
    """Release the lock; the info file goes first, so no one reads a released lock as held. Neither
    raises: the run may be ending on an error of its own (a directory made read-only, a full disk),
    which is the one to report; an info file left behind is reported by the next run as stale."""
    try:
        (out_dir / LOCK_INFO).unlink(missing_ok=True)
    except OSError as e:
        log.debug("%s: lock info not removed (%s)", out_dir, e)
    try:
        lock.release()
    except OSError as e:
        log.debug("%s: lock not released cleanly (%s)", out_dir, e)


F = TypeVar("F", bound=Callable[..., Any])


def guarded(train: F) -> F:
    """Wrap train(cfg): check where the model is, hold the run directory's lock for the whole run,
    and leave no empty directory behind when the run refused before writing anything."""

    @functools.wraps(train)
    def run(cfg: TrainConfig, *args: Any, **kwargs: Any) -> Any:
        cfg.validate()  # before the lock: an empty --output-dir would lock the working directory
        check_model_location(cfg)
        out = Path(cfg.output_dir)
        made = [p for p in (out, *out.parents) if not p.exists()]  # what lock_run's mkdir creates
        lock = lock_run(out)
        try:
            return train(cfg, *args, **kwargs)
        finally:
            unlock_run(lock, out)
            with contextlib.suppress(OSError):  # tidying up never masks the run's own error
                if made and all(p.name in BOOKKEEPING for p in out.iterdir()):
                    shutil.rmtree(out, ignore_errors=True)
                    for parent in made[1:]:  # runs/ of runs/demo too, while nothing else went in
                        with contextlib.suppress(OSError):
                            parent.rmdir()

    return run  # type: ignore[return-value]


# ----------------------------------------------------------------------------- failed writes
class WriteError(TrainingStopped):
    """A write into the run directory failed for a reason the user must fix (disk full, permissions)."""


WRITE_FIXES = {
    errno.ENOSPC: "no space left on the device: free space on it (or choose another --output-dir)",
    errno.EDQUOT: "disk quota exceeded: free space in your quota (or choose another --output-dir)",
    errno.EACCES: "permission denied: make the directory writable again (chmod u+w) or choose another --output-dir",
    errno.EPERM: "operation not permitted: make the directory writable again or choose another --output-dir",
    errno.EROFS: "the file system is read-only: choose another --output-dir",
}


def error_number(e: BaseException) -> int | None:
    """The errno behind an error: an OSError's, or the one a library's own error type wraps or
    quotes (safetensors raises SafetensorError "... I/O error: No space left on device (os error 28)")."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        found = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(seen))
        if found:
            return int(found.group(1) or found.group(2))
        seen = seen.__cause__ or seen.__context__
    return None


def write_error(e: BaseException, path: Path, done: str = "") -> WriteError | None:
    """The one-line WriteError of an error raised while writing `path` (None when it is not a disk or
    permission error); `done` says what was already cleaned up."""
    fix = WRITE_FIXES.get(error_number(e) or 0)
    if fix is None:
        return None
    where = getattr(e, "filename", None) or path
    return WriteError(f"cannot write {where}: {fix}; {done}{how_to_continue(path)}")


def how_to_continue(path: Path) -> str:
    """What to run once the cause is fixed: resume the run's newest checkpoint, or, before its first
    checkpoint, start it again (advice that `--resume latest` would refuse is never given)."""
    from .checkpoint import list_checkpoints

    out = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        saved = bool(list_checkpoints(out / "checkpoints"))
    except OSError:
        saved = True
    if saved:
        return "then continue with --resume latest"
    return "then run the command again with --overwrite (no checkpoint was written yet)"


def save_error(e: Exception, path: Path, done: str) -> WriteError:
    """Any error of a checkpoint save as one line: a disk or permission error with its fix, anything
    else (a library's own error type) by its first line, so the run stops on a message, not a trace."""
    known = write_error(e, path, done)
    if known is not None:
        return known
    first = (str(e).strip().splitlines() or [""])[0][:300]
    log.debug("checkpoint save failed", exc_info=e)
    return WriteError(
        f"cannot write {path}: {type(e).__name__}: {first}; {done}fix the cause (free space, permissions, "
        f"a working filesystem), {how_to_continue(path)}"
    )


@contextmanager
def writing(path: Path, done: str = "") -> Iterator[None]:
    """Turn a disk-full or permission error while writing `path` into one line naming the path and
    the fix (WriteError, a TrainingStopped: the run stops with exit status 1); `done` says what was
    already cleaned up."""
    try:
        yield
    except Exception as e:
        known = write_error(e, path, done)
        if known is None:
            raise
        raise known from None
