"""The policy loss on the LM head: PPO clipped surrogate with (B, T) advantages, without (B, T, V) logits.

Two implementations of one definition, both on plain tensors:

- `policy_loss_ref`: the plain torch loss: full logits (B, T, V) in float32, log-softmax,
  surrogate, autograd. It is the definition, kept beside the fast path.
- `policy_loss_chunked`: a `torch.autograd.Function` that walks the N = B*T tokens in chunks of C.
  Per chunk it forms the (C, V) float32 logits, their log-softmax, the surrogate and k3 KL, and
  turns the logits buffer in place into d loss / d logits, which two matmuls turn into the chunk's
  share of d hidden, d weight (and d bias). The gradient is computed in the forward pass (as Liger's
  fused linear cross entropy does), so the backward pass only scales it: three matmuls per chunk, the
  same count as the reference's forward + backward, and peak memory O(C*V + V*H) instead of O(N*V).

Per token i (response positions, mask m_i), with z = (h_i W^T + b) / temperature:
    logp_i = z_{y_i} - logsumexp(z),  r_i = exp(logp_i - old_logp_i)
    pg_i   = -min(r_i A_i, clip(r_i, 1 - clip_low, 1 + clip_high) A_i)
    kl_i   = exp(ref_i - logp_i) - (ref_i - logp_i) - 1        (k3, Schulman; only with kl_coef)
    loss   = sum_i w_i (pg_i + kl_coef kl_i)
with w_i = m_i / max(sum m, 1) ("token-mean") or m_i / (max(n_b, 1) B) ("sequence-mean", n_b the
row's token count): `token_weights`, which the trainer's full-logits path uses too. old_logp, advantages and ref_logp are
constants (no gradient). Masked positions never enter: their inputs are replaced by 0 first, so
padding holding -inf or NaN cannot leak into the loss.

d loss / d logp_i = w_i (-r_i A_i [unclipped branch active] + kl_coef (1 - exp(ref_i - logp_i))), and
d logp_i / d z = onehot(y_i) - softmax(z): the per-token coefficient is all the chunk step needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

AGGREGATIONS = ("token-mean", "sequence-mean")
CHUNK_BYTES = 256 * 2**20  # float32 logits per chunk; two such buffers live at once


class LossParams(NamedTuple):
    """Scalar hyperparameters of the loss."""

    clip_low: float
    clip_high: float
    kl_coef: float
    temperature: float


class ChunkOut(NamedTuple):
    """Per-token results of one chunk, all (C,) float32."""

    logp: torch.Tensor
    entropy: torch.Tensor
    pg: torch.Tensor
    kl: torch.Tensor


# ----------------------------------------------------------------------------- shared maths
def token_weights(mask: torch.Tensor, aggregation: str, denom: float | None = None) -> torch.Tensor:
    """w (B, T) float32 with loss = sum w * per_token: the one definition of the two aggregations.

    "token-mean": every unmasked token weighs 1 / (their count) (DAPO). "sequence-mean": each
    response's tokens weigh 1 / (its token count x B) (GRPO's paper form). `denom` replaces the
    token count (token-mean) or B (sequence-mean) with the whole mini-batch's, so micro-batches of
    one mini-batch sum to its loss under gradient accumulation."""
    m = mask.to(torch.float32)
    if aggregation == "token-mean":
        return m / (m.sum().clamp(min=1) if denom is None else denom)
    if aggregation == "sequence-mean":
        return m / (m.sum(-1, keepdim=True).clamp(min=1) * (m.shape[0] if denom is None else denom))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, p: LossParams):
    """(ratio, pg, d pg / d logp) per token; the derivative is the one autograd gives the reference's
    torch.minimum / torch.clamp (the unclipped branch carries the gradient when it is the smaller)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high) * adv
    pg = -torch.minimum(unclipped, clipped)
    dpg = torch.where(unclipped <= clipped, -unclipped, torch.zeros_like(unclipped))
    return ratio, pg, dpg


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k3 KL(pi || pi_ref) per token, its derivative in logp)."""
    log_ratio = ref_logp - logp
    ratio = torch.exp(log_ratio)
    return ratio - log_ratio - 1.0, 1.0 - ratio


def _masked(x: torch.Tensor | None, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """x in `dtype` with masked-out positions set to 0 (padding may hold anything)."""
    if x is None:
        return None
    return torch.where(mask, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))


def metrics_from_tokens(logp, entropy, pg, kl, ratio, old_logp, adv, w, mask, p: LossParams) -> dict[str, torch.Tensor]:
    """The scalars the trainer logs, detached: aggregated policy loss and KL, token means of the
    clip fractions (low: A < 0 and r < 1 - clip_low; high: A > 0 and r > 1 + clip_high), k3
    KL(old || new) and entropy. All (N,) inputs, mask bool."""
    with torch.no_grad():
        m = mask.to(torch.float32)
        n = m.sum().clamp(min=1)
        low = ((adv < 0) & (ratio < 1.0 - p.clip_low)).to(torch.float32) * m
        high = ((adv > 0) & (ratio > 1.0 + p.clip_high)).to(torch.float32) * m
        return {
            "policy_loss": (w * pg).sum(),
            "kl": (w * kl).sum(),
            "clip_fraction": (low + high).sum() / n,
            "clip_fraction_low": low.sum() / n,
            "clip_fraction_high": high.sum() / n,
            "approx_kl": (k3(logp, old_logp)[0] * m).sum() / n,
            "entropy": (entropy * m).sum() / n,
        }


# ----------------------------------------------------------------------------- the reference
def policy_loss_ref(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss through full logits and autograd (materialises (B, T, V) several times over).

    hidden: (B, T, H), weight: (V, H), bias: (V,) | None, targets: (B, T) int, old_logp /
    advantages / ref_logp: (B, T) float, mask: (B, T) 0/1. Returns (scalar loss, metrics).
    Computes in float32, or float64 when given float64 (the tests' oracle)."""
    p = LossParams(clip_low, clip_high, kl_coef, temperature)
    keep = mask.bool()
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = torch.nn.functional.linear(hidden, weight, bias).to(dtype) / temperature  # (B, T, V)
    logp = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)  # (B, T)
    with torch.no_grad():
        logq = torch.log_softmax(logits, -1)  # (B, T, V)
        entropy = -(logq.exp() * logq).sum(-1)  # (B, T)
    old, adv = _masked(old_logp, keep, dtype), _masked(advantages, keep, dtype)
    ratio, pg, _ = surrogate(logp, old, adv, p)
    w = token_weights(keep, aggregation).to(dtype)  # (B, T)
    loss = (w * pg).sum()
    kl = torch.zeros_like(pg)
    if kl_coef:
        kl = k3(logp, _masked(ref_logp, keep, dtype))[0]
        loss = loss + kl_coef * (w * kl).sum()
    metrics = metrics_from_tokens(
        logp.detach(), entropy, pg.detach(), kl.detach(), ratio.detach(), old, adv, w, keep, p
    )
    return loss, metrics


