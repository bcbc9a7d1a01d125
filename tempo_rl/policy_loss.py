"""`fused_policy_loss`: the PPO clipped surrogate on the LM head with (B, T) token advantages,
without the (B, T, V) logits.

Token-level advantages such as TEMPO's (arXiv 2509.18314) do not fit the memory-saving fused
losses that take one advantage per sequence; this one takes them per token. The definition and the
chunked algorithm are in fast/policy_loss_torch.py; the Triton chunk step in fast/policy_loss_triton.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tempo_rl.fast import policy_loss_torch

from .backends import get_backend, resolve_backend

__all__ = ["fused_logprobs", "fused_policy_loss", "lm_head"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def fused_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    temperature: float = 1.0,
    aggregation: str = "token-mean",
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with per-token advantages, computed from the LM head's input.

    With z = (hidden W^T + bias) / temperature, logp = log_softmax(z)[targets], r = exp(logp - old_logp):
        per token  -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) + kl_coef * k3(logp, ref_logp)
    aggregated over mask by "token-mean" (sum / token count) or "sequence-mean" (mean per row, then
    over rows), exactly as trainer/loss.py. The chunked backends never hold (B, T, V) logits.

    Args:
        hidden: (B, T, H) float, the final hidden states at the positions predicting `targets`.
        weight: (V, H), the LM head (same dtype as hidden); bias: (V,) or None.
        targets: (B, T) int token ids in [0, V).
        old_logp: (B, T) float, log-probs of the sampling policy (no gradient).
        advantages: (B, T) float token advantages, e.g. `tempo_rl.tempo_advantages` (no gradient).
        mask: (B, T) bool or 0/1, the tokens that count; masked positions may hold anything.
        ref_logp: (B, T) float, reference-policy log-probs; required when kl_coef > 0.
        backend: "auto" (Triton on CUDA when it imports, else chunked torch), "reference" (full
            logits, autograd), "torch" (chunked) or "triton" (chunked, Triton chunk step).

    Returns:
        (loss, metrics): loss a float32 scalar with gradients for hidden, weight and bias; metrics
        detached scalars: policy_loss, kl, clip_fraction, clip_fraction_low, clip_fraction_high,
        approx_kl (k3 of old vs new), entropy (token means over the mask).

    Raises ValueError naming the argument for bad input, including a temperature so small that
    logits / temperature would overflow (bounded by H max |hidden| max |weight| + max |bias|).

    >>> h, w = torch.zeros(1, 2, 4), torch.zeros(8, 4)
    >>> ids, zeros, ones = torch.tensor([[1, 2]]), torch.zeros(1, 2), torch.ones(1, 2)
    >>> loss, m = fused_policy_loss(h, w, ids, zeros - math.log(8), ones, ones)
    >>> round(loss.item(), 6), round(m["entropy"].item(), 4)  # r = 1: loss -mean(A); entropy log 8
    (-1.0, 2.0794)
    """
    _check_inputs(hidden, weight, targets, old_logp, advantages, mask, bias, ref_logp)
    _check_scalars(kl_coef, clip_low, clip_high, temperature, aggregation)
    if kl_coef and ref_logp is None:
        raise ValueError("ref_logp is required when kl_coef > 0")
    _check_target_range(targets, mask, weight.shape[0])
    check_temperature(hidden, weight, bias, temperature)
    # Where the mask is 0 a target is never scored (HF marks those -100): any id in range stands in.
    targets = torch.where(mask != 0, targets, torch.zeros((), dtype=targets.dtype, device=targets.device))
    impl = get_backend(resolve_backend(backend, hidden.device)).policy_loss
    return impl(
        hidden,
        weight,
        targets,
        old_logp,
        advantages,
        mask,
        bias=bias,
        ref_logp=ref_logp,
        kl_coef=kl_coef,
        clip_low=clip_low,
        clip_high=clip_high,
        temperature=temperature,
        aggregation=aggregation,
    )


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(targets) (B, T) float32 from hidden (B, T, H) and the LM head, in chunks, without gradient."""
    _check_float("hidden", hidden, 3)
    _check_head(hidden, weight, bias)
    _check_targets(targets, hidden.shape[:2], weight.shape[0])
    _check_number("temperature", temperature, lambda v: v > 0, "> 0")
    check_temperature(hidden, weight, bias, temperature)
    return policy_loss_torch.token_logprobs_chunked(hidden, weight, targets, bias=bias, temperature=temperature)


def lm_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (V, H), bias (V,) | None) of a causal LM whose logits are exactly hidden @ W^T + b.

    Models that transform the logits further (soft-capping, a logit scale) are refused: a loss on the
    LM head would compute something else; score them through their full logits."""
    config = getattr(model, "config", None)
    for knob in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, knob, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"this model sets {knob}={value!r}, so its logits are not the LM head's output; "
                "use the full-logits path (fused_loss = False)"
            )
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"the model's output embedding is a {type(head).__name__}, not nn.Linear; "
            "use the full-logits path (fused_loss = False)"
        )
    return head.weight, head.bias


