"""The policy loss: PPO clipped surrogate with asymmetric clip, k3 KL, two aggregation modes.

All functions take per-token tensors of shape (B, T) over response positions and a 0/1 mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Low-variance unbiased estimator of KL(pi || pi_ref) per token (Schulman's k3):
    r - log r - 1 with r = pi_ref / pi, always >= 0. (B, T) -> (B, T)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, denom: float | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) to a scalar.

    "token-mean": sum over all unmasked tokens / their count (every token weighs the same; DAPO).
    "sequence-mean": mean over each response's tokens, then mean over responses (GRPO's paper form).
    `denom` overrides the divisor (token count or response count of the whole mini-batch) so that
    micro-batches of one mini-batch sum to its loss under gradient accumulation.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / (denom if denom is not None else mask.sum().clamp(min=1))
    if mode == "sequence-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return per_seq.sum() / (denom if denom is not None else values.shape[0])
    raise ValueError(f"aggregation must be 'token-mean' or 'sequence-mean', got {mode!r}")


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
        denom: divisor override for gradient accumulation (see `aggregate`).
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    pg = aggregate(per_token, mask, aggregation, denom)
    loss = pg
    kl = torch.zeros((), dtype=logp.dtype)
    if kl_coef:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = aggregate(k3_kl(logp, ref_logp), mask, aggregation, denom)
        loss = loss + kl_coef * kl
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        was_clipped = ((advantages > 0) & (ratio > 1 + clip_high)) | ((advantages < 0) & (ratio < 1 - clip_low))
        clip_fraction = (was_clipped.to(mask.dtype) * mask).sum() / n
        approx_kl = (k3_kl(logp, old_logp) * mask).sum() / n
    return LossOutput(loss, pg.detach(), kl.detach(), clip_fraction, approx_kl)
