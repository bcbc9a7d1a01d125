"""The chunked policy loss with a Triton chunk step: log-softmax, surrogate, k3 KL and d loss / d logits
of a (C, V) chunk of logits in two streaming passes, the gradient written over the logits in place.

What is Triton and what is not: the three matmuls per chunk (logits = h W^T + b, d hidden = G W,
d weight += G^T h) stay in torch (cuBLAS on GPU); `_chunk_kernel` replaces the elementwise and
reduction work between them, which torch does in ~6 passes over (C, V) with one extra (C, V)
buffer, by 2 passes (read; read + write) and no extra buffer. The chunk loop, the autograd wiring
and the definition are `policy_loss_torch`'s (same numbers up to float32 rounding order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .policy_loss_torch import ChunkOut, ItemTargets, LossParams, policy_loss_chunked

__all__ = ["chunk_step_triton", "policy_loss_triton"]


@triton.jit
def _chunk_kernel(
    # pointers
    logits_ptr,
    targets_ptr,
    old_ptr,
    pos_ptr,
    neg_ptr,
    ref_ptr,
    weight_ptr,
    logp_ptr,
    entropy_ptr,
    pg_ptr,
    kl_ptr,
    # sizes and strides
    vocab,
    stride_row,
    # scalars
    clip_low,
    clip_high,
    kl_coef,
    inv_temperature,
    # constexpr
    HAS_REF: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)

    # Pass 1, online over V: running max m, s = sum exp(z - m), t = sum exp(z - m) z.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        inside = start + cols < vocab
        z = tl.load(base + start + cols, mask=inside, other=float("-inf"))  # (BV,)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.where(inside, tl.exp(z - m_new), 0.0)
        s = s * scale + tl.sum(e, axis=0)
        t = t * scale + tl.sum(e * tl.where(inside, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(targets_ptr + row)
    logp = tl.load(base + target) - lse

    # Per item: ratio, clipped surrogate (pos = sum w A+, neg = sum w A-) and its derivative,
    # `policy_loss_torch.surrogate`.
    old = tl.load(old_ptr + row)
    pos = tl.load(pos_ptr + row)
    neg = tl.load(neg_ptr + row)
    ratio = tl.exp(logp - old)
    up = ratio <= 1.0 + clip_high
    down = ratio >= 1.0 - clip_low
    pg = -(pos * tl.where(up, ratio, 1.0 + clip_high) + neg * tl.where(down, ratio, 1.0 - clip_low))
    g = -(pos * tl.where(up, ratio, 0.0) + neg * tl.where(down, ratio, 0.0))
    kl = 0.0
    if HAS_REF:
        log_r = tl.load(ref_ptr + row) - logp
        r = tl.exp(log_r)
        kl = r - log_r - 1.0
        g += kl_coef * tl.load(weight_ptr + row) * (1.0 - r)
    tl.store(logp_ptr + row, logp)
    tl.store(entropy_ptr + row, lse - t / s)
    tl.store(pg_ptr + row, pg)
    tl.store(kl_ptr + row, kl)

    # Pass 2: d loss / d (raw logits) = g (onehot(y) - softmax) / temperature, over the logits.
    if WITH_GRAD:
        g = g * inv_temperature
        for start in range(0, vocab, BLOCK_V):
            inside = start + cols < vocab
            z = tl.load(base + start + cols, mask=inside, other=0.0)
            grad = -g * tl.exp(z - lse) + tl.where(start + cols == target, g, 0.0)
            tl.store(base + start + cols, grad, mask=inside)


def chunk_step_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    items: ItemTargets,
    p: LossParams,
    with_grad: bool,
    scratch: dict | None = None,
    block_v: int | None = None,
) -> tuple[ChunkOut, torch.Tensor | None]:
    """`policy_loss_torch.chunk_step_torch` with one kernel launch: logits (C, V) float32 with unit
    column stride, targets (C,) int64, items' tensors (C,) float32; needs no scratch buffer
    (the gradient overwrites the logits). One program per item
    streams its row in BLOCK_V columns (default: up to 4096; tests pass small ones to cross blocks)."""
    c, vocab = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("logits must be float32 with unit column stride")
    out = ChunkOut(*(torch.empty(c, dtype=torch.float32, device=logits.device) for _ in ChunkOut._fields))
    block_v = block_v or min(4096, triton.next_power_of_2(vocab))
    old = items.old.contiguous()
    _chunk_kernel[(c,)](
        logits,
        targets.contiguous(),
        old,
        items.pos.contiguous(),
        items.neg.contiguous(),
        old if items.ref is None else items.ref.contiguous(),
        items.weight.contiguous(),
        out.logp,
        out.entropy,
        out.pg,
        out.kl,
        vocab,
        logits.stride(0),
        float(p.clip_low),
        float(p.clip_high),
        float(p.kl_coef),
        1.0 / float(p.temperature),
        HAS_REF=items.ref is not None,
        WITH_GRAD=with_grad,
        BLOCK_V=block_v,
    )
    return out, logits if with_grad else None


def policy_loss_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, dict]:
    """`policy_loss_chunked` (same arguments) with the Triton chunk step."""
    return policy_loss_chunked(
        hidden, weight, targets, old_logp, advantages, mask, chunk_step=chunk_step_triton, **kwargs
    )