# ----------------------------------------------------------------------------- the chunked path
ChunkStep = Callable[..., tuple[ChunkOut, "torch.Tensor | None"]]


def chunk_step_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    ref: torch.Tensor | None,
    w: torch.Tensor,
    p: LossParams,
    with_grad: bool,
    scratch: dict[str, torch.Tensor],
) -> tuple[ChunkOut, torch.Tensor | None]:
    """One chunk: logits (C, V) float32, already divided by temperature -> (per-token results, and
    with_grad the (C, V) float32 d loss / d (h W^T + b), temperature included; else None).

    Memory: one (C, V) buffer besides the logits, kept in `scratch` across chunks and turned into
    the gradient in place; no other (C, V) temporary (on CPU a fresh buffer per chunk costs page
    faults comparable to the matmuls)."""
    e = _buffer(scratch, "exp", *logits.shape, logits.device)  # (C, V)
    peak = logits.amax(-1, keepdim=True)  # (C, 1)
    torch.sub(logits, peak, out=e).exp_()  # exp(z - max z)
    total = e.sum(-1)  # (C,)
    lse = peak.squeeze(-1) + torch.log(total)  # (C,)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # (C,)
    entropy = lse - torch.bmm(e.unsqueeze(1), logits.unsqueeze(2)).view(-1) / total  # H = lse - sum p z
    _, pg, dpg = surrogate(logp, old, adv, p)
    kl = torch.zeros_like(pg)
    g = dpg
    if ref is not None:
        kl, dkl = k3(logp, ref)
        g = g + p.kl_coef * dkl
    if not with_grad:
        return ChunkOut(logp, entropy, pg, kl), None
    g = w * g / p.temperature  # (C,) d loss / d logp, through the temperature
    e.mul_((-g / total).unsqueeze(-1))  # -g softmax(z)
    e.scatter_add_(-1, targets.unsqueeze(-1), g.unsqueeze(-1))  # + g onehot(y)
    return ChunkOut(logp, entropy, pg, kl), e


