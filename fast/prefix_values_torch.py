"""Prefix values in vectorised torch, from the lcp matrix: no trie.

For response i of a group the members of y_i[:t] are {k : lcp(i, k) >= t} (Lemma 1 of
proofs_notes/fast-algorithm.md), and token t < n_i is a branch token iff t = lcp(i, k) for some k
(Lemma 2). So the G values lcp(i, .) give row i's branch tokens, and at each of them the child
y_i[:t+1] has the members {k : lcp(i, k) > t}: its count, its mean reward and its first member.
Between branch tokens the member set, so V, is constant: the output is compressed into *runs*
(see `reference/prefix_values.py`, the oracle).

Sums are float64, sequential over a group's members in member order (batch invariant, like the
advantage kernels), over centred rewards: V = mu + mean(R_k - mu), which keeps the spread's
precision when |R| >> max R - min R. Cost per group: G(G-1)/2 * L token comparisons for the lcp
matrix, O(G^3) for the sums; O(B * L) nowhere (the compact form has at most G runs per row).

A leaf: plain tensors in, plain tensors out; nothing from the package that calls it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._groups import GroupLayout
from .advantage_torch import lcp_matrix

# Rows whose tokens one lcp step compares at once; bounds temporaries to a few tens of MB.
_CHUNK_ELEMENTS = 1 << 24


class Runs(NamedTuple):
    """The compact prefix values of a batch (P branch tokens in all, B rows).

    branch_offsets: (B + 1,) int64, row i's branch tokens are branch_t[branch_offsets[i]:branch_offsets[i+1]].
    branch_t: (P,) int64 token positions, ascending within a row.
    run_value, run_count, run_first: (P + B,) float64 / int64 / int64, row i's J_i + 1 runs at
        [branch_offsets[i] + i, branch_offsets[i + 1] + i + 1): V, |Members| and the smallest batch
        row among the members; run 0 is the root's (the whole group), run j starts after t_j.
    """

    branch_offsets: torch.Tensor
    branch_t: torch.Tensor
    run_value: torch.Tensor
    run_count: torch.Tensor
    run_first: torch.Tensor


def _chunks(layout: GroupLayout, length: int) -> list[torch.Tensor]:
    """Member rows (c, G) of groups of one size per chunk, memory bounded."""
    chunks = []
    for size, groups in layout.by_size():
        # Per group: G x L tokens for the lcp matrix, G x G per member step for the sums.
        per_chunk = max(1, _CHUNK_ELEMENTS // (size * max(length, size, 1)))
        for start in range(0, groups.numel(), per_chunk):
            chunks.append(layout.members(groups[start : start + per_chunk], size))
    return chunks


def _children(lcp: torch.Tensor, centred: torch.Tensor, rows: torch.Tensor):
    """For every (i, k): count, centred sum and first row of {k' : lcp(i, k') > lcp(i, k)}.

    lcp: (c, G, G); centred: (c, G) float64; rows: (c, G) batch rows in member order.
    """
    big = torch.iinfo(torch.int64).max
    count = torch.zeros_like(lcp)  # (c, G, G)
    total = torch.zeros(lcp.shape, dtype=torch.float64, device=lcp.device)
    first = torch.full_like(lcp, big)
    zero = torch.zeros((), dtype=torch.float64, device=lcp.device)
    for k in range(lcp.shape[1]):  # member order: the sums never depend on the rest of the batch
        inside = lcp[:, :, k, None] > lcp  # (c, G, G): lcp(i, k) > t = lcp(i, k')
        count += inside
        total = total + torch.where(inside, centred[:, k, None, None], zero)
        first = torch.minimum(first, torch.where(inside, rows[:, k, None, None], big))
    return count, total, first


def _chunk_points(responses, lengths, rewards, rows):
    """Roots (row, value, count, first) and branch points (row, t, value, count, first) of a chunk."""
    size = rows.shape[1]
    r = rewards[rows].to(torch.float64)  # (c, G)
    total = torch.zeros_like(r[:, 0])
    for k in range(size):
        total = total + r[:, k]
    mu = total / size  # (c,)
    centred = r - mu[:, None]  # (c, G)
    n = lengths[rows]  # (c, G)
    lcp = lcp_matrix(responses[rows], n)  # (c, G, G)
    count, csum, first = _children(lcp, centred, rows)
    value = mu[:, None, None] + csum / count.clamp_min(1)  # (c, G, G); count 0 only where t = n_i
    t, perm = torch.sort(lcp, dim=-1, stable=True)  # (c, G, G): row i's thresholds ascending
    fresh = torch.ones_like(t, dtype=torch.bool)
    fresh[..., 1:] = t[..., 1:] != t[..., :-1]  # several k may name one t: keep the first
    keep = fresh & (t < n[:, :, None])  # a branch token of row i (Lemma 2)
    c, i, j = keep.nonzero(as_tuple=True)
    k = perm[c, i, j]
    roots = (
        rows.reshape(-1),
        mu.repeat_interleave(size),
        torch.full_like(rows.reshape(-1), size),
        rows[:, :1].expand(-1, size).reshape(-1),
    )
    points = (rows[c, i], t[c, i, j], value[c, i, k], count[c, i, k], first[c, i, k])
    return roots, points


def prefix_runs(
    responses: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor, group_index: torch.Tensor
) -> Runs:
    """Prefix values of every response, compressed into runs.

    Args:
        responses: (B, L) integer token ids, right-padded (padding never read).
        lengths: (B,) int64 response lengths n_i.
        rewards: (B,) float rewards (raw).
        group_index: (B,) int64 dense group index in [0, n_groups).

    Returns:
        `Runs`, on responses' device.
    """
    b, length = responses.shape
    device = responses.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    roots, points = [], []
    if b:
        for rows in _chunks(GroupLayout.of(group_index), length):
            root, point = _chunk_points(responses, lengths, rewards, rows)
            roots.append(root)
            points.append(point)
    if roots:  # every row is in some group, so the roots cover the batch
        root_row, root_value, root_count, root_first = (torch.cat(p) for p in zip(*roots))
        row, t, value, count, first = (torch.cat(p) for p in zip(*points))
    else:
        root_row = root_count = root_first = row = t = count = first = empty
        root_value = value = empty.to(torch.float64)
    order = torch.argsort(row * (length + 1) + t)  # (P,) by row, then token: each key is unique
    per_row = torch.bincount(row, minlength=b)  # (B,)
    offsets = torch.zeros(b + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(per_row, 0)
    # Runs: the root of each row, then its branch points' children, at key row * (L + 2) + (t + 1).
    run_key = torch.cat([root_row * (length + 2), row * (length + 2) + t + 1])
    run_order = torch.argsort(run_key)
    pick = lambda a, z: torch.cat([a, z])[run_order]  # noqa: E731
    return Runs(
        branch_offsets=offsets,
        branch_t=t[order],
        run_value=pick(root_value, value),
        run_count=pick(root_count, count),
        run_first=pick(root_first, first),
    )
