"""Packing a batch into its prefix trie, and attention over the packed trie, in vectorised torch.

A batch of B rows (prompt tokens where prompt_mask is 1, then the completion up to its last
masked token) is a set of token sequences s_r. Their trie has one node per distinct prefix; a node's
position is its depth. `pack` lists the nodes in depth-first preorder with children in ascending
token order, which is the order of the rows sorted lexicographically, each row contributing the
nodes below its longest common prefix with the previous sorted row (proofs_notes/tree-forward.md,
Proposition P1). `reference/tree_forward.py` builds the same arrays with a Python trie.

Attention over the packed nodes (`tree_attention`) gives every node exactly the attention it has in
its own row: its keys are its ancestors and itself. Sorted row i *owns* the nodes it contributes,
a contiguous run of the packed order at depths [l_i, L_i) (P2), a *segment*; its queries attend to
the row's path above it without a mask and to the segment itself causally (P3). Each node is a
query once and each (query, visible key) pair is computed once, so attention costs sum over nodes of
(depth + 1) instead of sum_i L_i (L_i + 1) / 2 for the rows one by one, and every other layer
(projections, MLP, norms) runs once per node instead of once per row. What the backward keeps is
linear in the nodes (no path copies, no probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .policy_loss_torch import ItemCounts, ItemTargets
from .tree_attention import subtree_end, tree_attention_dfs


@dataclass
class Packing:
    """The trie of a batch. N nodes, B rows, T completion positions; all tensors int64 on one device.

    tokens:  (N,) token of each node.                 depth: (N,) its position (0 = first token).
    parent:  (N,) parent node, -1 for a root.          completion_node: (B, T) the node of each
             completion position (-1 past the row's last masked position).
    row_nodes: (B, S) the node of each position of each row's sequence s_r, -1 past its end.
    The rest is the attention plan, rows in sorted order: `order` (B,) sorted position -> row,
    `lcp` (B,) prefix shared with the previous sorted row, `length` (B,) |s_r| by sorted position,
    `start` (B,) first owned node (nodes start..start + length - lcp - 1 belong to that row).
    """

    tokens: torch.Tensor
    depth: torch.Tensor
    parent: torch.Tensor
    completion_node: torch.Tensor
    row_nodes: torch.Tensor
    order: torch.Tensor
    lcp: torch.Tensor
    length: torch.Tensor
    start: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.numel())


def completion_lengths(completion_mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: index of each row's last masked position + 1 (0 for an empty row). Positions
    before it with mask 0 are context (a tool's output inside the response), not padding."""
    m = completion_mask.to(torch.bool)
    t = m.shape[1]
    last = torch.where(m, torch.arange(1, t + 1, device=m.device), 0)  # (B, T)
    return last.amax(dim=1) if t else torch.zeros(m.shape[0], dtype=torch.int64, device=m.device)


def row_sequences(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seq (B, S) int64, prompt length (B,), sequence length (B,)): each row's prompt tokens where
    prompt_mask is 1, in order, then its completion up to `completion_lengths`; -1 past the end."""
    pm = prompt_mask.to(torch.bool)
    p_len = pm.sum(dim=1)  # (B,)
    c_len = completion_lengths(completion_mask)
    # Stable sort puts each row's prompt tokens first, in their order, whatever side the padding is.
    first = torch.argsort((~pm).to(torch.int8), dim=1, stable=True)  # (B, P)
    prompt = prompt_ids.long().gather(1, first)  # (B, P), real tokens left-aligned
    seq = torch.cat([prompt, completion_ids.long()], dim=1)  # (B, P + T)
    lengths = p_len + c_len
    b, s = seq.shape
    col = torch.arange(s, device=seq.device)
    # Completion token j sits at column P + j; after the prompt's p_len tokens it belongs at p_len + j.
    src = torch.where(col[None, :] < p_len[:, None], col[None, :], col[None, :] - p_len[:, None] + prompt.shape[1])
    seq = seq.gather(1, src.clamp(max=s - 1))
    seq = torch.where(col[None, :] < lengths[:, None], seq, -1)
    width = int(lengths.max()) if b else 0
    return seq[:, :width], p_len, lengths


def lexicographic_order(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B,) the rows in lexicographic order of their sequences (a prefix before its extensions;
    ties keep row order). One host sort of the B rows: O(sum of lengths) comparisons at most."""
    rows = [tuple(r[:n]) for r, n in zip(seq.tolist(), lengths.tolist())]
    return torch.tensor(sorted(range(len(rows)), key=rows.__getitem__), dtype=torch.int64, device=seq.device)


def pack(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> Packing:
    """The trie of the batch (see the module docstring). prompt_*: (B, P); completion_*: (B, T)."""
    seq, p_len, lengths = row_sequences(prompt_ids, prompt_mask, completion_ids, completion_mask)
    b, s = seq.shape
    dev = seq.device
    order = lexicographic_order(seq, lengths)
    sseq, slen = seq[order], lengths[order]  # (B, S), (B,) in sorted order
    # lcp with the previous sorted row: the first column where they differ (or one of them ends).
    same = (sseq[1:] == sseq[:-1]) & (sseq[1:] >= 0)  # (B - 1, S); -1 padding never matches
    lcp = torch.cat([torch.zeros(min(b, 1), dtype=torch.int64, device=dev), same.to(torch.int64).cumprod(1).sum(1)])
    own = slen - lcp  # (B,) nodes each sorted row contributes
    start = torch.cumsum(own, 0) - own  # (B,)
    depth = torch.arange(s, device=dev)  # (S,)
    # Node (i, d) belongs to the last sorted row j <= i with lcp_j <= d: rows between share it.
    rows = torch.arange(b, device=dev)
    owner = torch.where(lcp[:, None] <= depth[None, :], rows[:, None], 0).cummax(dim=0).values  # (B, S)
    node = start[owner] + depth[None, :] - lcp[owner]  # (B, S)
    valid = depth[None, :] < slen[:, None]
    node = torch.where(valid, node, -1)
    n = int(own.sum())
    new = valid & (depth[None, :] >= lcp[:, None])  # the N owned (row, depth) pairs
    tokens = torch.empty(n, dtype=torch.int64, device=dev)
    tokens[node[new]] = sseq[new]
    node_depth = torch.empty(n, dtype=torch.int64, device=dev)
    node_depth[node[new]] = depth.expand(b, s)[new]
    prev = torch.cat([torch.full((b, 1), -1, dtype=torch.int64, device=dev), node[:, :-1]], dim=1)
    parent = torch.empty(n, dtype=torch.int64, device=dev)
    parent[node[new]] = prev[new]
    row_nodes = torch.empty_like(node)
    row_nodes[order] = node
    t = completion_ids.shape[1]
    col = p_len[:, None] + torch.arange(t, device=dev)[None, :]  # (B, T) sequence column
    completion_node = torch.full_like(col, -1)
    if s:
        in_row = col < lengths[:, None]
        completion_node = torch.where(in_row, row_nodes.gather(1, col.clamp(max=s - 1)), -1)
    return Packing(tokens, node_depth, parent, completion_node, row_nodes, order, lcp, slen, start)


# ----------------------------------------------------------------------------- attention
@dataclass
class AttentionPlan:
    """The segments of a packing, computed once per packing and shared by every layer.

    Segment i is sorted row i's owned nodes (P2): the run segment_start[i] .. + segment_length[i] of the
    packed order, at depths lcp_i .. L_i - 1. Its queries attend to its ancestors, the nodes of row
    i's path at depths 0 .. lcp_i - 1 (`ancestors[i]`, (lcp_i,) int64), and causally to itself.
    Rows that own no node (a copy of an earlier row) have no segment.
    """

    segment_start: list[int]
    segment_length: list[int]
    ancestors: list[torch.Tensor]
    num_nodes: int
    parent: torch.Tensor  # (N,) the packing's parents: the "dfs" kernel reads the layout from them
    _subtree_end: torch.Tensor | None = None

    def subtree_end(self) -> torch.Tensor:
        """(N,) int64 one past each node's subtree in the packed (preorder) order; computed once per
        plan, so every layer of a forward shares it."""
        if self._subtree_end is None:
            self._subtree_end = subtree_end(self.parent)
        return self._subtree_end


def attention_plan(p: Packing) -> AttentionPlan:
    """The segments of `p` (see `AttentionPlan`): one slice of the sorted rows' node table each."""
    own = (p.length - p.lcp).tolist()
    lcp, start = p.lcp.tolist(), p.start.tolist()
    sorted_nodes = p.row_nodes[p.order]  # (B, S) by sorted position
    keep = [i for i, n in enumerate(own) if n > 0]
    return AttentionPlan(
        [start[i] for i in keep],
        [own[i] for i in keep],
        [sorted_nodes[i, : lcp[i]] for i in keep],
        p.num_nodes,
        p.parent,
    )


# A kernel is (forward, backward) over one batch of heads:
#   forward(q (1, H, n, D), k (1, H, m, D), v (1, H, m, Dv), causal, scale) -> (out (1, H, n, Dv), lse (1, H, n))
#   backward(grad_out, q, k, v, out, lse, causal, scale) -> (dq, dk, dv)
# where `causal` means square and lower-left aligned (key j visible to query i iff j <= i), and the
# backward takes the *final* output and log-sum-exp of a row whose keys were split across several
# calls: then it returns exactly that call's share of the gradient (the split FlashAttention's
# backward relies on: P = exp(S - lse) and the row term sum(dO * O) are the whole row's).
def _flash_cpu_forward(q, k, v, causal: bool, scale: float):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def _flash_cpu_backward(grad, q, k, v, out, lse, causal: bool, scale: float):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, q, k, v, out, lse, 0.0, causal, scale=scale
    )


MATH_CHUNK = 1024  # queries per step of the math kernel: bounds its (H, chunk, m) score matrix


def _math_scores(q, k, q0: int, causal: bool, scale: float) -> torch.Tensor:
    s = (q @ k.transpose(-1, -2)) * scale  # (1, H, c, m)
    if causal:
        rows = torch.arange(q0, q0 + q.shape[2], device=q.device)[:, None]
        s = s.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > rows, -math.inf)
    return s


