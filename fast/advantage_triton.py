"""TEMPO advantages with Triton: one program per group reads its tokens once, one pass writes.

Same algorithm and float64 numerics as `advantage_torch` (proofs_notes/fast-algorithm.md):

1. `_group_kernel`, one program per group: streams the group's token rows in column blocks, each
   token read at most once (and only while the row still shares a prefix with another member),
   keeping the G x G lcp matrix in registers; then computes mu_g, sigma_g and the TD at each
   branch token (t = lcp(i, k) < n_i) by sequential sums over members in member order. It stores
   per row the GRPO value and at most G (position, value) branch points.
2. `_write_kernel`, one program per (row, column block): writes every advantage exactly once,
   the row's GRPO value except at its branch points, 0 past n_i or where loss_mask is 0.

Reductions are either exact (integer min/count, max over equal values) or sequential over the
group's members, so BLOCK_G (chosen from the batch's largest group) never changes a bit: the
output is batch invariant (spec 5b), and non-branch tokens hold the very number td_coef = 0 gives.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tempo_rl._validate import Batch

from ._groups import GroupLayout

_NO_LCP = 2**30  # "no mismatch seen yet"; larger than any length


@triton.jit
def _group_kernel(
    # pointers
    tokens_ptr, lengths_ptr, rewards_ptr, order_ptr, offsets_ptr, sizes_ptr, params_ptr,
    row_value_ptr, branch_pos_ptr, branch_value_ptr,
    # strides
    stride_tb, stride_tl,
    # constexpr
    NORM_BY_STD: tl.constexpr, WITH_TD: tl.constexpr, NO_LCP: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
):
    group = tl.program_id(0)
    start = tl.load(offsets_ptr + group)
    size = tl.load(sizes_ptr + group).to(tl.int32)
    slot = tl.arange(0, BLOCK_G)
    member = slot < size
    rows = tl.load(order_ptr + start + slot, mask=member, other=0)  # (BG,) batch rows
    n = tl.load(lengths_ptr + rows, mask=member, other=0).to(tl.int32)  # (BG,)
    r = tl.load(rewards_ptr + rows, mask=member, other=0.0).to(tl.float64)  # (BG,)
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
    r_max = tl.max(tl.where(member, r, -float("inf")), axis=0)
    r_min = tl.min(tl.where(member, r, float("inf")), axis=0)
    degenerate = (r_max == r_min) | (size < 2)
    if NORM_BY_STD:
        denom = sigma + eps
    else:
        denom = sigma * 0.0 + 1.0
    denom = tl.where(degenerate, 1.0, denom)  # eps = 0 with equal rewards: never compute 0 / 0
    row_value = tl.where(degenerate, 0.0, centred / denom)
    tl.store(row_value_ptr + rows, row_value.to(row_value_ptr.dtype.element_ty), mask=member)

    if WITH_TD:
        pair = member[:, None] & member[None, :] & (slot[:, None] != slot[None, :])  # (BG, BG)
        lcp = tl.full((BLOCK_G, BLOCK_G), NO_LCP, tl.int32)
        width = tl.max(n, axis=0)
        col0 = 0
        open_pairs = tl.sum(tl.sum(pair.to(tl.int32), axis=1), axis=0)
        # Read each token once, and a row only while it still shares a prefix with someone.
        while (col0 < width) & (open_pairs > 0):
            cols = col0 + tl.arange(0, BLOCK_L)  # (BL,)
            row_open = tl.max((pair & (lcp == NO_LCP)).to(tl.int32), axis=1) > 0  # (BG,)
            load = row_open[:, None] & (cols[None, :] < n[:, None])  # (BG, BL)
            tok = tl.load(tokens_ptr + rows[:, None] * stride_tb + cols[None, :] * stride_tl,
                          mask=load, other=0)  # (BG, BL)
            differ = tok[:, None, :] != tok[None, :, :]  # (BG, BG, BL)
            first = tl.min(tl.where(differ, cols[None, None, :], NO_LCP), axis=2)  # (BG, BG)
            lcp = tl.minimum(lcp, first)  # a mismatch past min(n_i, n_k) is clamped below
            open_pairs = tl.sum(tl.sum((pair & (lcp == NO_LCP)).to(tl.int32), axis=1), axis=0)
            col0 += BLOCK_L
        lcp = tl.minimum(lcp, tl.minimum(n[:, None], n[None, :]))  # diagonal: n_i
        lcp = tl.where(member[:, None] & member[None, :], lcp, -1)

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
        td = (s_child / tl.maximum(n_child, 1).to(tl.float64)
              - s_parent / tl.maximum(n_parent, 1).to(tl.float64))
        scaled = td_coef * td
        value = (centred[:, None] + scaled) / denom
        branch = (lcp >= 0) & (lcp < n[:, None]) & (degenerate == 0)
        where = rows[:, None] * BLOCK_G + slot[None, :]
        tl.store(branch_pos_ptr + where, tl.where(branch, lcp, -1), mask=member[:, None])
        tl.store(branch_value_ptr + where, value.to(branch_value_ptr.dtype.element_ty),
                 mask=member[:, None])


@triton.jit
def _write_kernel(
    # pointers
    out_ptr, lengths_ptr, row_value_ptr, branch_pos_ptr, branch_value_ptr, loss_ptr,
    # sizes
    length,
    # strides
    stride_ob, stride_ol, stride_mb, stride_ml,
    # constexpr
    HAS_LOSS: tl.constexpr, WITH_TD: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)  # (BL,)
    in_row = cols < length
    n = tl.load(lengths_ptr + row)
    value = tl.load(row_value_ptr + row) + tl.zeros((BLOCK_L,), row_value_ptr.dtype.element_ty)
    if WITH_TD:
        slot = tl.arange(0, BLOCK_G)
        pos = tl.load(branch_pos_ptr + row * BLOCK_G + slot)  # (BG,) -1: none
        branch_value = tl.load(branch_value_ptr + row * BLOCK_G + slot)  # (BG,)
        hit = pos[:, None] == cols[None, :]  # (BG, BL)
        has = tl.max(hit.to(tl.int32), axis=0) > 0
        # Several k can name the same token; they carry the same value, so max is exact.
        best = tl.max(tl.where(hit, branch_value[:, None], -float("inf")), axis=0)
        value = tl.where(has, best, value)
    keep = cols < n
    if HAS_LOSS:
        keep = keep & (tl.load(loss_ptr + row * stride_mb + cols * stride_ml, mask=in_row, other=0) != 0)
    value = tl.where(keep, value, 0.0)
    tl.store(out_ptr + row * stride_ob + cols * stride_ol, value, mask=in_row)


def _launch(batch: Batch, *, norm_by_std: bool, eps: float, td_coef: float) -> torch.Tensor:
    b, length = batch.shape
    device = batch.device
    out = torch.empty(batch.shape, dtype=batch.dtype, device=device)
    if b == 0 or length == 0:
        return out
    layout = GroupLayout.of(batch.group_index)
    block_g = max(2, triton.next_power_of_2(int(layout.sizes.max())))
    with_td = td_coef != 0.0
    row_value = torch.empty(b, dtype=batch.dtype, device=device)
    branch_pos = torch.empty((b, block_g), dtype=torch.int32, device=device)
    branch_value = torch.empty((b, block_g), dtype=batch.dtype, device=device)
    params = torch.tensor([eps, td_coef], dtype=torch.float64, device=device)
    tokens = batch.responses
    # The 3-D pair compare holds BLOCK_G^2 * BLOCK_L values; keep it near 8K.
    block_l = max(2, min(256, 8192 // (block_g * block_g)))
    _group_kernel[(layout.sizes.numel(),)](
        tokens, batch.lengths, batch.rewards, layout.order, layout.offsets, layout.sizes, params,
        row_value, branch_pos, branch_value,
        tokens.stride(0), tokens.stride(1),
        NORM_BY_STD=norm_by_std, WITH_TD=with_td, NO_LCP=_NO_LCP, BLOCK_G=block_g, BLOCK_L=block_l,
        enable_fp_fusion=False,  # td_coef * td then +, rounded as in the torch path
    )
    loss = batch.loss_mask.view(torch.uint8) if batch.loss_mask is not None else out
    write_l = max(16, min(1024, 4096 // block_g))
    _write_kernel[(b, triton.cdiv(length, write_l))](
        out, batch.lengths, row_value, branch_pos, branch_value, loss,
        length,
        out.stride(0), out.stride(1), loss.stride(0), loss.stride(1),
        HAS_LOSS=batch.loss_mask is not None, WITH_TD=with_td, BLOCK_G=block_g, BLOCK_L=write_l,
    )
    return out


def advantages(batch: Batch, *, norm_by_std: bool, eps: float, td_coef: float) -> torch.Tensor:
    """TEMPO advantages (B, L) in batch.dtype on batch.device; td_coef = 0 gives GRPO bitwise.

    Same contract and numbers as `advantage_torch.advantages` (proofs_notes/fast-algorithm.md).
    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (how the tests run it).
    """
    return _launch(batch, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef)
