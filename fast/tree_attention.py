"""Tree attention over nodes in depth-first preorder: the DFS layout, the argument checks, and the
one dispatcher `tree_attention_dfs` over the GPU implementations.

In preorder a node's subtree is the contiguous run [k, subtree_end[k]), so key k is an
ancestor-or-self of query q exactly when k <= q < subtree_end[k] (proofs_notes/tree-forward.md,
P6). Two kernels compute attention under that rule without ever materialising the N x N mask or
copying any path:

    "triton"  `fast/tree_attention_triton.py`: a FlashAttention-style tiled kernel with its own
              backward (dQ; dK and dV per key tile, summed over a key head's query heads). Runs on
              CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (how the tests run it).
    "flex"    `fast/tree_attention_flex.py`: `torch.nn.attention.flex_attention` compiled, with a
              BlockMask built from the same layout. Its forward runs on CPU and CUDA; its backward
              needs CUDA.

"auto" picks "triton" for CUDA tensors: it is the implementation whose forward and backward are
both proven equal to the reference on this project's machines (in the interpreter), it has no
compile step per sequence length, and it skips key tiles from one per-tile maximum instead of a
(query block x key block) table. Outside CUDA "auto" runs Triton only when the interpreter is on,
and otherwise refuses: the CPU tree forward is `fast/tree_forward_torch.tree_attention`.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

BACKENDS = ("auto", "triton", "flex")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = ["BACKENDS", "check_inputs", "resolve_backend", "subtree_end", "tree_attention_dfs"]


# ----------------------------------------------------------------------------- the DFS layout
def subtree_end(parent: torch.Tensor) -> torch.Tensor:
    """(N,) int64: one past the last node of each node's subtree, for a forest in depth-first preorder.

    parent: (N,) int64, parent[k] < k, -1 for a root (what `fast/tree_forward_torch.pack` builds).
    In preorder the subtree of k is the run [k, e_k): e_k is k's next sibling if it has one, else
    e_{parent[k]} (N for a root without one). Siblings are adjacent after a stable sort by parent;
    "the nearest ancestor-or-self with a next sibling" is found by pointer jumping, so the cost is
    O(N log N) with no loop over nodes. Checks the layout: a parent array that is not a preorder
    (a subtree that is not contiguous) is refused (P6).

    >>> subtree_end(torch.tensor([-1, 0, 1, 0, -1]))
    tensor([4, 3, 3, 4, 5])
    """
    if not isinstance(parent, torch.Tensor) or parent.dim() != 1 or parent.dtype != torch.int64:
        raise ValueError("parent must be a 1-D int64 tensor (-1 for a root)")
    n = parent.numel()
    idx = torch.arange(n, device=parent.device)  # (N,)
    if n and bool(((parent < -1) | (parent >= idx)).any()):
        raise ValueError("parent must satisfy -1 <= parent[k] < k (nodes in depth-first preorder)")
    by_parent = torch.sort(parent, stable=True).indices  # (N,) siblings adjacent, in index order
    same = parent[by_parent[1:]] == parent[by_parent[:-1]]  # (N - 1,)
    nxt = torch.full((n,), -1, dtype=torch.int64, device=parent.device)
    nxt[by_parent[:-1][same]] = by_parent[1:][same]  # next sibling, -1 for the last child
    # end[k] = nxt[a] for the nearest ancestor-or-self a with a next sibling, N if there is none.
    end = torch.where(nxt >= 0, nxt, -1)  # (N,) -1: not known yet
    up = parent.clone()  # (N,) the next ancestor to ask
    while True:
        todo = end < 0
        if not bool(todo.any()):
            break
        root = todo & (up < 0)
        end = torch.where(root, n, end)
        ask = todo & ~root
        safe = up.clamp(min=0)
        known = ask & (end[safe] >= 0)
        end = torch.where(known, end[safe], end)
        # doubling: every round either settles a node or doubles the distance `up` jumps
        up = torch.where(ask & ~known, up[safe], up)
    # A preorder iff every child lies inside its parent's run (P6); without it the runs are not subtrees.
    child = parent >= 0
    if bool((end[parent[child]] <= idx[child]).any()):
        raise ValueError("parent is not in depth-first preorder: a subtree is not a contiguous run of nodes")
    return end


# ----------------------------------------------------------------------------- checks
def check_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, subtree_end: torch.Tensor, scale: float
) -> None:
    """One-line ValueError naming the argument for anything `tree_attention_dfs` cannot take.
    Checks subtree_end's values (k < subtree_end[k] <= N, so every node sees at least itself): one
    device synchronisation per call."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor (heads, nodes, head dim)")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    h, n, d = query.shape
    hk = key.shape[0]
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"key and value must have query's dtype {query.dtype}, got {key.dtype} and {value.dtype}")
    if key.shape[1] != n or value.shape[1] != n:
        raise ValueError(f"key and value must have query's {n} nodes, got {key.shape[1]} and {value.shape[1]}")
    if key.shape[2] != d:
        raise ValueError(f"key must have query's head dim {d}, got {key.shape[2]}")
    if value.shape[0] != hk or hk == 0 or h == 0 or h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key heads ({hk}), and value must have {hk} heads")
    if d == 0 or value.shape[2] == 0:
        raise ValueError("query and value head dims must be at least 1")
    if key.device != query.device or value.device != query.device or subtree_end.device != query.device:
        raise ValueError("query, key, value and subtree_end must be on one device")
    if not isinstance(scale, (int, float)) or not (scale == scale and abs(scale) < float("inf")):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    if subtree_end.dtype != torch.int64 or subtree_end.shape != (n,):
        raise ValueError(f"subtree_end must be a ({n},) int64 tensor (see `subtree_end(parent)`)")
    idx = torch.arange(n, device=subtree_end.device)
    if n and bool(((subtree_end <= idx) | (subtree_end > n)).any()):
        raise ValueError("subtree_end must satisfy k < subtree_end[k] <= N (see `subtree_end(parent)`)")