def _math_forward(q, k, v, causal: bool, scale: float):
    outs, lses = [], []
    for q0 in range(0, q.shape[2], MATH_CHUNK):
        s = _math_scores(q[:, :, q0 : q0 + MATH_CHUNK], k, q0, causal, scale)  # (1, H, c, m)
        lse = s.logsumexp(-1)  # (1, H, c)
        outs.append(torch.exp(s - lse[..., None]) @ v)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _math_backward(grad, q, k, v, out, lse, causal: bool, scale: float):
    dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for q0 in range(0, q.shape[2], MATH_CHUNK):
        c = slice(q0, q0 + MATH_CHUNK)
        qc, g = q[:, :, c], grad[:, :, c]
        prob = torch.exp(_math_scores(qc, k, q0, causal, scale) - lse[:, :, c, None])  # (1, H, c, m)
        dv += prob.transpose(-1, -2) @ g
        ds = prob * (g @ v.transpose(-1, -2) - (g * out[:, :, c]).sum(-1, keepdim=True))
        dq[:, :, c] = (ds @ k) * scale
        dk += (ds.transpose(-1, -2) @ qc) * scale
    return dq, dk, dv


KERNELS = {"flash_cpu": (_flash_cpu_forward, _flash_cpu_backward), "math": (_math_forward, _math_backward)}
# "dfs": the whole tree in one call of `fast/tree_attention.tree_attention_dfs` (Triton on CUDA; on CPU
# only under TRITON_INTERPRET=1), no segments, no gathered ancestors.
KERNEL_NAMES = (*KERNELS, "dfs")


