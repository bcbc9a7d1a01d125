"""The log-probability scoring of a rollout without gradient: the old policy's and the frozen
reference's log pi(response token). One function, so the scoring changes in one place: on the
packed prefix tree for tree rollouts (`tree_forward`), row by row otherwise."""

from __future__ import annotations

import torch

from tempo_rl.policy_loss import fused_logprobs, lm_head
from tempo_rl.tree_forward import tree_logprobs, tree_scores

from .config import TrainConfig
from .rollout import Rollout, forward_hidden, forward_logprobs


def on_the_tree(cfg: TrainConfig) -> bool:
    """Whether the policy's log-probs run on the rollout's prefix tree."""
    return cfg.rollout == "tree" and cfg.tree_forward


@torch.no_grad()
def score_logprobs(model, roll: Rollout, cfg: TrainConfig, autocast_dtype) -> torch.Tensor:
    """log pi(response token) (B, Lr) without gradient: old-policy and reference scores."""
    if on_the_tree(cfg):
        tree = roll.prompt_ids, roll.prompt_mask, roll.responses, roll.loss_mask
        with torch.autocast(roll.responses.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return tree_scores(model, *tree) if cfg.fused_loss else tree_logprobs(model, *tree).float()
    if not cfg.fused_loss:
        return forward_logprobs(model, roll, autocast_dtype=autocast_dtype)[0]
    weight, bias = lm_head(model)
    hidden = forward_hidden(model, roll, autocast_dtype=autocast_dtype)  # (B, Lr, H)
    return fused_logprobs(hidden, weight, roll.responses, bias=bias)
