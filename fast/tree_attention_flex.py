"""Tree attention with FlexAttention: `torch.nn.attention.flex_attention`, compiled, under a BlockMask
built directly from the depth-first layout (no N x N mask is ever evaluated to build it).

Nodes in preorder, key k visible to query q iff k <= q < subtree_end[k] (proofs_notes/tree-forward.md,
P6). For a query block [q0, q1) and a key block [k0, k1) of B nodes:
- some key is visible iff k0 < q1 and the block's largest subtree_end exceeds q0 (a key k < q1 with
  subtree_end[k] > q0 sees max(k, q0));
- every key is visible to every query iff k1 - 1 <= q0 and the block's smallest subtree_end is at
  least q1 (both blocks whole): such "full" blocks skip the mask function.
Two (N/B x N/B) block tables, O(N^2 / B^2) small integers, are all the mask costs; FlexAttention
evaluates `k <= q < subtree_end[k]` inside the kernel on the partial blocks only.
Nodes are padded to a power of two so that one compiled kernel serves every length up to it.
The forward runs on CPU and CUDA; FlexAttention's backward needs CUDA.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

__all__ = ["tree_block_mask", "tree_attention_flex"]


@functools.cache
def _compiled():
    # flex_attention needs torch.compile for its fused kernels; eager mode would materialise scores
    return torch.compile(flex_attention, dynamic=False)


def _block_table(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(num (1, 1, nQ) int32, indices (1, 1, nQ, nK) int32): each query block's flagged key blocks,
    in ascending order first."""
    num = flags.sum(dim=1, dtype=torch.int32)  # (nQ,)
    idx = torch.argsort((~flags).to(torch.int8), dim=1, stable=True).to(torch.int32)  # (nQ, nK)
    return num[None, None], idx[None, None]


def tree_block_mask(subtree_end: torch.Tensor, *, block: int = 128) -> BlockMask:
    """The BlockMask of the visibility rule for N nodes (subtree_end: (N,) int64) in blocks of `block`."""
    n = subtree_end.numel()
    dev = subtree_end.device
    nb = -(-n // block)
    pad = nb * block - n
    end = torch.nn.functional.pad(subtree_end, (0, pad))  # (nb B,) padding keys end at 0: invisible
    tiles = end.view(nb, block)
    real = (torch.arange(nb * block, device=dev) < n).view(nb, block)
    max_end = tiles.amax(dim=1)  # (nb,)
    min_end = torch.where(real, tiles, n).amin(dim=1)  # (nb,)
    starts = torch.arange(nb, device=dev) * block  # (nb,) first node of each block
    q0, q1 = starts[:, None], (starts + block).clamp(max=n)[:, None]  # (nb, 1) query blocks
    k0, k1 = starts[None, :], (starts + block).clamp(max=n)[None, :]  # (1, nb) key blocks
    whole = (k1 - k0 == block) & (q1 - q0 == block)  # (nb, nb)
    seen = (k0 < q1) & (max_end[None, :] > q0)  # (nb, nb) some key visible
    full = whole & (k1 - 1 <= q0) & (min_end[None, :] >= q1)  # (nb, nb) every key visible

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx < end[kv_idx])

    num, idx = _block_table(seen & ~full)
    full_num, full_idx = _block_table(full)
    return BlockMask.from_kv_blocks(
        num, idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n)
    )


def _bucket(n: int, block: int) -> int:
    """Nodes padded to a power of two (at least one block): a compiled kernel per distinct length
    would recompile every batch and, past torch.compile's cache limit, fall back to the dense eager
    path; powers of two give one compile per doubling."""
    return max(block, 1 << max(0, n - 1).bit_length())


def tree_attention_flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    subtree_end: torch.Tensor,
    *,
    scale: float,
    block: int = 128,
) -> torch.Tensor:
    """`fast.tree_attention.tree_attention_dfs` with FlexAttention (same arguments, already checked
    there; returns (N, H, Dv)). block: the BlockMask's block size (tests pass small ones).
    The nodes are padded to `_bucket(N)` with roots that see only themselves (no real query sees
    them: a padding key p is visible to p alone), so padding costs one diagonal block per block."""
    n = query.shape[1]
    if n == 0:  # empty, but still in the graph so that a backward through it runs
        return query.new_zeros((0, query.shape[0], value.shape[2])) + 0 * (query.sum() + key.sum() + value.sum())
    m = _bucket(n, block)
    end = torch.cat([subtree_end, torch.arange(n + 1, m + 1, device=subtree_end.device)])  # (M,)
    q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, m - n)) for x in (query, key, value))  # (., M, .)
    out = _compiled()(
        q[None],
        k[None],
        v[None],
        block_mask=tree_block_mask(end, block=block),
        scale=scale,
        enable_gqa=q.shape[0] != k.shape[0],
    )  # (1, H, M, Dv)
    return out[0, :, :n].transpose(0, 1)