def default_kernel(device: torch.device) -> str:
    """torch's CPU flash kernel on CPU (keeps only the output and the log-sum-exp); the Triton tree
    kernel on CUDA (no mask, no path copies, O(N) kept for the backward: P6); elsewhere the chunked
    math kernel, exact and bounded but not fast."""
    return {"cpu": "flash_cpu", "cuda": "dfs"}.get(device.type, "math")


def tree_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: AttentionPlan,
    *,
    scale: float,
    kernel: str | None = None,
) -> torch.Tensor:
    """Attention of every packed node over its ancestors and itself (proofs_notes/tree-forward.md, P3).

    query: (H, N, D); key, value: (Hk, N, D) with H a multiple of Hk (query head h reads key head
    h // (H / Hk), as Hugging Face's grouped-query attention does). Returns (N, H, Dv).

    Each segment's attention is split in two key sets: its ancestors (no mask: every one is visible
    to every query of the segment) and itself (causal, square), each run by a kernel that returns
    the log-sum-exp, and merged by it. Work: each (query, visible key) pair once. Memory kept for
    the backward: the inputs, the output and the (H, N) log-sum-exp; the ancestors' keys and values
    are gathered per segment and again in the backward, never stored."""
    name = kernel or default_kernel(query.device)
    if name not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    if name == "dfs":
        return tree_attention_dfs(query, key, value, plan.subtree_end(), scale=scale)
    fwd, bwd = KERNELS[name]
    return _TreeAttention.apply(query, key, value, plan, scale, fwd, bwd)


