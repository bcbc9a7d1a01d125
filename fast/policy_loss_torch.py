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

Items. For A > 0 the clipped term is -A min(r, 1 + clip_high), for A < 0 it is -A max(r, 1 - clip_low),
so w (pg + kl_coef kl) is linear in (w A+, w A-, w) at a fixed r. The loss is therefore computed on
*items*: anything with one logp and one old_logp, carrying pos = sum w A+, neg = sum w A- and
weight = sum w over its tokens (`ItemTargets`). A token is an item; so is a prefix-tree node, whose
rows all share one log-prob and one ratio (proofs_notes/tree-forward.md, P4): the tree-form loss is
this same loss on the tree's nodes, and `surrogate` below is its one definition.

d loss / d logp_i = -(pos_i r_i [r_i <= 1 + clip_high] + neg_i r_i [r_i >= 1 - clip_low])
+ kl_coef weight_i (1 - exp(ref_i - logp_i)), and d logp_i / d z = onehot(y_i) - softmax(z): the
per-item coefficient is all the chunk step needs.
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
    """Per-item results of one chunk, all (C,) float32: log-prob, entropy, the item's clipped term
    (weighted: `surrogate`'s pg) and its k3 KL (unweighted)."""

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


class ItemTargets(NamedTuple):
    """What the loss needs of each item besides its log-prob, all (N,) float: the sampling policy's
    log-prob, pos = sum of w max(A, 0) and neg = sum of w min(A, 0) over the item's tokens, weight =
    sum of w (the KL term's weight), and the reference's log-prob (None without the KL term)."""

    old: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    weight: torch.Tensor
    ref: torch.Tensor | None

    def rows(self, sel: slice) -> "ItemTargets":
        return ItemTargets(*(None if t is None else t[sel] for t in self))


class ItemCounts(NamedTuple):
    """Token counts per item for the logged token means, (N,) float: tokens, and among them those
    with A > 0 (clipped above) and A < 0 (clipped below)."""

    tokens: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


def token_items(
    old_logp: torch.Tensor, adv: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, ref_logp: torch.Tensor | None
) -> tuple[ItemTargets, ItemCounts]:
    """Every token an item: (B, T) or (N,) inputs, all already 0 where the mask is 0."""
    m = mask.to(w.dtype)
    items = ItemTargets(old_logp, w * adv.clamp(min=0), w * adv.clamp(max=0), w, ref_logp)
    return items, ItemCounts(m, m * (adv > 0).to(m.dtype), m * (adv < 0).to(m.dtype))


def surrogate(logp: torch.Tensor, items: ItemTargets, p: LossParams):
    """(ratio, pg, d pg / d logp) per item: pg = -(pos min(r, 1 + clip_high) + neg max(r, 1 - clip_low)),
    the clipped surrogate summed over the item's tokens. pg is written with `where`, so autograd
    through it gives d pg / d logp (the unclipped branch carries the gradient, ties included)."""
    ratio = torch.exp(logp - items.old)
    hi, lo = 1.0 + p.clip_high, 1.0 - p.clip_low
    up, down = ratio <= hi, ratio >= lo  # where the ratio is not clipped, for each sign of A
    pg = -(items.pos * torch.where(up, ratio, hi) + items.neg * torch.where(down, ratio, lo))
    dpg = -(items.pos * torch.where(up, ratio, 0.0) + items.neg * torch.where(down, ratio, 0.0))
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


