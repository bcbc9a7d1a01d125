"""Tree attention with Triton: a FlashAttention-style tiled kernel over nodes in depth-first preorder,
with its backward. Never materialises the N x N mask or probabilities, and copies no path.

Key k is visible to query q iff k <= q < subtree_end[k] (an ancestor-or-self; proofs_notes/tree-forward.md,
P6). Tiles:

- `_forward_kernel`, one program per (query tile [q0, q1), query head): online softmax over the key
  tiles before q1. The keys of the tile that lie before q0 and are visible to some query of the tile
  are exactly the ancestors of q0 (an ancestor a < q0 of q in the tile has q0 in [a, q)), i.e. the
  k < q0 with subtree_end[k] > q0; so a key tile is read only when its largest subtree_end (`tile_end`,
  one number per key tile) exceeds q0, and every tile read holds at least one visible key. Keeps the
  log-sum-exp (base 2) per query for the backward: O(N) floats.
- `_dkdv_kernel`, one program per (key tile, key head): the queries that see a key of the tile are the
  contiguous run [k0, tile_end) (the union of the tile's subtrees), visited for every query head of
  the group (grouped-query attention), so dK and dV are summed in registers: no atomics, and the
  result does not depend on scheduling.
- `_dq_kernel`, one program per (query tile, query head): the forward's loop again, accumulating dQ.
Probabilities are recomputed from Q, K and the log-sum-exp (FlashAttention-2's backward);
delta = rowsum(dO * O) is one torch reduction. Accumulation is float32 (float64 for float64 inputs);
float32 dots run in full precision (no TF32). Head dims that are not powers of two are padded to the
next one with masked loads; inputs are read through their strides.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["tree_attention_triton"]

_MAX_HEAD_DIM = 256  # wider heads do not fit a tile in registers


@triton.jit
def _forward_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    end_ptr,
    tile_end_ptr,
    scale_ptr,
    out_ptr,
    lse_ptr,
    # sizes
    n_nodes,
    head_dim,
    value_dim,
    group,
    # strides
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_on,
    stride_oh,
    stride_od,
    # constexpr
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    q0 = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    kv_head = head // group
    rows = q0 + tl.arange(0, BLOCK_M)  # (BM,)
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    rows64 = rows.to(tl.int64)
    q = tl.load(
        q_ptr + head.to(tl.int64) * stride_qh + rows64[:, None] * stride_qn + dq[None, :] * stride_qd,
        mask=(rows[:, None] < n_nodes) & (dq[None, :] < head_dim),
        other=0.0,
    )  # (BM, BD)
    qk_scale = tl.load(scale_ptr)  # scale * log2(e), in ACC: softmax in base 2
    m = tl.full([BLOCK_M], float("-inf"), ACC)
    l = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], ACC)
    k_base = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_base = v_ptr + kv_head.to(tl.int64) * stride_vh
    for k0 in range(0, tl.minimum(q0 + BLOCK_M, n_nodes), BLOCK_N):
        if tl.load(tile_end_ptr + k0 // BLOCK_N) > q0:  # the tile holds an ancestor of q0 (or a query)
            cols = k0 + tl.arange(0, BLOCK_N)  # (BN,)
            cols64 = cols.to(tl.int64)
            col_ok = cols < n_nodes
            k = tl.load(
                k_base + cols64[:, None] * stride_kn + dq[None, :] * stride_kd,
                mask=col_ok[:, None] & (dq[None, :] < head_dim),
                other=0.0,
            )  # (BN, BD)
            v = tl.load(
                v_base + cols64[:, None] * stride_vn + dv[None, :] * stride_vd,
                mask=col_ok[:, None] & (dv[None, :] < value_dim),
                other=0.0,
            )  # (BN, BDV)
            kend = tl.load(end_ptr + cols, mask=col_ok, other=0)  # (BN,); 0 hides padding keys
            vis = (cols[None, :] <= rows[:, None]) & (rows[:, None] < kend[None, :])  # (BM, BN)
            s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=ACC) * qk_scale
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            # a row with no visible key yet keeps m = -inf: shift by 0 so exp2 gives 0, never NaN
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m - shift)
            p = tl.exp2(s - shift[:, None])  # (BM, BN)
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee", out_dtype=ACC)
            m = m_new
    # every real query sees itself, so l > 0 on real rows; padding rows divide by 1
    row_ok = rows < n_nodes
    l_safe = tl.where(row_ok, l, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        out_ptr + rows64[:, None] * stride_on + head.to(tl.int64) * stride_oh + dv[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & (dv[None, :] < value_dim),
    )
    tl.store(lse_ptr + head.to(tl.int64) * n_nodes + rows64, m + tl.log2(l_safe), mask=row_ok)


@triton.jit
def _dkdv_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    end_ptr,
    tile_end_ptr,
    scale_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    # sizes
    n_nodes,
    head_dim,
    value_dim,
    group,
    # strides (dk and dv are contiguous like key and value's shapes)
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_don,
    stride_doh,
    stride_dod,
    # constexpr
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    k0 = tile * BLOCK_N
    cols = k0 + tl.arange(0, BLOCK_N)  # (BN,)
    cols64 = cols.to(tl.int64)
    col_ok = cols < n_nodes
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    k = tl.load(
        k_ptr + kv_head.to(tl.int64) * stride_kh + cols64[:, None] * stride_kn + dq[None, :] * stride_kd,
        mask=col_ok[:, None] & (dq[None, :] < head_dim),
        other=0.0,
    )  # (BN, BD)
    v = tl.load(
        v_ptr + kv_head.to(tl.int64) * stride_vh + cols64[:, None] * stride_vn + dv[None, :] * stride_vd,
        mask=col_ok[:, None] & (dv[None, :] < value_dim),
        other=0.0,
    )  # (BN, BDV)
    kend = tl.load(end_ptr + cols, mask=col_ok, other=0)  # (BN,)
    q_hi = tl.load(tile_end_ptr + tile)  # the tile's keys are seen only by queries in [k0, q_hi)
    qk_scale = tl.load(scale_ptr)
    scale = tl.load(scale_ptr + 1)
    dk_acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv_acc = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
    for g in range(0, group):
        head = (kv_head * group + g).to(tl.int64)
        for q0 in range(k0, q_hi, BLOCK_M):
            rows = q0 + tl.arange(0, BLOCK_M)  # (BM,)
            rows64 = rows.to(tl.int64)
            row_ok = rows < n_nodes
            q = tl.load(
                q_ptr + head * stride_qh + rows64[:, None] * stride_qn + dq[None, :] * stride_qd,
                mask=row_ok[:, None] & (dq[None, :] < head_dim),
                other=0.0,
            )  # (BM, BD)
            do = tl.load(
                do_ptr + rows64[:, None] * stride_don + head * stride_doh + dv[None, :] * stride_dod,
                mask=row_ok[:, None] & (dv[None, :] < value_dim),
                other=0.0,
            )  # (BM, BDV)
            lse = tl.load(lse_ptr + head * n_nodes + rows64, mask=row_ok, other=0.0)  # (BM,)
            delta = tl.load(delta_ptr + head * n_nodes + rows64, mask=row_ok, other=0.0)
            vis = (cols[None, :] <= rows[:, None]) & (rows[:, None] < kend[None, :])  # (BM, BN)
            s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=ACC) * qk_scale
            # masked before exp2: an invisible key's score may exceed the row's lse by any amount
            p = tl.exp2(tl.where(vis, s, float("-inf")) - lse[:, None])  # (BM, BN) the forward's probabilities
            dv_acc += tl.dot(tl.trans(p).to(do.dtype), do, input_precision="ieee", out_dtype=ACC)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee", out_dtype=ACC)  # (BM, BN)
            ds = p * (dp - delta[:, None])
            dk_acc += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision="ieee", out_dtype=ACC)
    base = kv_head.to(tl.int64) * n_nodes
    tl.store(
        dk_ptr + (base + cols64[:, None]) * head_dim + dq[None, :],
        (dk_acc * scale).to(dk_ptr.dtype.element_ty),
        mask=col_ok[:, None] & (dq[None, :] < head_dim),
    )
    tl.store(
        dv_ptr + (base + cols64[:, None]) * value_dim + dv[None, :],
        dv_acc.to(dv_ptr.dtype.element_ty),
        mask=col_ok[:, None] & (dv[None, :] < value_dim),
    )


@triton.jit
def _dq_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    end_ptr,
    tile_end_ptr,
    scale_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    # sizes
    n_nodes,
    head_dim,
    value_dim,
    group,
    # strides (dq is contiguous like query's shape)
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_don,
    stride_doh,
    stride_dod,
    # constexpr
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    q0 = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    head64 = head.to(tl.int64)
    kv_head = (head // group).to(tl.int64)
    rows = q0 + tl.arange(0, BLOCK_M)  # (BM,)
    rows64 = rows.to(tl.int64)
    row_ok = rows < n_nodes
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_ptr + head64 * stride_qh + rows64[:, None] * stride_qn + dq[None, :] * stride_qd,
        mask=row_ok[:, None] & (dq[None, :] < head_dim),
        other=0.0,
    )  # (BM, BD)
    do = tl.load(
        do_ptr + rows64[:, None] * stride_don + head64 * stride_doh + dv[None, :] * stride_dod,
        mask=row_ok[:, None] & (dv[None, :] < value_dim),
        other=0.0,
    )  # (BM, BDV)
    lse = tl.load(lse_ptr + head64 * n_nodes + rows64, mask=row_ok, other=0.0)  # (BM,)
    delta = tl.load(delta_ptr + head64 * n_nodes + rows64, mask=row_ok, other=0.0)
    qk_scale = tl.load(scale_ptr)
    scale = tl.load(scale_ptr + 1)
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for k0 in range(0, tl.minimum(q0 + BLOCK_M, n_nodes), BLOCK_N):
        if tl.load(tile_end_ptr + k0 // BLOCK_N) > q0:  # the forward's tile skip
            cols = k0 + tl.arange(0, BLOCK_N)  # (BN,)
            cols64 = cols.to(tl.int64)
            col_ok = cols < n_nodes
            k = tl.load(
                k_ptr + kv_head * stride_kh + cols64[:, None] * stride_kn + dq[None, :] * stride_kd,
                mask=col_ok[:, None] & (dq[None, :] < head_dim),
                other=0.0,
            )  # (BN, BD)
            v = tl.load(
                v_ptr + kv_head * stride_vh + cols64[:, None] * stride_vn + dv[None, :] * stride_vd,
                mask=col_ok[:, None] & (dv[None, :] < value_dim),
                other=0.0,
            )  # (BN, BDV)
            kend = tl.load(end_ptr + cols, mask=col_ok, other=0)  # (BN,)
            vis = (cols[None, :] <= rows[:, None]) & (rows[:, None] < kend[None, :])  # (BM, BN)
            s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=ACC) * qk_scale
            p = tl.exp2(tl.where(vis, s, float("-inf")) - lse[:, None])  # (BM, BN)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee", out_dtype=ACC)  # (BM, BN)
            ds = p * (dp - delta[:, None])
            dq_acc += tl.dot(ds.to(k.dtype), k, input_precision="ieee", out_dtype=ACC)
    tl.store(
        dq_ptr + (head64 * n_nodes + rows64[:, None]) * head_dim + dq[None, :],
        (dq_acc * scale).to(dq_ptr.dtype.element_ty),
        mask=row_ok[:, None] & (dq[None, :] < head_dim),
    )


# ----------------------------------------------------------------------------- host side
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@dataclass(frozen=True)
class _Config:
    block: int  # query and key tile, in nodes (tl.dot needs at least 16)
    block_d: int  # head dims padded to a power of two, at least 16
    block_dv: int
    num_warps: int


# (kernel, precision, padded head dim) -> (tile, warps), chosen from ptxas's register report for
# sm_90a (`python -m tempo_rl.benchmarks.compile_tree_attention`): no spills in float16 and bfloat16
# up to head dim 128. float32 and float64 dots run on CUDA cores (full precision, no TF32), need more
# registers per tile, and spill a little in dK/dV at every tile tried (reported there); head dim 256
# in float32/float64 has not been compiled. Not tuned for speed: no GPU has timed these yet.
_TILES = {
    ("forward", "half", 64): (64, 4),
    ("forward", "half", 128): (64, 8),
    ("forward", "half", 256): (32, 8),
    ("dkdv", "half", 64): (64, 8),
    ("dkdv", "half", 128): (32, 8),
    ("dkdv", "half", 256): (16, 4),
    ("dq", "half", 64): (64, 4),
    ("dq", "half", 128): (32, 8),
    ("dq", "half", 256): (16, 4),
    ("forward", "full", 64): (32, 8),
    ("forward", "full", 128): (32, 8),
    ("forward", "full", 256): (16, 4),
    ("dkdv", "full", 64): (32, 8),
    ("dkdv", "full", 128): (16, 8),
    ("dkdv", "full", 256): (16, 8),
    ("dq", "full", 64): (32, 8),
    ("dq", "full", 128): (16, 4),
    ("dq", "full", 256): (16, 4),
}


def _config(kernel: str, head_dim: int, value_dim: int, dtype: torch.dtype, block: int | None) -> _Config:
    """Tiles and warps for one kernel (`block`, when given, overrides the tile: tests pass 16)."""
    bd, bdv = (max(16, triton.next_power_of_2(x)) for x in (head_dim, value_dim))
    precision = "half" if dtype in (torch.float16, torch.bfloat16) else "full"
    tile, warps = _TILES[(kernel, precision, max(64, bd, bdv))]
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        tile = block
    return _Config(tile, bd, bdv, warps)


def _meta(cfg: _Config, dtype: torch.dtype) -> dict:
    return dict(
        ACC=_tl_acc(dtype),
        BLOCK_M=cfg.block,
        BLOCK_N=cfg.block,
        BLOCK_D=cfg.block_d,
        BLOCK_DV=cfg.block_dv,
        num_warps=cfg.num_warps,
    )


def _tile_end(end: torch.Tensor, block: int) -> torch.Tensor:
    """(ceil(N / block),) int64: the largest subtree_end in each key tile (0 for padding)."""
    n = end.numel()
    pad = -n % block
    return torch.nn.functional.pad(end, (0, pad)).view(-1, block).amax(dim=1)


def _scales(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[scale * log2(e), scale] in the accumulation dtype: a Python float argument would reach the
    kernel as float32, which float64 inputs cannot afford."""
    return torch.tensor([scale * math.log2(math.e), scale], dtype=_acc_dtype(dtype), device=device)