class _TreeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, plan, scale, fwd, bwd):
        h, n, _ = query.shape
        # laid out (N, H, Dv) so the caller's reshape to (N, H Dv) is a view: the output projection then
        # keeps the very tensor saved here, not a second copy of it
        out = query.new_empty(n, h, value.shape[-1]).transpose(0, 1)  # (H, N, Dv)
        lse = query.new_empty(h, n, dtype=torch.promote_types(query.dtype, torch.float32))  # (H, N)
        for seg in _segments(query, key, value, plan):
            o, l = fwd(seg.q, seg.k, seg.v, True, scale)  # itself, causal: (1, H, n, Dv), (1, H, n)
            if seg.anc_k is not None:
                oa, la = fwd(_fold(seg.q, seg.groups), seg.anc_k, seg.anc_v, False, scale)  # the ancestors
                oa, la = _unfold(oa, seg.groups), _unfold(la[..., None], seg.groups)[..., 0]
                o, l = _merge(o, l, oa, la)
            out[:, seg.rows] = o[0]
            lse[:, seg.rows] = l[0]
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.plan, ctx.scale, ctx.bwd = plan, scale, bwd
        return out.transpose(0, 1)  # (N, H, Dv)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        query, key, value, out, lse = ctx.saved_tensors
        grad = grad.transpose(0, 1)  # (H, N, Dv)
        dq, dk, dv = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        for seg in _segments(query, key, value, ctx.plan):
            g, o, l = grad[None, :, seg.rows], out[None, :, seg.rows], lse[None, :, seg.rows]
            sq, sk, sv = ctx.bwd(g, seg.q, seg.k, seg.v, o, l, True, ctx.scale)
            dq[:, seg.rows] += sq[0]
            dk[:, seg.rows] += _sum_groups(sk[0], seg.groups)
            dv[:, seg.rows] += _sum_groups(sv[0], seg.groups)
            if seg.anc_k is not None:
                folded = [_fold(x, seg.groups) for x in (g, seg.q, o)]
                la = _fold(l[..., None], seg.groups)[..., 0]
                aq, ak, av = ctx.bwd(folded[0], folded[1], seg.anc_k, seg.anc_v, folded[2], la, False, ctx.scale)
                dq[:, seg.rows] += _unfold(aq, seg.groups)[0]
                dk.index_add_(1, seg.ancestors, ak[0])
                dv.index_add_(1, seg.ancestors, av[0])
        return dq, dk, dv, None, None, None, None


@dataclass
class _Segment:
    rows: slice  # its nodes in the packed order
    groups: int  # query heads per key head
    q: torch.Tensor  # (1, H, n, D)
    k: torch.Tensor  # (1, H, n, D): its own keys, repeated per query head for the causal kernel
    v: torch.Tensor  # (1, H, n, Dv)
    ancestors: torch.Tensor  # (m,) nodes
    anc_k: torch.Tensor | None  # (1, Hk, m, D), None for a root segment
    anc_v: torch.Tensor | None


