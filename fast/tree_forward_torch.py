"""Packing a batch into its prefix trie, and attention over the packed trie, in vectorised torch.

A batch of B rows (prompt tokens where prompt_mask is 1, then the completion up to its last
masked token) is a set of token sequences s_r. Their trie has one node per distinct prefix; a node's
position is its depth. `pack` lists the nodes in depth-first preorder with children in ascending
token order, which is the order of the rows sorted lexicographically, each row contributing the
nodes below its longest common prefix with the previous sorted row (proofs_notes/tree-forward.md,
Proposition P1). `reference/tree_forward.py` builds the same arrays with a Python trie.

Attention over the packed nodes (`tree_attention`) gives every node exactly the attention it has in
its own row: its keys are its ancestors and itself. Sorted row i *owns* the nodes it contributes,
a contiguous run of the packed order at depths [l_i, L_i) (P2); their queries attend to the row's
path, keys at depths [0, L_i), causally. Each node is a query once, so attention costs
sum_i (L_i - l_i) * L_i instead of sum_i L_i^2 / 2 for the rows one by one, and every other layer
(projections, MLP, norms) runs once per node instead of once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .policy_loss_torch import ItemCounts, ItemTargets


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
    """Query blocks for `tree_attention`, computed once per packing and shared by every layer.

    The blocks are cut into buckets; bucket b holds A_b blocks of up to Q_b queries over up to K_b keys.
    key_index: (sum_b A_b K_b,) the nodes each block reads as keys (its row's path up to its last
    query; padding reads node 0 and is masked); query_index: (sum_b A_b Q_b,) each block's query
    nodes (padding reads node 0, its output is dropped); masks[b]: (A_b, 1, Q_b, K_b) bool, key
    depth <= query depth on real keys; shapes[b] = (A_b, Q_b, K_b); output_slot: (N,) where each
    node's output sits in the blocks' concatenated query slots (every node is a query exactly once).
    """

    key_index: torch.Tensor
    query_index: torch.Tensor
    masks: list[torch.Tensor]
    shapes: list[tuple[int, int, int]]
    output_slot: torch.Tensor
    num_nodes: int


def attention_plan(p: Packing, *, block: int = 64, waste: float = 1.25) -> AttentionPlan:
    """Cut each row's owned queries into blocks of `block`; a block's keys are its row's path up to its
    last query, so only the block's own triangle is masked work (as a causal kernel skips the upper
    triangle). Blocks are bucketed longest-keys first; a bucket grows while (blocks x max queries x
    max keys) stays within `waste` x the blocks' own queries x keys. The bound keeps padding from eating
    the saving; few buckets keep the kernel calls few."""
    own = (p.length - p.lcp).tolist()
    lcp, start = p.lcp.tolist(), p.start.tolist()
    items = []  # (keys, queries, first query depth, first query node, sorted row)
    for i, n in enumerate(own):
        for q0 in range(0, n, block):
            q = min(block, n - q0)
            items.append((lcp[i] + q0 + q, q, lcp[i] + q0, start[i] + q0, i))
    items.sort(key=lambda it: (-it[0], -it[1]))
    buckets: list[list[tuple[int, int, int, int, int]]] = []
    exact = 0
    for it in items:
        cost = it[0] * it[1]
        if buckets:
            cur = buckets[-1]
            padded = (len(cur) + 1) * max(cur[0][1], it[1]) * cur[0][0]
            if padded <= waste * (exact + cost):
                cur.append(it)
                exact += cost
                continue
        buckets.append([it])
        exact = cost
    dev = p.tokens.device
    sorted_nodes = p.row_nodes[p.order]  # (B, S) by sorted position
    key_index, query_index, slots, masks, shapes = [], [], [], [], []
    offset = 0
    for bucket in buckets:
        k_len, q_len, q_depth0, q_node0, rows = (torch.tensor(c, dtype=torch.int64, device=dev) for c in zip(*bucket))
        a, k, q = len(bucket), int(k_len.max()), int(q_len.max())
        cols = torch.arange(k, device=dev)
        k_ok = cols[None, :] < k_len[:, None]  # (A, K)
        keys = torch.where(k_ok, sorted_nodes[rows, :k], 0)  # (A, K)
        offs = torch.arange(q, device=dev)
        q_ok = offs[None, :] < q_len[:, None]  # (A, Q); a block's queries are contiguous nodes
        q_depth = torch.where(q_ok, q_depth0[:, None] + offs[None, :], 0)  # (A, Q); padding sees the root
        key_index.append(keys.reshape(-1))
        query_index.append(torch.where(q_ok, q_node0[:, None] + offs[None, :], 0).reshape(-1))
        masks.append(((cols[None, None, :] <= q_depth[:, :, None]) & k_ok[:, None, :])[:, None])  # (A, 1, Q, K)
        shapes.append((a, q, k))
        slot = offset + torch.arange(a * q, device=dev).view(a, q)
        slots.append((torch.where(q_ok, q_node0[:, None] + offs[None, :], -1)[q_ok], slot[q_ok]))
        offset += a * q
    output_slot = torch.empty(p.num_nodes, dtype=torch.int64, device=dev)
    for nodes, slot in slots:
        output_slot[nodes] = slot
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    return AttentionPlan(
        torch.cat(key_index) if key_index else empty,
        torch.cat(query_index) if query_index else empty,
        masks,
        shapes,
        output_slot,
        p.num_nodes,
    )


def tree_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: AttentionPlan, *, scale: float, dropout: float
) -> torch.Tensor:
    """Attention of every packed node over its ancestors and itself.

    query: (H, N, D); key, value: (Hk, N, D) with H a multiple of Hk (grouped-query heads share keys).
    Returns (N, H, D). One gather of queries, keys and values for all blocks and one scatter of the
    outputs per call (their backward is one index_add each), the blocks' attention in between."""
    h, _, d = query.shape
    hk, dv = key.shape[0], value.shape[-1]
    # split (not slicing) so the backward concatenates the blocks' gradients instead of adding one
    # zero-padded full-size gradient per bucket
    k_sizes = [a * k for a, _, k in plan.shapes]
    q_sizes = [a * q for a, q, _ in plan.shapes]
    kks = key.index_select(1, plan.key_index).split(k_sizes, dim=1)  # (Hk, A K, D) per bucket
    vvs = value.index_select(1, plan.key_index).split(k_sizes, dim=1)
    qqs = query.index_select(1, plan.query_index).split(q_sizes, dim=1)  # (H, A Q, D) per bucket
    outs = []
    for (a, q, k), mask, qq, kk, vv in zip(plan.shapes, plan.masks, qqs, kks, vvs):
        qb = qq.view(h, a, q, d).transpose(0, 1)  # (A, H, Q, D)
        kb = kk.view(hk, a, k, d).transpose(0, 1)  # (A, Hk, K, D)
        vb = vv.view(hk, a, k, dv).transpose(0, 1)
        o = torch.nn.functional.scaled_dot_product_attention(
            qb, kb, vb, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=hk != h
        )  # (A, H, Q, Dv)
        outs.append(o.transpose(1, 2).reshape(a * q, h, dv))
    return torch.cat(outs).index_select(0, plan.output_slot)  # (N, H, Dv)


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
