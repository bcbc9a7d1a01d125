"""The log-probability scoring of a rollout without gradient: the old policy's and the frozen
reference's log pi(response token). One function, so the scoring can change (a tree forward, say)
in one place."""

from __future__ import annotations

import torch

from tempo_rl.policy_loss import fused_logprobs

from .config import TrainConfig
from .rollout import Rollout, forward_hidden, forward_logprobs, lm_head


@torch.no_grad()
def score_logprobs(model, roll: Rollout, cfg: TrainConfig, autocast_dtype) -> torch.Tensor:
    """log pi(response token) (B, Lr) without gradient: old-policy and reference scores."""
    if not cfg.fused_loss:
        return forward_logprobs(model, roll, autocast_dtype=autocast_dtype)[0]
    weight, bias = lm_head(model)
    hidden = forward_hidden(model, roll, autocast_dtype=autocast_dtype)  # (B, Lr, H)
    return fused_logprobs(hidden, weight, roll.responses, bias=bias)