def _segments(query, key, value, plan: AttentionPlan):
    """The segments' operands, one at a time: only one segment's copies live at once."""
    groups = query.shape[0] // key.shape[0]
    for s0, n, anc in zip(plan.segment_start, plan.segment_length, plan.ancestors):
        rows = slice(s0, s0 + n)
        k, v = (x[:, rows].repeat_interleave(groups, dim=0)[None] for x in (key, value))  # (1, H, n, D)
        has = anc.numel() > 0
        anc_k, anc_v = (x.index_select(1, anc)[None] if has else None for x in (key, value))  # (1, Hk, m, D)
        yield _Segment(rows, groups, query[None, :, rows], k, v, anc, anc_k, anc_v)


def _fold(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(1, H, n, D) -> (1, Hk, G n, D): a key head's G query heads as one longer run of queries (no mask
    ties a query to its position, so the ancestors' attention needs no repeated keys)."""
    _, h, n, d = x.shape
    return x.reshape(1, h // groups, groups * n, d)


def _unfold(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(1, Hk, G n, D) -> (1, H, n, D), the inverse of `_fold`."""
    _, hk, gn, d = x.shape
    return x.reshape(1, hk * groups, gn // groups, d)


def _sum_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(H, n, D) gradient of repeated keys -> (Hk, n, D), each key head's query heads summed."""
    h, n, d = x.shape
    return x.view(h // groups, groups, n, d).sum(1) if groups > 1 else x


def _merge(o1, l1, o2, l2):
    """Attention over the union of two disjoint key sets from each set's output and log-sum-exp."""
    lse = torch.logaddexp(l1, l2)  # (1, H, n)
    w1, w2 = torch.exp(l1 - lse)[..., None], torch.exp(l2 - lse)[..., None]
    return (o1 * w1 + o2 * w2).to(o1.dtype), lse


# ----------------------------------------------------------------------------- the loss on nodes
def node_items(
    completion_node: torch.Tensor,
    scored: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    ref_logp: torch.Tensor | None,
) -> tuple[torch.Tensor, ItemTargets, ItemCounts]:
    """Group a batch's scored tokens into loss items: one per (node, old log-prob, reference log-prob).

    Rows through one node share its log-prob; when they also share old_logp and ref_logp (as they do
    when those come from a tree forward too) they share its ratio and KL, so their clipped terms add up
    to one node term (proofs_notes/tree-forward.md, P4). Values that differ split the node into
    several items, so the sum stays exact for any inputs.

    completion_node: (B, T) int64 node of each position (`Packing.completion_node`); scored: (B, T)
    bool; old_logp, advantages, weights (the aggregation's token weights), ref_logp: (B, T) float,
    finite where scored. Returns item_node (U,) int64 (each item's node), the items' `ItemTargets` and
    `ItemCounts` (U,) in weights' dtype."""
    dtype = weights.dtype
    node = completion_node[scored]  # (M,)
    old = old_logp[scored].to(dtype)
    ref = None if ref_logp is None else ref_logp[scored].to(dtype)
    adv, w = advantages[scored].to(dtype), weights[scored]
    keys = [node, _bits(old)] + ([] if ref is None else [_bits(ref)])
    uniq, item = torch.unique(torch.stack(keys, dim=1), dim=0, return_inverse=True)  # (U, k), (M,)
    u = uniq.shape[0]

    def total(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(u, dtype=dtype, device=x.device).index_add_(0, item, x.to(dtype))

    first = torch.empty(u, dtype=torch.int64, device=node.device)
    first[item] = torch.arange(item.numel(), device=node.device)  # any token of the item: all share its values
    targets = ItemTargets(
        old[first],
        total(w * adv.clamp(min=0)),
        total(w * adv.clamp(max=0)),
        total(w),
        None if ref is None else ref[first],
    )
    counts = ItemCounts(total(torch.ones_like(w)), total((adv > 0).to(dtype)), total((adv < 0).to(dtype)))
    return uniq[:, 0], targets, counts


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The float's bit pattern as int64, so equal values (and only they) compare equal."""
    if x.dtype == torch.float64:
        return x.view(torch.int64)
    return x.to(torch.float32).view(torch.int32).to(torch.int64)
