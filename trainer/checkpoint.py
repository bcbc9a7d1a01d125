"""Checkpoints that survive a kill mid-save, resume bit-exactly on CPU, and load nothing executable.

Layout of `checkpoints/step_000040/`: the model and tokenizer as written by `save_pretrained`
(safetensors), `trainer_state.safetensors` (every tensor of the optimizer state and the RNG states)
and `trainer_state.json` (everything else: step, scheduler, config, the Python RNG state, and where
each tensor goes back). No pickle is written or read. Everything is written into a hidden temporary
directory first and renamed into place, so a reader only ever sees complete checkpoints.
`checkpoints/written.json` lists the checkpoints in the order they were written: rotation keeps the
newest by that order and `--resume latest` takes the last, whatever the step numbers say.
`trainer_state.json` also lists every other file of the checkpoint with its size, so that
`check_complete` finds a truncated or missing file before anything is loaded. A save that fails
(disk full, permission lost, a kill) removes its temporary directory at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .run_dir import save_error, step_of

STATE_FILE = "trainer_state.json"
TENSOR_FILE = "trainer_state.safetensors"
ORDER_FILE = "written.json"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- state <-> JSON + tensors
def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able image of obj; each tensor (numpy arrays included) is moved into `tensors` under a
    fresh key and replaced by a reference. Tuples, dicts with non-string keys and arrays keep their kind."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: encode(v, tensors) for k, v in obj.items()}}
        return {"__items__": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`."""
    if isinstance(obj, list):
        return [decode(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode(x, tensors) for x in obj["__tuple__"])
    if "__items__" in obj:
        return {decode(k, tensors): decode(v, tensors) for k, v in obj["__items__"]}
    return {k: decode(v, tensors) for k, v in obj["__dict__"].items()}


def write_state(directory: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    image = encode(state, tensors)
    save_file(tensors, str(directory / TENSOR_FILE))
    (directory / STATE_FILE).write_text(json.dumps(image))


def load_state(path: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (JSON and safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / STATE_FILE).is_file() and (path / "trainer_state.pt").is_file():
        raise ValueError(
            f"{path}: an old checkpoint whose trainer state is a pickle (trainer_state.pt); it is "
            "not loaded, since unpickling can run code. Start a new run from its weights: "
            f"--model {path}"
        )
    tensors = load_file(str(path / TENSOR_FILE))
    return decode(json.loads((path / STATE_FILE).read_text()), tensors)


# ----------------------------------------------------------------------------- checkpoints
def _written(root: Path) -> list[str]:
    try:
        return list(json.loads((root / ORDER_FILE).read_text()))
    except (OSError, ValueError):
        return []


def _record(root: Path, name: str) -> None:
    """Append name to the write order (atomically: temp file + rename)."""
    order = [n for n in _written(root) if n != name] + [name]
    tmp = root / f".{ORDER_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(order))
    tmp.replace(root / ORDER_FILE)


def save(
    root: str | Path,
    step: int,
    *,
    model,
    tokenizer,
    optimizer,
    scheduler,
    config: dict,
    keep: int = 2,
    run_state: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Path:
    """Write checkpoint `root/step_{step:06d}` atomically; keep the `keep` written last (0: all).
    `run_state` holds the loop's own counters, so a resumed run continues exactly; `run_id` names
    the run it belongs to (run_dir.check_resume_target)."""
    root = Path(root)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):  # left by a run killed mid-save (one writer per directory)
            shutil.rmtree(stale, ignore_errors=True)
        _write(tmp, step, model, tokenizer, optimizer, scheduler, config, run_state or {}, run_id)
        _put_in_place(root, tmp, final)
    except Exception as e:  # whatever the library (safetensors, json, the OS): one line, no partial checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        done = f"delete the partial checkpoint {tmp}, " if tmp.exists() else "the partial checkpoint was removed; "
        raise save_error(e, tmp, done) from None
    except BaseException:  # Ctrl-C mid-save
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _put_in_place(root: Path, tmp: Path, final: Path) -> None:
    """Rename the written checkpoint into place. The write order first: a kill before the rename
    leaves a name that lists nothing, never a checkpoint that `--resume latest` skips."""
    _record(root, final.name)
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)  # atomic on one filesystem


def _write(
    tmp: Path, step: int, model, tokenizer, optimizer, scheduler, config: dict, run_state: dict, run_id: str | None
) -> None:
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": config,
        "run": run_state,
        "run_id": run_id,
        "files": files,
    }
    write_state(tmp, state)


# ----------------------------------------------------------------------------- completeness
class DamagedCheckpoint(ValueError):
    """A checkpoint with a missing, truncated or unreadable file; the message names both."""


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be complete (None when its header and size agree)."""
    size = path.stat().st_size
    if size < 8:
        return f"empty or truncated ({size} bytes, no safetensors header)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if 8 + n > size:
            return f"truncated ({size} bytes; its header alone says {8 + n})"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return "not a safetensors file (unreadable header)"
    if 8 + n + end > size:
        return f"truncated ({size} of {8 + n + end} bytes)"
    return None


def check_complete(path: str | Path) -> None:
    """DamagedCheckpoint naming the checkpoint and the file when any file of it is missing,
    truncated or unreadable. Reads headers and sizes only."""
    path = Path(path)

    def damaged(name: str, why: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"checkpoint {path} is damaged: {name} {why}")

    try:
        image = json.loads((path / STATE_FILE).read_text())
        files = decode(image["__dict__"].get("files", {}), {})
    except FileNotFoundError:
        raise damaged(STATE_FILE, "is missing") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged(STATE_FILE, "is not valid JSON (truncated?)") from None
    if not files:  # written before the file list: the files every checkpoint has
        files = {"config.json": None, "model.safetensors": None}
    for name, size in {TENSOR_FILE: None, **files}.items():
        file = path / name
        if not file.is_file():
            raise damaged(name, "is missing")
        if size is not None and file.stat().st_size != size:
            raise damaged(name, f"is {file.stat().st_size} bytes, {size} were written (truncated?)")
        why = safetensors_problem(file) if name.endswith(".safetensors") else None
        if why:
            raise damaged(name, why)


def newest_intact(root: str | Path, *, but: Path | None = None) -> Path | None:
    """The checkpoint written last under root that passes check_complete (other than `but`)."""
    for path in reversed(list_checkpoints(root)):
        if but is not None and path.resolve() == but.resolve():
            continue
        try:
            check_complete(path)
        except DamagedCheckpoint:
            continue
        return path
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first by write order. Those missing from the order
    file go by step: before all others, except those of steps past every recorded one (renamed into
    place by a run stopped before it recorded them), which come last."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.glob("step_*") if (p / STATE_FILE).is_file()}
    order = [n for n in _written(root) if n in found]
    rest = sorted(set(found) - set(order), key=step_of)
    top = max(map(step_of, order), default=-1)
    names = [n for n in rest if step_of(n) <= top] + order + [n for n in rest if step_of(n) > top]
    return [found[n] for n in names]


def resolve(resume: str, root: str | Path) -> Path:
    """'latest' -> the checkpoint written last under root; anything else is a checkpoint directory."""
    if resume == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {root}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        if (path / "trainer_state.pt").is_file():
            load_state(path)  # raises with the reason
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint (no {STATE_FILE})")
    return path