# ----------------------------------------------------------------------------- dispatch
def _triton() -> Callable[..., torch.Tensor]:
    from .tree_attention_triton import tree_attention_triton

    return tree_attention_triton


def _flex() -> Callable[..., torch.Tensor]:
    from .tree_attention_flex import tree_attention_flex

    return tree_attention_flex


_LOADERS: dict[str, Callable[[], Callable[..., torch.Tensor]]] = {"triton": _triton, "flex": _flex}


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete implementation `backend` names for tensors on `device` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    raise ValueError(
        "backend='auto' runs tree_attention_dfs on CUDA tensors (or on CPU under TRITON_INTERPRET=1); "
        "on CPU use fast.tree_forward_torch.tree_attention, or backend='flex' for a forward only"
    )


def tree_attention_dfs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    subtree_end: torch.Tensor,
    *,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of every node over its ancestors and itself, nodes in depth-first preorder.

    query: (H, N, D); key: (Hk, N, D); value: (Hk, N, Dv), H a multiple of Hk (query head h reads key
    head h // (H // Hk)); subtree_end: (N,) int64 from `subtree_end(parent)`; scale: the softmax scale.
    Returns (N, H, Dv) in query's dtype, differentiable in query, key and value:

        out[q, h] = sum_k softmax_k(scale <query[h, q], key[g(h), k]>) value[g(h), k],
        over the keys k <= q < subtree_end[k] (k an ancestor-or-self of q; proofs_notes/tree-forward.md, P6),

    which is each node's attention in any root-to-leaf path through it (its row's causal attention).
    backend: "auto" (Triton on CUDA), "triton" or "flex"; see the module docstring.
    """
    check_inputs(query, key, value, subtree_end, scale)
    name = resolve_backend(backend, query.device)
    return _LOADERS[name]()(query, key, value, subtree_end, scale=float(scale))
