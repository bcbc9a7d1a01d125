"""The run directory: what a run writes into `output_dir`, and the checks before it writes.

A run owns metrics.jsonl, rollouts.jsonl, config.json, checkpoints/, tb/ and wandb/ (RUN_FILES).
`--overwrite` deletes only those; `--resume` continues a checkpoint under the options it was saved
with (MAY_CHANGE_ON_RESUME lists the ones that may differ) and truncates the logs to its step.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .config import TrainConfig, UsageError

log = logging.getLogger("tempo_rl.trainer")


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
RUN_FILES = ("metrics.jsonl", "rollouts.jsonl", "config.json", "checkpoints", "tb", "wandb")


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


def check_output_dir(cfg: TrainConfig) -> None:
    """A new run never writes into a directory that holds another run unless told to replace it."""
    out = Path(cfg.output_dir)
    if cfg.resume or cfg.overwrite or not out.is_dir():
        return
    held = sorted(p.name for p in out.iterdir())
    if held:
        listed = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise UsageError(
            f"output_dir {str(out)!r} is not empty ({listed}); "
            "continue that run with --resume latest, replace it with --overwrite, or choose "
            "another --output-dir"
        )


def clear_run(out_dir: Path) -> None:
    """--overwrite: delete the files a run writes (and only those)."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
