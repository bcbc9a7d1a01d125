"""What a run writes: metrics.jsonl (and TensorBoard / Weights & Biases), rollouts.jsonl, and the
per-step numbers that go into them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tempo_rl import StepResult
from tempo_rl.viz.rollouts import dump_line

from . import run_dir
from .config import TrainConfig
from .data import Example, prompt_text
from .rewards import RewardBatch
from .rollout import Rollout


def all_groups_flat(rewards: torch.Tensor, group_ids: torch.Tensor) -> bool:
    """True when within every group all rewards are equal (every advantage is then 0).
    rewards: (B,) float; group_ids: (B,) int."""
    for g in group_ids.unique():
        r = rewards[group_ids == g]
        if bool((r != r[0]).any()):
            return False
    return True


def rollout_metrics(roll: Rollout, rewards: torch.Tensor, result: StepResult, threshold: float = 1.0) -> dict[str, Any]:
    """The step's rollout numbers: rewards, lengths, the engine step's metrics (td_coef, tree shape; the
    branch-node diagnostic: node count, mean m, pooled unbiased r = delta^2 / sigma^2; the same keys
    every step, 0.0 where undefined) and advantage moments over the tokens that carry loss."""
    m = roll.loss_mask.bool()
    a = result.advantages[m]
    return {
        "reward_mean": float(rewards.mean()),
        "accuracy": float((rewards >= threshold).float().mean()),
        "response_length": float(roll.response_mask.sum(-1).float().mean()),
        **result.metrics,
        "tokens_generated": roll.stats.get("tokens_generated", roll.n_tokens),
        "adv_mean": float(a.mean()) if a.numel() else 0.0,
        "adv_std": float(a.std()) if a.numel() > 1 else 0.0,
        "adv_absmax": float(a.abs().max()) if a.numel() else 0.0,
    }


LOGGER_MODULES = {"tensorboard": ("tensorboard",), "wandb": ("wandb",)}


class MetricLog:
    """metrics.jsonl (one line per step), and TensorBoard / Weights & Biases through their own libraries
    when `report_to` names them."""

    def __init__(self, out_dir: Path, cfg: TrainConfig):
        self.path = out_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if "tensorboard" in cfg.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        if "wandb" in cfg.loggers:
            import wandb

            self.wandb = wandb.init(dir=str(out_dir), config=cfg.to_dict(), name=out_dir.name, resume="allow")

    def write(self, row: dict[str, Any]) -> None:
        with run_dir.writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def dump_groups(path: Path, roll: Rollout, rewards: torch.Tensor, batch: list[Example], step: int) -> None:
    """Append every group of the step, each response with its prompt, to rollouts.jsonl (read by
    `tempo-rl inspect`)."""
    with open(path, "a") as f:
        for i, g in enumerate(roll.group_ids.tolist()):
            n = int(roll.response_mask[i].sum())
            prompt = prompt_text(batch[g].prompt)
            f.write(dump_line(step, g, prompt, roll.responses[i, :n].tolist(), roll.texts[i], float(rewards[i])))


def reward_means(scored: RewardBatch) -> dict[str, float]:
    """`reward/<name>`: each function's mean over the samples it applied to (when there are several)."""
    if len(scored.per_function) < 2:
        return {}
    out = {}
    for name, values in scored.per_function.items():
        got = [v for v in values if v is not None]
        out[f"reward/{name}"] = sum(got) / len(got) if got else 0.0
    return out