def _forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, end: torch.Tensor, scales: torch.Tensor, block
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (N, H, Dv), lse (H, N) base 2) with one launch of `_forward_kernel`."""
    h, n, d = query.shape
    hk, dv = key.shape[0], value.shape[2]
    cfg = _config("forward", d, dv, query.dtype, block)
    out = torch.empty((n, h, dv), dtype=query.dtype, device=query.device)
    lse = torch.empty((h, n), dtype=_acc_dtype(query.dtype), device=query.device)
    if n:
        _forward_kernel[(triton.cdiv(n, cfg.block), h)](
            query,
            key,
            value,
            end,
            _tile_end(end, cfg.block),
            scales,
            out,
            lse,
            n,
            d,
            dv,
            h // hk,
            *query.stride(),
            *key.stride(),
            *value.stride(),
            *out.stride(),
            **_meta(cfg, query.dtype),
        )
    return out, lse


def _backward(
    grad: torch.Tensor, saved: tuple[torch.Tensor, ...], block: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) from dO (N, H, Dv): `_dkdv_kernel` and `_dq_kernel`, one launch each."""
    query, key, value, end, scales, out, lse = saved
    h, n, d = query.shape
    hk, dv = key.shape[0], value.shape[2]
    acc = _acc_dtype(query.dtype)
    delta = (grad.to(acc) * out.to(acc)).sum(-1).t().contiguous()  # (H, N) rowsum(dO * O)
    dq = torch.empty_like(query, memory_format=torch.contiguous_format)
    dk = torch.empty_like(key, memory_format=torch.contiguous_format)
    dvv = torch.empty_like(value, memory_format=torch.contiguous_format)
    if n:
        sizes = (n, d, dv, h // hk, *query.stride(), *key.stride(), *value.stride(), *grad.stride())
        kv = _config("dkdv", d, dv, query.dtype, block)
        _dkdv_kernel[(triton.cdiv(n, kv.block), hk)](
            query, key, value, grad, end, _tile_end(end, kv.block), scales, lse, delta, dk, dvv, *sizes,
            **_meta(kv, query.dtype),
        )  # fmt: skip
        qc = _config("dq", d, dv, query.dtype, block)
        _dq_kernel[(triton.cdiv(n, qc.block), h)](
            query, key, value, grad, end, _tile_end(end, qc.block), scales, lse, delta, dq, *sizes,
            **_meta(qc, query.dtype),
        )  # fmt: skip
    return dq, dk, dvv


def _device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensors' GPU, not the current one."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class _TreeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, end, scale: float, block: int | None):
        scales = _scales(scale, query.dtype, query.device)
        with _device(query):
            out, lse = _forward(query, key, value, end, scales, block)
        ctx.save_for_backward(query, key, value, end, scales, out, lse)
        ctx.block = block
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        with _device(grad):
            dq, dk, dv = _backward(grad, ctx.saved_tensors, ctx.block)
        return dq, dk, dv, None, None, None


def tree_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    subtree_end: torch.Tensor,
    *,
    scale: float,
    block: int | None = None,
) -> torch.Tensor:
    """`fast.tree_attention.tree_attention_dfs` with the Triton kernels (same arguments, already
    checked there; returns (N, H, Dv)). CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
    block: query/key tile size (default from the head dims; tests pass 16 to cross tiles)."""
    d, dv = query.shape[2], value.shape[2]
    if max(d, dv) > _MAX_HEAD_DIM:
        raise ValueError(f"query and value head dims must be at most {_MAX_HEAD_DIM} for the Triton kernel")
    return _TreeAttention.apply(query, key, value, subtree_end.contiguous(), scale, block)