def _buffer(scratch: dict[str, torch.Tensor], name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """A (rows, cols) float32 buffer reused across chunks: the leading rows of the first chunk's."""
    buf = scratch.get(name)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.device != device:
        buf = scratch[name] = torch.empty(rows, cols, dtype=torch.float32, device=device)
    return buf[:rows]


def chunk_logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    scratch: dict[str, torch.Tensor],
) -> torch.Tensor:
    """(h W^T + b) / temperature, (C, V) float32; float32 inputs write into a reused buffer."""
    if h.dtype != torch.float32:
        logits = torch.nn.functional.linear(h, weight, bias).float()  # matmul in the input dtype
    else:
        logits = _buffer(scratch, "logits", h.shape[0], weight.shape[0], h.device)
        torch.mm(h, weight.t(), out=logits)
        if bias is not None:
            logits.add_(bias)
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def default_chunk_size(n_tokens: int, vocab: int) -> int:
    """Tokens per chunk: CHUNK_BYTES of float32 logits (~440 tokens at Qwen3's 151,936 vocabulary)."""
    return max(1, min(n_tokens, CHUNK_BYTES // (4 * vocab)))


class _ChunkedPolicyLoss(torch.autograd.Function):
    """Loss in forward; the gradients computed there too, scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, old, adv, ref, w, p, chunk_size, chunk_step, tokens_out):
        # hidden (N, H), weight (V, H), bias (V,) | None; targets, old, adv, ref, w: (N,)
        grad_h_on, grad_w_on = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_b_on = bias is not None and ctx.needs_input_grad[2]
        with_grad = grad_h_on or grad_w_on or grad_b_on
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if grad_h_on else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_w_on else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if grad_b_on else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scratch: dict[str, torch.Tensor] = {}
        for start in range(0, n, chunk_size):
            rows = slice(start, min(n, start + chunk_size))
            h = hidden[rows]  # (C, H)
            logits = chunk_logits(h, weight, bias, p.temperature, scratch)  # (C, V) float32
            out, grad_logits = chunk_step(
                logits,
                targets[rows],
                old[rows],
                adv[rows],
                None if ref is None else ref[rows],
                w[rows],
                p,
                with_grad,
                scratch,
            )
            loss += (w[rows] * (out.pg + p.kl_coef * out.kl)).sum()
            for name, value in zip(ChunkOut._fields, out):
                tokens_out[name][rows] = value
            if with_grad:
                _chunk_grads(grad_logits, h, weight, None if grad_h is None else grad_h[rows], grad_w, grad_b)
        del scratch
        ctx.backward_done = False
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
        )
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # The stored gradients are scaled in place (no second V x H buffer), so this runs once.
        if ctx.backward_done:
            raise RuntimeError("backward through fused_policy_loss can run only once (retain_graph is not supported)")
        ctx.backward_done = True
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if not _is_one(grad_loss):
            for g in (grad_h, grad_w, grad_b):
                if g is not None:
                    g.mul_(grad_loss.to(g.dtype))
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def _chunk_grads(
    grad_logits: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
    grad_b: torch.Tensor | None,
) -> None:
    """From d loss / d logits (C, V) float32: write d h (C, H), add to d W (V, H) and d b (V,) (float32)."""
    if grad_b is not None:
        grad_b += grad_logits.sum(0)
    grad_logits = grad_logits.to(weight.dtype)  # matmuls in the input dtype, as the reference's
    if grad_h is not None:
        torch.mm(grad_logits, weight, out=grad_h)  # (C, H)
    if grad_w is not None:
        _accumulate_grad_weight(grad_w, grad_logits, h)


def _accumulate_grad_weight(grad_w: torch.Tensor, grad_logits: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w (V, H) float32 += grad_logits^T (V, C) @ h (C, H); in place for float32 (no (V, H) temporary)."""
    if h.dtype == torch.float32:
        grad_w.addmm_(grad_logits.t(), h)
    else:
        grad_w += (grad_logits.t() @ h).float()


def _is_one(x: torch.Tensor) -> bool:
    """Skip the scaling when the incoming gradient is exactly 1 (checked on CPU only: no GPU sync)."""
    return x.device.type == "cpu" and bool(x == 1)


def policy_loss_chunked(
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
    chunk_size: int | None = None,
    chunk_step: ChunkStep = chunk_step_torch,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`policy_loss_ref`'s loss and metrics, in chunks of `chunk_size` tokens (default: ~256 MiB of
    float32 logits). Same arguments and shapes; `chunk_step` computes one chunk (torch or Triton)."""
    p = LossParams(clip_low, clip_high, kl_coef, temperature)
    b, t, h = hidden.shape
    n = b * t
    keep = mask.bool().reshape(n)
    w = token_weights(mask.bool(), aggregation).reshape(n)  # (N,)
    old, adv = _masked(old_logp.reshape(n), keep), _masked(advantages.reshape(n), keep)
    ref = _masked(ref_logp.reshape(n), keep) if (kl_coef and ref_logp is not None) else None
    c = chunk_size or default_chunk_size(n, weight.shape[0])
    tokens = {name: torch.empty(n, dtype=torch.float32, device=hidden.device) for name in ChunkOut._fields}
    loss = _ChunkedPolicyLoss.apply(
        hidden.reshape(n, h), weight, bias, targets.reshape(n).long(), old, adv, ref, w, p, c, chunk_step, tokens
    )
    ratio = torch.exp(tokens["logp"] - old)
    metrics = metrics_from_tokens(
        tokens["logp"], tokens["entropy"], tokens["pg"], tokens["kl"], ratio, old, adv, w, keep, p
    )
    return loss, metrics


@torch.no_grad()
def token_logprobs_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log p(target) per position without gradient and without (B, T, V) logits: (B, T, H) -> (B, T) float32.
    For the trainer's old and reference log-probs."""
    b, t, h = hidden.shape
    n = b * t
    flat, ids = hidden.reshape(n, h), targets.reshape(n).long()
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    c = chunk_size or default_chunk_size(n, weight.shape[0])
    for s in range(0, n, c):
        logits = torch.nn.functional.linear(flat[s : s + c], weight, bias).float() / temperature  # (C, V)
        out[s : s + c] = logits.gather(-1, ids[s : s + c].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return out.reshape(b, t)