def item_metrics(out: ChunkOut, items: ItemTargets, counts: ItemCounts, p: LossParams) -> dict[str, torch.Tensor]:
    """The scalars the trainer logs, detached: the policy loss and KL as in the loss, and token means
    (over counts.tokens) of the clip fractions (low: A < 0 and r < 1 - clip_low; high: A > 0 and
    r > 1 + clip_high), k3 KL(old || new) and entropy. Per token or per node, the same numbers."""
    with torch.no_grad():
        ratio = torch.exp(out.logp - items.old)
        n = counts.tokens.sum().clamp(min=1)
        low = counts.negative * (ratio < 1.0 - p.clip_low).to(n.dtype)
        high = counts.positive * (ratio > 1.0 + p.clip_high).to(n.dtype)
        return {
            "policy_loss": out.pg.sum(),
            "kl": (items.weight * out.kl).sum(),
            "clip_fraction": (low + high).sum() / n,
            "clip_fraction_low": low.sum() / n,
            "clip_fraction_high": high.sum() / n,
            "approx_kl": (k3(out.logp, items.old)[0] * counts.tokens).sum() / n,
            "entropy": (out.entropy * counts.tokens).sum() / n,
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
    w = token_weights(keep, aggregation).to(dtype)  # (B, T)
    ref = _masked(ref_logp, keep, dtype) if kl_coef else None
    old, adv = _masked(old_logp, keep, dtype), _masked(advantages, keep, dtype)
    assert old is not None and adv is not None
    items, counts = token_items(old, adv, w, keep, ref)
    return items_loss(logp, items, counts, p, entropy=entropy)


def items_loss(
    logp: torch.Tensor,
    items: ItemTargets,
    counts: ItemCounts,
    p: LossParams,
    *,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and metrics from the items' log-probs (any shape, the items' shape), through autograd:
    sum of `surrogate`'s pg + kl_coef weight k3. `entropy` (same shape) only feeds the metric."""
    _, pg, _ = surrogate(logp, items, p)  # already weighted
    loss = pg.sum()
    kl = torch.zeros_like(pg)
    if items.ref is not None:
        kl = k3(logp, items.ref)[0]
        loss = loss + p.kl_coef * (items.weight * kl).sum()
    ent = torch.zeros_like(pg) if entropy is None else entropy
    return loss, item_metrics(ChunkOut(logp.detach(), ent, pg.detach(), kl.detach()), items, counts, p)


# ----------------------------------------------------------------------------- the chunked path
ChunkStep = Callable[..., tuple[ChunkOut, "torch.Tensor | None"]]


def chunk_step_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    items: ItemTargets,
    p: LossParams,
    with_grad: bool,
    scratch: dict[str, torch.Tensor],
) -> tuple[ChunkOut, torch.Tensor | None]:
    """One chunk: logits (C, V) float32, already divided by temperature; targets (C,) int64; items'
    tensors (C,) float32 -> (per-item results, and with_grad the (C, V) float32 d loss / d (h W^T + b),
    temperature included; else None).

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
    _, pg, g = surrogate(logp, items, p)
    kl = torch.zeros_like(pg)
    if items.ref is not None:
        kl, dkl = k3(logp, items.ref)
        g = g + p.kl_coef * items.weight * dkl
    if not with_grad:
        return ChunkOut(logp, entropy, pg, kl), None
    g = g / p.temperature  # (C,) d loss / d logp, through the temperature
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
    def forward(ctx, hidden, weight, bias, targets, items, p, chunk_size, chunk_step, tokens_out):
        # hidden (N, H), weight (V, H), bias (V,) | None; targets (N,); items: ItemTargets of (N,)
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
            chunk = items.rows(rows)
            out, grad_logits = chunk_step(logits, targets[rows], chunk, p, with_grad, scratch)
            loss += (out.pg + p.kl_coef * chunk.weight * out.kl).sum()
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
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


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
    """grad_w (V, H) += grad_logits^T (V, C) @ h (C, H); in place when h has grad_w's dtype (no (V, H)
    temporary)."""
    if h.dtype == grad_w.dtype:
        grad_w.addmm_(grad_logits.t(), h)
    else:
        grad_w += (grad_logits.t() @ h).to(grad_w.dtype)


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
    ref = _masked(ref_logp.reshape(n), keep) if (kl_coef and ref_logp is not None) else None
    old, adv = _masked(old_logp.reshape(n), keep), _masked(advantages.reshape(n), keep)
    assert old is not None and adv is not None
    items, counts = token_items(old, adv, w, keep, ref)
    return items_loss_chunked(
        hidden.reshape(n, h), weight, targets.reshape(n).long(), items, counts, p, bias, chunk_size, chunk_step
    )


def items_loss_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    items: ItemTargets,
    counts: ItemCounts,
    p: LossParams,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    chunk_step: ChunkStep = chunk_step_torch,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and metrics over N items (tokens, or prefix-tree nodes): hidden (N, H) at the position
    that predicts each item's target (N,) int64; items' and counts' tensors (N,) float32."""
    n = hidden.shape[0]
    c = chunk_size or default_chunk_size(n, weight.shape[0])
    tokens = {name: torch.empty(n, dtype=torch.float32, device=hidden.device) for name in ChunkOut._fields}
    loss = _ChunkedPolicyLoss.apply(hidden, weight, bias, targets, items, p, c, chunk_step, tokens)
    return loss, item_metrics(ChunkOut(**tokens), items, counts, p)


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


class _ChunkedLogprobs(torch.autograd.Function):
    """log p(target) per row of hidden (N, H) through the LM head in chunks of C rows, with gradient.
    With several chunks the backward recomputes each chunk's logits (one extra matmul) instead of
    keeping (N, V); a single chunk keeps its softmax for the backward. Logits and gradients are
    float32, float64 for float64 inputs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, entropy_out):
        n, dtype = hidden.shape[0], torch.promote_types(hidden.dtype, torch.float32)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        ctx.kept = None
        for s in range(0, n, chunk_size):
            z = torch.nn.functional.linear(hidden[s : s + chunk_size], weight, bias).to(dtype) / temperature  # (C, V)
            lse = torch.logsumexp(z, -1)  # (C,)
            logp[s : s + chunk_size] = z.gather(-1, targets[s : s + chunk_size, None])[:, 0] - lse
            if entropy_out is not None or n <= chunk_size:
                q = torch.exp(z.sub_(lse[:, None]))  # (C, V) softmax, over z's buffer
                if entropy_out is not None:
                    entropy_out[s : s + chunk_size] = -(q * z).sum(-1)
                if n <= chunk_size:
                    ctx.kept = q
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        c = ctx.chunk_size
        for s in range(0, hidden.shape[0], c):
            h = hidden[s : s + c]
            g = grad_logp[s : s + c].to(dtype) / ctx.temperature  # (C,)
            if ctx.kept is not None:
                q, ctx.kept = ctx.kept, None  # the single chunk's softmax, used once
            else:
                q = torch.softmax(torch.nn.functional.linear(h, weight, bias).to(dtype) / ctx.temperature, -1)
            grad_z = q.mul_(-g[:, None])  # (C, V) d/dz of g logp = g (onehot - softmax)
            grad_z.scatter_add_(-1, targets[s : s + c, None], g[:, None])
            _chunk_grads(grad_z, h, weight, None if grad_h is None else grad_h[s : s + c], grad_w, grad_b)
        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def token_logprobs_with_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(target) (N,) with gradient to hidden, weight and bias; entropy (N,) without gradient, or
    None) from hidden (N, H) and the LM head, never holding more than a chunk of (N, V) logits.
    float32 (float64 for float64 inputs)."""
    n, dtype = hidden.shape[0], torch.promote_types(hidden.dtype, torch.float32)
    entropy = torch.empty(n, dtype=dtype, device=hidden.device) if with_entropy else None
    c = chunk_size or default_chunk_size(n, weight.shape[0])
    logp = _ChunkedLogprobs.apply(hidden, weight, bias, targets.long(), float(temperature), c, entropy)
    return logp, entropy
