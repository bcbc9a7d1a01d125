"""TEMPO advantages with Triton: one program per group reads its tokens once, one pass writes.

Same algorithm and float64 numerics as `advantage_torch` (proofs_notes/fast-algorithm.md):

1. `_group_kernel`, one program per group: streams the group's token rows in column blocks, each
   token read at most once (and only while the row still shares a prefix with another member;
   a pair closes as soon as the shorter of its two rows ends), keeping the G x G lcp matrix in
   registers; then computes mu_g, sigma_g on the scaled rewards R / s_g and the TD at each branch
   token (t = lcp(i, k) < n_i) by sequential sums over members in member order. It stores per row
   the GRPO value and at most G (position, value) branch points, and, when tree statistics are
   wanted, the row's lcp values. A degenerate group (one member, equal rewards) reads no tokens
   unless statistics are wanted.
2. `_fill_kernel`, one program per (row, column block): writes every advantage once, the row's
   GRPO value, 0 past n_i or where loss_mask is 0.
3. `_scatter_kernel`, one program per row: overwrites the row's few branch tokens.

Reductions are either exact (integer min/count, max over equal values) or sequential over the
group's members, so BLOCK_G (chosen from the batch's largest group) never changes a bit: the
output is batch invariant (spec 5b), and non-branch tokens hold the very number td_coef = 0 gives.

Layouts: token ids and loss masks are read through their strides (any strides, 0 included),
with int64 offsets wherever a stride multiplies an index; rewards (B values) are made contiguous
at the launcher. Launches run on the inputs' device.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._groups import GroupLayout, check_finite, group_scale
from .stats_torch import STAT_COLUMNS, stats_from_lcp

_NO_LCP = 2**30  # "no mismatch seen yet"; larger than any length


@triton.jit
def _group_kernel(
    # pointers
    tokens_ptr,
    lengths_ptr,
    rewards_ptr,
    scale_ptr,
    order_ptr,
    offsets_ptr,
    sizes_ptr,
    params_ptr,
    row_value_ptr,
    branch_pos_ptr,
    branch_value_ptr,
    lcp_ptr,
    # strides
    stride_tb,
    stride_tl,
    # constexpr
    NORM_BY_STD: tl.constexpr,
    WITH_TD: tl.constexpr,
    STORE_LCP: tl.constexpr,
    NO_LCP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    group = tl.program_id(0)
    start = tl.load(offsets_ptr + group)
    size = tl.load(sizes_ptr + group).to(tl.int32)
    slot = tl.arange(0, BLOCK_G)
    member = slot < size
    rows = tl.load(order_ptr + start + slot, mask=member, other=0)  # (BG,) int64 batch rows
    n = tl.load(lengths_ptr + rows, mask=member, other=0).to(tl.int32)  # (BG,)
    raw = tl.load(rewards_ptr + rows, mask=member, other=0.0)  # (BG,) input dtype
    scale = tl.load(scale_ptr + group)  # float64 power of two: dividing by it is exact
    r = raw.to(tl.float64) / scale
    eps = tl.load(params_ptr)  # float64 scalars travel in a tensor: a Python float arg is fp32
    td_coef = tl.load(params_ptr + 1)

    # mu_g and sigma_g: sequential sums in member order (tl.sum over BLOCK_G would associate
    # according to the batch's largest group). Extracting one slot with a masked sum is exact.
    total = tl.sum(tl.where(member, 0.0, r), axis=0)  # float64 zero
    for k in range(0, size):
        total = total + tl.sum(tl.where(slot == k, r, 0.0), axis=0)
    centred = r - total / size.to(tl.float64)  # (BG,)
    squares = total * 0.0
    for k in range(0, size):
        c_k = tl.sum(tl.where(slot == k, centred, 0.0), axis=0)
        squares = squares + c_k * c_k
    sigma = tl.sqrt(squares / tl.maximum(size - 1, 1).to(tl.float64))  # f64 sqrt: correctly rounded
    r_max = tl.max(tl.where(member, raw, -float("inf")), axis=0)
    r_min = tl.min(tl.where(member, raw, float("inf")), axis=0)
    degenerate = (r_max == r_min) | (size < 2)
    denom = tl.where(degenerate, 1.0, sigma + eps / scale)  # eps = 0 with equal rewards: no 0 / 0
    if NORM_BY_STD:
        row_value = centred / denom
    else:
        row_value = centred * scale
    row_value = tl.where(degenerate, 0.0, row_value)
    tl.store(row_value_ptr + rows, row_value.to(row_value_ptr.dtype.element_ty), mask=member)

    if WITH_TD or STORE_LCP:
        pair = member[:, None] & member[None, :] & (slot[:, None] != slot[None, :])  # (BG, BG)
        shorter = tl.minimum(n[:, None], n[None, :])  # (BG, BG) a pair's lcp is at most this
        lcp = tl.full((BLOCK_G, BLOCK_G), NO_LCP, tl.int32)
        open_pairs = tl.sum(tl.sum(pair.to(tl.int32), axis=1), axis=0)
        if not STORE_LCP:
            open_pairs = tl.where(degenerate, 0, open_pairs)  # all zeros: no token needs reading
        col0 = 0
        # Read each token once, and a row only while it still shares a prefix with someone.
        while open_pairs > 0:
            cols = col0 + tl.arange(0, BLOCK_L)  # (BL,)
            row_open = tl.max((pair & (lcp == NO_LCP)).to(tl.int32), axis=1) > 0  # (BG,)
            load = row_open[:, None] & (cols[None, :] < n[:, None])  # (BG, BL)
            offsets = rows[:, None] * stride_tb + cols[None, :].to(tl.int64) * stride_tl  # int64
            tok = tl.load(tokens_ptr + offsets, mask=load, other=0)  # (BG, BL)
            differ = tok[:, None, :] != tok[None, :, :]  # (BG, BG, BL)
            first = tl.min(tl.where(differ, cols[None, None, :], NO_LCP), axis=2)  # (BG, BG)
            lcp = tl.minimum(lcp, first)  # a mismatch past min(n_i, n_k) is clamped below
            col0 += BLOCK_L
            # A pair whose shorter row has ended without a mismatch is closed: lcp = that length.
            lcp = tl.where((lcp == NO_LCP) & (shorter <= col0), shorter, lcp)
            open_pairs = tl.sum(tl.sum((pair & (lcp == NO_LCP)).to(tl.int32), axis=1), axis=0)
        lcp = tl.minimum(lcp, shorter)  # diagonal: n_i
        lcp = tl.where(member[:, None] & member[None, :], lcp, -1)
        where = rows[:, None] * BLOCK_G + slot[None, :]  # (BG, BG) int64
        if STORE_LCP:
            tl.store(lcp_ptr + where, lcp, mask=member[:, None])

        if WITH_TD:
            # TD at token t = lcp(i, k): V(>= t+1) - V(>= t) over {k' : lcp(i, k') >= t}.
            n_parent = tl.zeros((BLOCK_G, BLOCK_G), tl.int32)
            n_child = tl.zeros((BLOCK_G, BLOCK_G), tl.int32)
            s_parent = tl.zeros((BLOCK_G, BLOCK_G), tl.float64)
            s_child = tl.zeros((BLOCK_G, BLOCK_G), tl.float64)
            for k in range(0, size):
                reach = tl.sum(tl.where(slot[None, :] == k, lcp, 0), axis=1)[:, None]  # lcp(i, k)
                c_k = tl.sum(tl.where(slot == k, centred, 0.0), axis=0)
                in_parent = reach >= lcp
                in_child = reach > lcp
                n_parent += in_parent.to(tl.int32)
                n_child += in_child.to(tl.int32)
                s_parent = s_parent + tl.where(in_parent, c_k, 0.0)
                s_child = s_child + tl.where(in_child, c_k, 0.0)
            td = s_child / tl.maximum(n_child, 1).to(tl.float64) - s_parent / tl.maximum(n_parent, 1).to(tl.float64)
            numerator = centred[:, None] + td_coef * td
            if NORM_BY_STD:
                value = numerator / denom
            else:
                value = numerator * scale
            branch = (lcp >= 0) & (lcp < n[:, None]) & (degenerate == 0)
            tl.store(branch_pos_ptr + where, tl.where(branch, lcp, -1), mask=member[:, None])
            tl.store(branch_value_ptr + where, value.to(branch_value_ptr.dtype.element_ty), mask=member[:, None])


@triton.jit
def _fill_kernel(
    # pointers
    out_ptr,
    lengths_ptr,
    row_value_ptr,
    loss_ptr,
    # sizes
    length,
    # strides
    stride_ob,
    stride_ol,
    stride_mb,
    stride_ml,
    # constexpr
    HAS_LOSS: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)  # (BL,)
    in_row = cols < length
    n = tl.load(lengths_ptr + row)
    value = tl.load(row_value_ptr + row) + tl.zeros((BLOCK_L,), row_value_ptr.dtype.element_ty)
    keep = cols < n
    if HAS_LOSS:
        keep = keep & (tl.load(loss_ptr + row * stride_mb + cols * stride_ml, mask=in_row & keep, other=0) != 0)
    tl.store(out_ptr + row * stride_ob + cols * stride_ol, tl.where(keep, value, 0.0), mask=in_row)


@triton.jit
def _scatter_kernel(
    # pointers
    out_ptr,
    branch_pos_ptr,
    branch_value_ptr,
    loss_ptr,
    # strides
    stride_ob,
    stride_ol,
    stride_mb,
    stride_ml,
    # constexpr
    HAS_LOSS: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, BLOCK_G)
    pos = tl.load(branch_pos_ptr + row * BLOCK_G + slot).to(tl.int64)  # (BG,) -1: none
    value = tl.load(branch_value_ptr + row * BLOCK_G + slot)  # (BG,)
    hit = pos >= 0  # a branch token: pos < n_i by construction
    if HAS_LOSS:
        hit = hit & (tl.load(loss_ptr + row * stride_mb + pos * stride_ml, mask=hit, other=0) != 0)
    # Several k can name the same token; they carry the same value, so any store order is exact.
    tl.store(out_ptr + row * stride_ob + pos * stride_ol, value, mask=hit)


def _num_warps(block_g: int) -> int:
    """The (BG, BG, BL) compare and the BG x BG float64 accumulators spread over more threads as
    BLOCK_G grows: 4 warps up to 16, 8 at 32, 16 at 64, the fewest with no spill on sm_90a
    (`python -m tempo_rl.benchmarks.compile_kernels` reports registers and spills; a test checks)."""
    return 4 if block_g <= 16 else 8 if block_g == 32 else 16


def _block_l(block_g: int) -> int:
    """The 3-D pair compare holds BLOCK_G^2 * BLOCK_L values; keep it near 8K."""
    return max(2, min(256, 8192 // (block_g * block_g)))


def _device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch(
    responses: torch.Tensor,
    lengths: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    loss_mask: torch.Tensor | None,
    *,
    norm_by_std: bool,
    eps: float,
    td_coef: float,
    with_stats: bool,
    write: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    b, length = responses.shape
    device, dtype = responses.device, rewards.dtype
    out = torch.empty((b, length), dtype=dtype, device=device)
    n_groups = int(group_index.max()) + 1 if b else 0
    if b == 0:
        stats = torch.zeros((0, len(STAT_COLUMNS)), dtype=torch.int64, device=device)
        return out, stats if with_stats else None
    layout = GroupLayout.of(group_index)
    scale = group_scale(rewards, group_index, n_groups, eps=eps if norm_by_std else 0.0)
    block_g = max(2, triton.next_power_of_2(int(layout.sizes.max())))
    with_td = td_coef != 0.0 and length > 0
    row_value = torch.empty(b, dtype=dtype, device=device)
    branch_pos = torch.empty((b, block_g) if with_td else (1, 1), dtype=torch.int32, device=device)
    branch_value = torch.empty((b, block_g) if with_td else (1, 1), dtype=dtype, device=device)
    lcp = torch.empty((b, block_g) if with_stats else (1, 1), dtype=torch.int32, device=device)
    params = torch.tensor([eps, td_coef], dtype=torch.float64, device=device)
    rewards = rewards.contiguous()  # B values; every other input is read through its strides
    loss = loss_mask.view(torch.uint8) if loss_mask is not None else out
    with _device(responses):
        _group_kernel[(n_groups,)](
            responses,
            lengths,
            rewards,
            scale,
            layout.order,
            layout.offsets,
            layout.sizes,
            params,
            row_value,
            branch_pos,
            branch_value,
            lcp,
            responses.stride(0),
            responses.stride(1),
            NORM_BY_STD=norm_by_std,
            WITH_TD=with_td,
            STORE_LCP=with_stats,
            NO_LCP=_NO_LCP,
            BLOCK_G=block_g,
            BLOCK_L=_block_l(block_g),
            num_warps=_num_warps(block_g),
            enable_fp_fusion=False,  # td_coef * td then +, rounded as in the torch path
        )
        check_finite(row_value, "rewards")
        if with_td:
            check_finite(branch_value[branch_pos >= 0], "td_coef")
        if write and length > 0:
            fill_l = 1024
            _fill_kernel[(b, triton.cdiv(length, fill_l))](
                out,
                lengths,
                row_value,
                loss,
                length,
                out.stride(0),
                out.stride(1),
                loss.stride(0),
                loss.stride(1),
                HAS_LOSS=loss_mask is not None,
                BLOCK_L=fill_l,
            )
        if with_td:
            _scatter_kernel[(b,)](
                out,
                branch_pos,
                branch_value,
                loss,
                out.stride(0),
                out.stride(1),
                loss.stride(0),
                loss.stride(1),
                HAS_LOSS=loss_mask is not None,
                BLOCK_G=block_g,
            )
    return out, _stats(lcp, lengths, layout) if with_stats else None


def _stats(lcp: torch.Tensor, lengths: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Per-group statistics from the lcp rows the group kernel stored (one small torch pass)."""
    stats = torch.zeros((layout.n_groups, len(STAT_COLUMNS)), dtype=torch.int64, device=lcp.device)
    for size, groups in layout.by_size():
        rows = layout.members(groups, size)  # (c, G)
        stats[groups] = stats_from_lcp(lcp[rows][:, :, :size], lengths[rows])
    return stats


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
    """TEMPO advantages (B, L) and per-group tree statistics; the contract and numbers of
    `advantage_torch.advantages_and_stats` (proofs_notes/fast-algorithm.md). Runs on CUDA
    tensors, or on CPU tensors under TRITON_INTERPRET=1 (how the tests run it)."""
    return _launch(
        responses,
        lengths,
        rewards,
        group_index,
        loss_mask,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
        with_stats=with_stats,
    )


def tree_stats(responses: torch.Tensor, lengths: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(n_groups, len(STAT_COLUMNS)) int64 tree statistics from the group kernel's lcp matrices."""
    rewards = torch.zeros(responses.shape[0], dtype=torch.float32, device=responses.device)
    _, stats = _launch(
        responses,
        lengths,
        rewards,
        group_index,
        None,
        norm_by_std=True,
        eps=1e-6,
        td_coef=0.0,
        with_stats=True,
        write=False,
    )
    assert stats is not None
    return stats
