"""Tree attention by its definition: every node attends to its ancestors and itself.

The definitions `fast/tree_attention*.py` are checked against (proofs_notes/tree-forward.md, P6):
the ancestor relation walked up the parent pointers, dense softmax attention under that mask, and
the same attention computed one root-to-leaf path at a time with plain causal attention (each row
on its own, as a model sees it). Slow and O(N^2) in memory, on purpose.
"""

from __future__ import annotations

import torch


def parents_from_depths(depth: list[int]) -> list[int]:
    """The forest whose depth-first preorder has these depths (depth[0] = 0, each at most one more
    than the previous): a node's parent is the last node before it one level up, -1 at depth 0."""
    last: dict[int, int] = {}
    parent = []
    for i, d in enumerate(depth):
        parent.append(last[d - 1] if d else -1)
        last[d] = i
    return parent


def subtree_end_ref(parent: list[int]) -> list[int]:
    """One past the largest descendant of each node (itself included), walking every node's
    ancestors; in depth-first preorder the subtree of k is then the run [k, end[k])."""
    end = [k + 1 for k in range(len(parent))]
    for j in range(len(parent)):
        a = parent[j]
        while a >= 0:
            end[a] = max(end[a], j + 1)
            a = parent[a]
    return end


def ancestor_mask(parent: list[int]) -> torch.Tensor:
    """(N, N) bool: [q, k] is True iff k is q or one of q's ancestors."""
    n = len(parent)
    mask = torch.zeros((n, n), dtype=torch.bool)
    for q in range(n):
        a = q
        while a >= 0:
            mask[q, a] = True
            a = parent[a]
    return mask


def masked_attention_ref(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Dense softmax attention in the inputs' dtype. query: (H, N, D); key: (Hk, N, D); value:
    (Hk, N, Dv); mask: (N, N) bool, [q, k] True where key k is visible to query q (every row needs
    one). Query head h reads key head h // (H // Hk). Returns (N, H, Dv)."""
    group = query.shape[0] // key.shape[0]
    k = key.repeat_interleave(group, dim=0)  # (H, N, D)
    v = value.repeat_interleave(group, dim=0)  # (H, N, Dv)
    s = torch.einsum("hqd,hkd->hqk", query, k) * scale  # (H, N, N)
    s = s.masked_fill(~mask.to(query.device), float("-inf"))
    return torch.einsum("hqk,hkd->qhd", torch.softmax(s, dim=-1), v)  # (N, H, Dv)


def leaf_paths(parent: list[int]) -> list[list[int]]:
    """Each root-to-leaf path (a leaf: a node that is nobody's parent), root first."""
    inner = set(parent)
    paths = []
    for leaf in range(len(parent)):
        if leaf in inner:
            continue
        path, a = [], leaf
        while a >= 0:
            path.append(a)
            a = parent[a]
        paths.append(path[::-1])
    return paths


def path_attention_ref(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, path: list[int], *, scale: float
) -> torch.Tensor:
    """Plain causal attention of one root-to-leaf path run on its own (the path's row, as a model
    attends over it): (L, H, Dv) for the path's L nodes. Shapes as in `masked_attention_ref`."""
    idx = torch.tensor(path, dtype=torch.int64, device=query.device)
    out = torch.nn.functional.scaled_dot_product_attention(
        query[:, idx][None],
        key[:, idx][None],
        value[:, idx][None],
        is_causal=True,
        scale=scale,
        enable_gqa=query.shape[0] != key.shape[0],
    )  # (1, H, L, Dv)
    return out[0].transpose(0, 1)
