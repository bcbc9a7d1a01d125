"""The full-logits policy loss of the trainer (`fused_loss = False`): token log-probs from (B, T, V)
logits, and the PPO clipped surrogate, k3 KL and aggregation of `tempo_rl.fast.policy_loss_torch`
(their one definition, shared with the fused path) applied to them.

All functions take per-token tensors of shape (B, T) over response positions and a 0/1 mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tempo_rl.fast.policy_loss_torch import LossParams, items_loss, token_items, token_weights


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position. logits: (B, T, V), targets: (B, T) -> (B, T) float32.

    Gathers before normalising (logsumexp once per row) so no (B, T, V) log-softmax is stored."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position. (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, denom: float | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar: sum of `token_weights(mask, mode, denom)` x values."""
    return (token_weights(mask, mode, denom).to(values.dtype) * values).sum()


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward() runs on
    policy_loss: torch.Tensor  # scalar, detached
    kl: torch.Tensor  # scalar k3 KL to the reference (0 when no reference), detached
    clip_fraction: torch.Tensor  # fraction of tokens whose gradient the clip removed
    approx_kl: torch.Tensor  # k3 KL(old || new) over the tokens, detached


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    aggregation: str = "token-mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    denom: float | None = None,
) -> LossOutput:
    """PPO clipped surrogate (Schulman et al. 2017) with the asymmetric clip of DAPO / the TEMPO runs.

    ratio = exp(logp - old_logp); per token  -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    plus kl_coef * k3(logp, ref_logp), both aggregated by `aggregation`.

    Args:
        logp, old_logp, advantages, mask: (B, T) over response positions; old_logp detached.
        ref_logp: (B, T) log-probs of the frozen reference, needed when kl_coef > 0.
        denom: divisor override for gradient accumulation (see `token_weights`).
    """
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    params = LossParams(clip_low, clip_high, kl_coef, 1.0)
    w = token_weights(mask, aggregation, denom).to(logp.dtype)  # (B, T)
    items, counts = token_items(old_logp, advantages, w, mask, ref_logp if kl_coef else None)
    loss, m = items_loss(logp, items, counts, params)
    return LossOutput(loss, m["policy_loss"], m["kl"], m["clip_fraction"], m["approx_kl"])