def check_loss_terms(mask, old_logp, advantages, ref_logp, kl_coef, clip_low, clip_high, aggregation) -> None:
    """The loss's per-token inputs, each (B, T) like `mask`, and its scalars; ValueError / TypeError
    naming the argument."""
    _check_scalars(kl_coef, clip_low, clip_high, 1.0, aggregation)
    if kl_coef and ref_logp is None:
        raise ValueError("ref_logp is required when kl_coef > 0")
    keep = mask.bool()
    for name, x in (("old_logp", old_logp), ("advantages", advantages), ("ref_logp", ref_logp)):
        if x is None:
            continue
        _check_float(name, x, 2)
        if tuple(x.shape) != tuple(mask.shape):
            raise ValueError(f"{name} must have the completions' shape {tuple(mask.shape)}, got {tuple(x.shape)}")
        if x.device != mask.device:
            raise ValueError(f"{name} is on {x.device} but the completions are on {mask.device}")
        if not bool(torch.isfinite(x[keep]).all()):
            raise ValueError(f"{name} must be finite where the mask is 1")


# ----------------------------------------------------------------------------- validation
def _check_inputs(hidden, weight, targets, old_logp, advantages, mask, bias, ref_logp) -> None:
    _check_float("hidden", hidden, 3)
    _check_head(hidden, weight, bias)
    bt = tuple(hidden.shape[:2])
    _check_targets(targets, bt, weight.shape[0], ranged=False)
    for name, x in (("old_logp", old_logp), ("advantages", advantages), ("ref_logp", ref_logp)):
        if x is not None:
            _check_float(name, x, 2)
            _check_shape(name, x, bt)
            _check_device(name, x, hidden)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    _check_shape("mask", mask, bt)
    _check_device("mask", mask, hidden)
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1")
    keep = mask.bool()
    for name, x in (("old_logp", old_logp), ("advantages", advantages), ("ref_logp", ref_logp)):
        if x is not None and not bool(torch.isfinite(x[keep]).all()):
            raise ValueError(f"{name} must be finite where mask is 1")


def _check_head(hidden, weight, bias) -> None:
    _check_float("weight", weight, 2)
    _check_device("weight", weight, hidden)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[2] = {hidden.shape[2]}, got {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (V >= 1)")
    if bias is not None:
        _check_float("bias", bias, 1)
        _check_device("bias", bias, hidden)
        if bias.dtype != hidden.dtype or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias must be ({weight.shape[0]},) of dtype {hidden.dtype}, got {tuple(bias.shape)} {bias.dtype}"
            )


