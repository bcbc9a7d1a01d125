"""TEMPO advantages in vectorised torch (CPU and CUDA), equal to the reference trie.

No trie is built. For response i of a group, the members of the prefix y_i[:t] are exactly
{k : lcp(i, k) >= t}, with lcp the longest-common-prefix length (lcp(i, i) = n_i); see
proofs_notes/fast-algorithm.md. So one pass over the tokens gives the G x G lcp matrix of each
group, and everything else is O(G^2) work per response:

- a token t of response i is a branch token iff t = lcp(i, k) < n_i for some k;
- there, TD = V(>= t+1) - V(>= t), the mean centred reward over {k : lcp(i, k) > t} minus the
  mean over {k : lcp(i, k) >= t};
- every other token carries the GRPO value (R_i - mu_g) / (sigma_g + eps), the same number,
  computed once per row, that `td_coef = 0` gives (so non-branch tokens are GRPO bitwise).

Group statistics and TD are computed in float64 on rewards divided by the group's power-of-two
scale (`_groups.group_scale`: exact, so finite for any finite rewards) and rounded once to the
output dtype. Every float reduction is a sequential sum over the group's own members in member
order (an explicit loop over member slots, each step vectorised over all rows), so no
association depends on the batch's other groups or a padded size: the result is batch invariant
bitwise (spec 5b). The same lcp matrices give the tree statistics (`stats_torch`).
Cost: O(sum_g G_g^2 * L) token comparisons (pairs i < k only), O(B * L) output writes.

A leaf: plain tensors in, nothing imported from the package that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._groups import GroupLayout, check_finite, group_scale
from .stats_torch import STAT_COLUMNS, stats_from_lcp

# Rows whose tokens one step compares at once; bounds temporaries to a few tens of MB.
_CHUNK_ELEMENTS = 1 << 24
# Token ids one lcp step gathers at most (two such gathers live at once).
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class GroupMoments:
    """Per-row group statistics in float64 on scaled rewards R / s_g, rows laid out (groups, G).

    centred: (c, G) (R_k - mu_g) / s_g.  denom: (c, 1) (sigma_g + eps) / s_g.  scale: (c, 1) s_g.
    degenerate: (c, 1) bool, a group of one or with all rewards equal (in the input dtype):
    every advantage is 0.
    """

    centred: torch.Tensor
    denom: torch.Tensor
    scale: torch.Tensor
    degenerate: torch.Tensor
    norm_by_std: bool

    def normalise(self, numerator: torch.Tensor) -> torch.Tensor:
        """numerator (c, G, ...) in scaled units -> the advantage: / denom, or x s_g (Dr. GRPO)."""
        extra = (1,) * (numerator.dim() - 2)
        if self.norm_by_std:
            return numerator / self.denom.view(*self.denom.shape, *extra)
        return numerator * self.scale.view(*self.scale.shape, *extra)


def group_moments(rewards: torch.Tensor, scale: torch.Tensor, *, norm_by_std: bool, eps: float) -> GroupMoments:
    """mu_g, sigma_g (divisor G - 1) of rewards (c, G) / scale (c,), summed member by member in order."""
    r = rewards.to(torch.float64) / scale[:, None]  # (c, G) exact: scale is a power of two
    size = r.shape[1]
    total = torch.zeros_like(r[:, 0])
    for k in range(size):  # sequential in member order: no association depends on the batch
        total = total + r[:, k]
    centred = r - (total / size)[:, None]  # (c, G)
    squares = torch.zeros_like(total)
    for k in range(size):
        squares = squares + centred[:, k] * centred[:, k]
    sigma = torch.sqrt(squares / max(size - 1, 1))  # (c,)
    # Exactly equal rewards give exactly 0; the float mean of equal values need not equal them.
    degenerate = (rewards.amax(1) == rewards.amin(1)) | (size < 2)  # (c,)
    # eps / s_g exact (s_g >= eps 2^-60 keeps it finite); a true division, as `eps / tensor` is
    # computed as eps * (1 / s_g), which is 0 * inf for eps = 0 and a subnormal s_g.
    denom = sigma + torch.full_like(scale, eps) / scale
    denom = torch.where(degenerate, 1.0, denom)  # eps = 0 with equal rewards: never compute 0 / 0
    return GroupMoments(
        centred=centred,
        denom=denom[:, None],
        scale=scale[:, None],
        degenerate=degenerate[:, None],
        norm_by_std=norm_by_std,
    )


def lcp_matrix(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pairwise longest common prefix lengths within each group.

    tokens: (c, G, L) ids, right-padded; lengths: (c, G). Returns (c, G, G) int64 with
    lcp[i, i] = n_i. Padding may equal real ids: a match past min(n_i, n_k) is clamped away.

    Each unordered pair is compared in column blocks only while it is still open (no mismatch
    yet, shorter row not ended), so the tokens read are about sum over pairs of lcp + a block,
    not G^2 L: most pairs of sampled responses part within a few tokens. Blocks start at 64
    columns and double (long shared prefixes take few steps), capped so a step gathers at most
    _BLOCK_ELEMENTS ids.
    """
    c, size, width = tokens.shape
    lcp = torch.diag_embed(lengths.to(torch.int64))  # (c, G, G)
    if size < 2 or c == 0:
        return lcp
    device = tokens.device
    i_idx, k_idx = torch.triu_indices(size, size, 1, device=device)  # (P,) pairs i < k
    flat = tokens.reshape(c * size, width)  # a view when tokens is one
    base = (torch.arange(c, device=device) * size)[:, None]  # (c, 1)
    row_i, row_k = (base + i_idx).reshape(-1), (base + k_idx).reshape(-1)  # (c P,)
    n = lengths.reshape(-1).to(torch.int64)
    shorter = torch.minimum(n[row_i], n[row_k])  # (c P,) no mismatch: lcp = the shorter length
    common = shorter.clone()
    live = torch.nonzero(shorter > 0)[:, 0]  # open pairs
    start, block = 0, 64
    while live.numel():
        step = max(1, min(block, _BLOCK_ELEMENTS // live.numel()))
        end = min(start + step, width)
        differ = flat[row_i[live], start:end] != flat[row_k[live], start:end]  # (p, step)
        found = differ.any(1)  # (p,)
        first = start + differ.view(torch.uint8).argmax(1)  # (p,) first mismatch, where found
        hit = live[found]
        common[hit] = torch.minimum(shorter[hit], first[found])
        live = live[~found & (shorter[live] > end)]
        start, block = end, min(2 * block, 2048)
    P = i_idx.numel()
    lcp[:, i_idx, k_idx] = common.view(c, P)
    lcp[:, k_idx, i_idx] = common.view(c, P)
    return lcp


def prefix_td(lcp: torch.Tensor, centred: torch.Tensor) -> torch.Tensor:
    """TD at the token t = lcp[i, k] of response i, for every (i, k): (c, G, G) float64.

    TD = V(>= t+1) - V(>= t) where V(>= t) is the mean centred reward of {k' : lcp[i, k'] >= t}
    (Members(y_i[:t]), proofs_notes/fast-algorithm.md). Centring first keeps V(child) - V(parent)
    accurate when |R| >> sigma. Sums run over k' in member order.
    """
    threshold = lcp  # (c, G, G): t = lcp[i, k]
    zero = torch.zeros((), dtype=centred.dtype, device=centred.device)
    n_parent = torch.zeros_like(lcp)
    n_child = torch.zeros_like(lcp)
    s_parent = torch.zeros(lcp.shape, dtype=centred.dtype, device=lcp.device)
    s_child = torch.zeros_like(s_parent)
    for k in range(lcp.shape[1]):
        reach = lcp[:, :, k, None]  # (c, G, 1) lcp(i, k')
        in_parent = reach >= threshold  # (c, G, G)
        in_child = reach > threshold
        c_k = centred[:, k, None, None]  # (c, 1, 1)
        n_parent += in_parent
        n_child += in_child
        s_parent = s_parent + torch.where(in_parent, c_k, zero)
        s_child = s_child + torch.where(in_child, c_k, zero)
    # Where t >= n_i there is no token and n_child may be 0; those entries are discarded.
    return s_child / n_child.clamp_min(1) - s_parent / n_parent.clamp_min(1)


def _group_chunks(layout: GroupLayout, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(group indices (c,), member rows (c, G)) chunks, groups of one size per chunk, memory bounded."""
    chunks = []
    for size, groups in layout.by_size():
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, size * length))
        for start in range(0, groups.numel(), per_chunk):
            part = groups[start : start + per_chunk]
            chunks.append((part, layout.members(part, size)))
    return chunks


def _member_tokens(responses: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(c, G, L) tokens of `rows`; a view, not a copy, when the rows are already consecutive."""
    first = int(rows[0, 0])
    flat = rows.reshape(-1)
    if torch.equal(flat, torch.arange(first, first + flat.numel(), device=rows.device)):
        return responses[first : first + flat.numel()].reshape(*rows.shape, -1)
    return responses[rows]


def _branch_points(
    lcp: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor, moments: GroupMoments, *, td_coef: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, t, value) of every branch token of these groups, value in float64."""
    td = prefix_td(lcp, moments.centred)  # (c, G, G)
    # Two separate ops, never a fused multiply-add, so rounding is the same everywhere.
    value = moments.normalise(moments.centred[:, :, None] + td_coef * td)  # (c, G, G)
    n = lengths[rows][:, :, None]  # (c, G, 1)
    branch = (lcp < n) & ~moments.degenerate[:, :, None]  # t = lcp(i, k) < n_i is a branch token
    where = branch.nonzero(as_tuple=True)
    return rows[where[0], where[1]], lcp[where], value[where]


def advantages_and_stats(
    responses: torch.Tensor,
    lengths: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    norm_by_std: bool,
    eps: float,
    td_coef: float,
    with_stats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TEMPO advantages (B, L) and, from the same lcp matrices, per-group tree statistics.

    Args:
        responses: (B, L) int ids, any strides.  lengths: (B,) int64 n_i.
        rewards: (B,) float32/float64, the output dtype.  group_index: (B,) int64 in [0, n_groups).
        loss_mask: optional (B, L) bool.

    Returns:
        advantages: (B, L), A[i, t] = (R_i - mu_g + td_coef * TD[i, t]) / (sigma_g + eps)
        (proofs_notes/tempo.md, Definition 3), TD exactly 0 at non-branch tokens; 0 past n_i, where
        loss_mask is 0, and for groups of one or with equal rewards. td_coef = 0 gives GRPO bitwise.
        stats: (n_groups, len(STAT_COLUMNS)) int64, or None without `with_stats`.
    """
    b, length = responses.shape
    device = responses.device
    dtype = rewards.dtype
    n_groups = int(group_index.max()) + 1 if b else 0
    stats = torch.zeros((n_groups, len(STAT_COLUMNS)), dtype=torch.int64, device=device) if with_stats else None
    if b == 0:
        return torch.zeros((b, length), dtype=dtype, device=device), stats
    layout = GroupLayout.of(group_index)
    scale = group_scale(rewards, group_index, layout.n_groups, eps=eps if norm_by_std else 0.0)
    row_value = torch.zeros(b, dtype=torch.float64, device=device)  # GRPO value of each row
    points = []
    for groups, rows in _group_chunks(layout, length):
        moments = group_moments(rewards[rows], scale[groups], norm_by_std=norm_by_std, eps=eps)
        grpo = torch.where(moments.degenerate, 0.0, moments.normalise(moments.centred))  # (c, G)
        row_value[rows.reshape(-1)] = grpo.reshape(-1)
        if not (with_stats or td_coef != 0.0):
            continue
        lcp = lcp_matrix(_member_tokens(responses, rows), lengths[rows])  # (c, G, G)
        if stats is not None:
            stats[groups] = stats_from_lcp(lcp, lengths[rows])
        if td_coef != 0.0:
            points.append(_branch_points(lcp, rows, lengths, moments, td_coef=td_coef))
    check_finite(row_value.to(dtype), "rewards")
    keep = torch.arange(length, device=device) < lengths[:, None]  # (B, L)
    if loss_mask is not None:
        keep &= loss_mask
    out = torch.where(keep, row_value.to(dtype)[:, None], 0.0)  # (B, L) GRPO everywhere
    if points:
        row, t, value = (torch.cat(parts) for parts in zip(*points))
        check_finite(value.to(dtype), "td_coef")
        value = torch.where(keep[row, t], value.to(dtype), 0.0)
        out[row, t] = value  # branch tokens only; repeated (row, t) carry identical values
    return out, stats


def tree_stats(responses: torch.Tensor, lengths: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(n_groups, len(STAT_COLUMNS)) int64 tree statistics; only the lcp work, no rewards."""
    b, length = responses.shape
    device = responses.device
    n_groups = int(group_index.max()) + 1 if b else 0
    stats = torch.zeros((n_groups, len(STAT_COLUMNS)), dtype=torch.int64, device=device)
    if b == 0:
        return stats
    for groups, rows in _group_chunks(GroupLayout.of(group_index), length):
        stats[groups] = stats_from_lcp(lcp_matrix(_member_tokens(responses, rows), lengths[rows]), lengths[rows])
    return stats
