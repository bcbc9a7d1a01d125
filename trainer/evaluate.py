"""Rewards of a rollout, and the held-out accuracy of the policy."""

from __future__ import annotations

import torch

from .config import TrainConfig
from .data import Example, reward_columns
from .loading import chance_token, prompts_for, sampling_config
from .rewards import RewardBatch, RewardFunction, TrainingStopped, score_batch
from .rollout import Rollout, sample_groups


def score_rollout(
    roll: Rollout, batch: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], where: str = ""
) -> RewardBatch:
    """Every reward function on every response of the rollout, with its prompt's dataset columns."""
    rows = [batch[g] for g in roll.group_ids.tolist()]
    ids = [roll.responses[i, : int(n)].tolist() for i, n in enumerate(roll.response_mask.sum(-1))]
    return score_batch(
        rewards,
        [e.prompt for e in rows],
        roll.texts,
        reward_columns(rows),
        completion_ids=ids,
        time_limit=cfg.reward_time_limit,
        where=where,
    )


def score(
    roll: Rollout, batch: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], step: int | None = None
) -> torch.Tensor:
    """(B,) float32 total rewards; TrainingStopped when every reward call of the batch failed."""
    where = "" if step is None else f" at step {step}"
    scored = score_rollout(roll, batch, cfg, rewards, where)
    if scored.all_failed:
        raise TrainingStopped(
            f"every reward call failed{where} ({', '.join(f.name for f in rewards)}); see the "
            "warnings above. Fix the reward function(s) and rerun"
        )
    return torch.tensor(scored.total, dtype=torch.float32, device=roll.responses.device)


@torch.no_grad()
def evaluate(
    model, tokenizer, examples: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], autocast_dtype
) -> float:
    """Accuracy (total reward >= accuracy_threshold, under `eval_reward` when set) of one response per
    eval prompt, sampled at the training temperature (greedy with --eval-greedy). The sampling RNG is forked and seeded, so
    evaluating neither disturbs training (resume stays exact) nor varies between runs of one seed."""
    hits = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        for i in range(0, len(examples), 64):
            chunk = examples[i : i + 64]
            prompts, chat = prompts_for(tokenizer, chunk, cfg)
            sampling = sampling_config(
                tokenizer,
                cfg,
                chance_token(tokenizer, cfg),
                greedy=cfg.eval_greedy,
                chat_template=chat,
                autocast_dtype=autocast_dtype,
            )
            roll = sample_groups(model, tokenizer, prompts, sampling, group_size=1)
            scored = score_rollout(roll, chunk, cfg, rewards, " in evaluation")
            hits += sum(t >= cfg.accuracy_threshold for t in scored.total)
    return hits / max(1, len(examples))