def _check_target_range(targets: torch.Tensor, mask: torch.Tensor, vocab: int) -> None:
    """Targets where the mask is nonzero lie in [0, V); elsewhere any value (HF's -100) is ignored."""
    bad = (mask != 0) & ((targets < 0) | (targets >= vocab))  # (B, T)
    if bool(bad.any()):
        b, t = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"targets[{b}, {t}] = {int(targets[b, t])} where mask is 1: targets must lie in [0, V) with V = {vocab} "
            "wherever the mask is nonzero"
        )


def _check_targets(targets, bt: tuple[int, ...], vocab: int, *, ranged: bool = True) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    _check_shape("targets", targets, bt)
    if ranged and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"targets must lie in [0, V) with V = {vocab}, got values in [{int(targets.min())}, {int(targets.max())}]"
        )


def _check_float(name: str, x, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor ({', '.join(map(str, _FLOATS))}), got {x.dtype}")
    if x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(x.shape)}")


def _check_shape(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape (B, T) = {tuple(shape)} like hidden's first two dims, got {tuple(x.shape)}"
        )


def _check_device(name: str, x: torch.Tensor, hidden: torch.Tensor) -> None:
    if x.device != hidden.device:
        raise ValueError(f"{name} is on {x.device} but hidden is on {hidden.device}")


def _largest_abs(x: torch.Tensor) -> float:
    """max |x| without a copy of x (aminmax reads it once; abs() would allocate its size), one sync;
    nan when x holds a nan."""
    return float(torch.stack(torch.aminmax(x.detach())).abs().max())


def check_temperature(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    *,
    hidden_name: str = "hidden",
) -> None:
    """logits / temperature must stay finite, and so must their differences (log_softmax subtracts
    the largest), in the dtype the LM head's logits are computed in; else the log-probs, entropy and
    gradients are NaN. |h . w_v + b_v| <= H max |h| max |w| + max |b| bounds every logit without
    forming them and without a float64 copy of the (V, H) head; it is looser than Cauchy-Schwarz's
    |h| |w_v| by at most a factor H, which moves the refused temperatures by that factor (near 1e-35
    for float32). A float16 head's own matmul may still overflow float16 at any temperature.
    `hidden_name`: what the message calls the hidden states (the model's, in the tree forward)."""
    if hidden.numel() == 0 or weight.numel() == 0:
        return
    parts = {hidden_name: _largest_abs(hidden), "weight": _largest_abs(weight)}
    if bias is not None and bias.numel():
        parts["bias"] = _largest_abs(bias)
    for name, value in parts.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} holds non-finite values (inf or nan): the log-probs would be NaN")
    bound = weight.shape[-1] * parts[hidden_name] * parts["weight"] + parts.get("bias", 0.0)
    check_logit_range(bound, torch.promote_types(weight.dtype, torch.float32), temperature)


def check_logit_range(largest: float, dtype: torch.dtype, temperature: float) -> None:
    """Refuse a temperature under which logits of magnitude `largest`, or their differences (up to
    twice that), overflow `dtype`."""
    top = torch.finfo(dtype).max
    if 2 * largest / temperature > top:
        raise ValueError(
            f"temperature={temperature!r} is too small for this model's logits: |logits| reach up to {largest:.3g}, "
            f"so logits / temperature (and their differences) would overflow {dtype} (max {top:.3g}); "
            f"use temperature >= {2 * largest / top:.3g}"
        )


def _check_number(name: str, value, ok: Callable[[float], bool], rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def _check_scalars(kl_coef, clip_low, clip_high, temperature, aggregation) -> None:
    _check_number("kl_coef", kl_coef, lambda v: v >= 0, ">= 0")
    _check_number("clip_low", clip_low, lambda v: 0 <= v < 1, "in [0, 1)")
    _check_number("clip_high", clip_high, lambda v: v >= 0, ">= 0")
    _check_number("temperature", temperature, lambda v: v > 0, "> 0")
    if aggregation not in policy_loss_torch.AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {policy_loss_torch.AGGREGATIONS}, got {aggregation!r}")
