"""Tree statistics from the lcp matrix, vectorised: the numbers `reference/stats.py` counts on a trie.

Every statistic is an integer function of the group's G x G lcp matrix and lengths
(proofs_notes/fast-algorithm.md, "Tree statistics"), so it equals the reference exactly. With
m_i = max_{k < i} lcp(i, k) (-1 for the first member) and D_i = {lcp(i, k) : y_k != y_i}:

- nodes          = sum_i (n_i - m_i)               (prefixes y_i[:t], t > m_i, are new at member i)
- branch nodes   = sum_i |{t in D_i : t > m_i}|    (y_i[:t] branches iff t in D_i; counted once)
- branch tokens  = sum_i |{lcp(i, k) : k != i} intersected with [0, n_i)|
- first branch depth = min over D; branch depth sum = sum_i sum {t in D_i : t > m_i}.

Cost: one sort of G values per (i, group), O(G^2 log G) per group, no Python loop over tokens.
"""

from __future__ import annotations

import torch

# Column order of the (n_groups, N) int64 tensors the fast backends return; the fields of
# `reference.stats.GroupTreeStats`. first_branch_depth is -1 where a group never branches.
STAT_COLUMNS = (
    "n_responses",
    "n_tokens",
    "n_nodes",
    "n_branch_nodes",
    "n_branch_tokens",
    "first_branch_depth",
    "max_depth",
    "branch_depth_sum",
)
NO_BRANCH = -1


def _distinct(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (..., G) values: how many distinct kept values, and their sum. Exact, int64."""
    sentinel = torch.iinfo(torch.int64).max
    ordered = torch.where(keep, values, sentinel).sort(dim=-1).values  # (..., G)
    new = ordered != sentinel
    new[..., 1:] &= ordered[..., 1:] != ordered[..., :-1]  # first of each run of equal values
    return new.sum(-1), torch.where(new, ordered, 0).sum(-1)


def stats_from_lcp(lcp: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(c, len(STAT_COLUMNS)) int64 statistics of c groups of G members each.

    lcp: (c, G, G) int64 longest common prefixes, lcp[i, i] = n_i; lengths: (c, G).
    """
    c, size, _ = lcp.shape
    lcp = lcp.to(torch.int64)
    n = lengths.to(torch.int64)  # (c, G)
    eye = torch.eye(size, dtype=torch.bool, device=lcp.device)
    earlier = torch.ones(size, size, dtype=torch.bool, device=lcp.device).tril(-1)  # k < i
    m = torch.where(earlier, lcp, -1).amax(-1)  # (c, G) m_i; -1 for the first member, who owns the root
    identical = (lcp == n[:, :, None]) & (lcp == n[:, None, :])  # (c, G, G), diagonal included
    differs = ~identical  # y_k != y_i, so t = lcp(i, k) is a branch node on y_i's path
    branch_nodes, depth_sum = _distinct(lcp, differs & (lcp > m[:, :, None]))  # (c, G)
    branch_tokens, _ = _distinct(lcp, ~eye & (lcp < n[:, :, None]))  # (c, G)
    first = torch.where(differs, lcp, torch.iinfo(torch.int64).max).flatten(1).amin(-1)  # (c,)
    branches = differs.flatten(1).any(-1)  # (c,)
    columns = {
        "n_responses": torch.full((c,), size, dtype=torch.int64, device=lcp.device),
        "n_tokens": n.sum(-1),
        "n_nodes": (n - m).sum(-1),
        "n_branch_nodes": branch_nodes.sum(-1),
        "n_branch_tokens": branch_tokens.sum(-1),
        "first_branch_depth": torch.where(branches, first, NO_BRANCH),
        "max_depth": n.amax(-1),
        "branch_depth_sum": depth_sum.sum(-1),
    }
    return torch.stack([columns[name] for name in STAT_COLUMNS], dim=-1)
