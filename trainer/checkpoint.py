"""Checkpoints that survive a kill mid-save and resume bit-exactly on CPU.

Layout of `checkpoints/step_000040/`: the model and tokenizer as written by `save_pretrained`
(safetensors), and `trainer_state.pt` (optimizer, scheduler, RNG states, step, config). Everything
is written into a hidden temporary directory first and renamed into place, so a reader only ever
sees complete checkpoints.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


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


def save(root: str | Path, step: int, *, model, tokenizer, optimizer, scheduler, config: dict, keep: int = 2) -> Path:
    """Write checkpoint `root/step_{step:06d}` atomically; keep the newest `keep` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    for stale in root.glob(".tmp-step_*"):  # left by a run killed mid-save (one writer per directory)
        shutil.rmtree(stale, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng_state(), "config": config}
    torch.save(state, tmp / STATE_FILE)
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = root / f".old-step_{step:06d}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)  # atomic on one filesystem
    for stale in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve(resume: str, root: str | Path) -> Path:
    """'latest' -> the newest checkpoint under root; anything else is a checkpoint directory."""
    if resume == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {root}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint (no {STATE_FILE})")
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
