"""Prefix values: the statistic every tree-credit estimator is built from, as a public primitive.

For token t < n_i of response i, the parent is the prefix y_i[:t] and the child y_i[:t+1];
V(s) is the mean reward of the group's responses that start with s and n(s) their number
(proofs_notes/tempo.md, Definition 2). TEMPO's TD is V(child) - V(parent); TreeRL-, TreePO- and
TreeRPO-style estimators use the same V and n (proofs_notes/prefix-values.md shows how).

Along a response the member set changes only after a branch token, so the result is kept
compressed: per row, its branch tokens and the value of each *run* of nodes between them.
`.dense()` expands it to (B, L) tensors.

    pv = tempo_rl.prefix_values(responses, response_mask, rewards, group_ids)
    d = pv.dense()   # d.v_parent, d.v_child (float64), d.n_parent, d.n_child (int64), d.branch (bool)

`branch_snr_stats` turns the same values into the diagnostic of proofs_notes/tree-rollouts.md,
section 1: per branch node its size m and unbiased estimates of delta^2 and sigma^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Hashable, Sequence

import torch

from ._validate import Batch, shift_rows, validate
from .backends import get_backend, resolve_backend


@dataclass(frozen=True)
class DensePrefixValues:
    """(B, L) per-token values, zero (False) at t >= n_i.

    v_parent, v_child: float64 V(y_i[:t]) and V(y_i[:t+1]), raw rewards (not centred, not scaled).
    n_parent, n_child: int64 member counts.  branch: bool, n_child < n_parent (a branch token).
    """

    v_parent: torch.Tensor
    v_child: torch.Tensor
    n_parent: torch.Tensor
    n_child: torch.Tensor
    branch: torch.Tensor


@dataclass(frozen=True)
class BranchPoints:
    """One entry per (row, branch token), flat (P,): the parent and child nodes of that token.

    row, t: int64.  v_parent, v_child: float64.  n_parent, n_child: int64.
    node: int64 id of the parent node, equal across the rows that pass through it (so
    `torch.unique(node)` lists the branch nodes); mu: float64 the row's group mean V(root).
    """

    row: torch.Tensor
    t: torch.Tensor
    v_parent: torch.Tensor
    v_child: torch.Tensor
    n_parent: torch.Tensor
    n_child: torch.Tensor
    node: torch.Tensor
    mu: torch.Tensor


@dataclass(frozen=True)
class PrefixValues:
    """Prefix values of a batch, compressed into runs (P branch tokens in all).

    lengths: (B,) int64 n_i.  branch_offsets: (B + 1,) int64, row i's branch tokens are
    branch_t[branch_offsets[i]:branch_offsets[i + 1]] (ascending).  run_value (float64),
    run_count, run_first (int64): (P + B,), row i's J_i + 1 runs start at branch_offsets[i] + i;
    run 0 holds depths 0..t_1 (the whole group), run j depths t_j + 1..t_{j+1}; run_first is the
    smallest batch row among the run's members (it names the member set).  group_index: (B,) int64
    dense group of each row (groups numbered in order of first appearance).  Depths t count from
    a response's first token; starts: (B,) int64 column of that token in the caller's layout
    (left-padded rows), or None when every row is right padded (depth t is then column t).
    """

    lengths: torch.Tensor
    branch_offsets: torch.Tensor
    branch_t: torch.Tensor
    run_value: torch.Tensor
    run_count: torch.Tensor
    run_first: torch.Tensor
    width: int  # L
    group_index: torch.Tensor
    starts: torch.Tensor | None = None

    def _root_runs(self) -> torch.Tensor:
        """(B,) index of each row's run 0 (the root's)."""
        return self.branch_offsets[:-1] + torch.arange(self.lengths.shape[0], device=self.lengths.device)

    @property
    def mu(self) -> torch.Tensor:
        """(B,) float64 V(root) of each row: its group's mean reward."""
        return self.run_value[self._root_runs()]

    @property
    def group_size(self) -> torch.Tensor:
        """(B,) int64 |Members(root)| of each row: its group's size G."""
        return self.run_count[self._root_runs()]

    def _run_of_depth(self) -> torch.Tensor:
        """(B, L + 1) index into the run arrays of the node at depth d of each row."""
        b = self.lengths.shape[0]
        device = self.lengths.device
        per_row = self.branch_offsets[1:] - self.branch_offsets[:-1]  # (B,)
        row = torch.repeat_interleave(torch.arange(b, device=device), per_row)  # (P,)
        steps = torch.zeros(b, self.width + 1, dtype=torch.int64, device=device)
        steps[row, self.branch_t + 1] = 1  # a new run starts after each branch token
        return self._root_runs()[:, None] + torch.cumsum(steps, 1)  # (B, L + 1)

    def dense(self) -> DensePrefixValues:
        """The (B, L) tensors at the responses' own columns, zero (False) on padding."""
        d = self._dense_right()
        if self.starts is None:
            return d
        back = -self.starts  # (B,) a left-padded row's depth t sits at column s_i + t
        return DensePrefixValues(
            *(shift_rows(x, back) for x in (d.v_parent, d.v_child, d.n_parent, d.n_child, d.branch))
        )

    def _dense_right(self) -> DensePrefixValues:
        """The (B, L) tensors by depth, zero past each response."""
        b, length = self.lengths.shape[0], self.width
        device = self.lengths.device
        if b == 0 or length == 0:
            zf = torch.zeros(b, length, dtype=torch.float64, device=device)
            zi = torch.zeros(b, length, dtype=torch.int64, device=device)
            return DensePrefixValues(zf, zf.clone(), zi, zi.clone(), zi.bool())
        run = self._run_of_depth()  # (B, L + 1)
        parent, child = run[:, :-1], run[:, 1:]  # (B, L) each
        real = torch.arange(length, device=device) < self.lengths[:, None]  # (B, L)
        zero_f = torch.zeros((), dtype=torch.float64, device=device)
        zero_i = torch.zeros((), dtype=torch.int64, device=device)
        return DensePrefixValues(
            v_parent=torch.where(real, self.run_value[parent], zero_f),
            v_child=torch.where(real, self.run_value[child], zero_f),
            n_parent=torch.where(real, self.run_count[parent], zero_i),
            n_child=torch.where(real, self.run_count[child], zero_i),
            branch=real & (child != parent),
        )

    def points(self) -> BranchPoints:
        """The branch tokens, flat, with their parent and child nodes."""
        b = self.lengths.shape[0]
        device = self.lengths.device
        per_row = self.branch_offsets[1:] - self.branch_offsets[:-1]  # (B,)
        row = torch.repeat_interleave(torch.arange(b, device=device), per_row)  # (P,)
        root = self._root_runs()  # (B,)
        j = torch.arange(row.numel(), device=device) - self.branch_offsets[row]  # (P,) rank in row
        parent = root[row] + j  # run j holds the parent of branch token j, run j + 1 its child
        node = self.run_first[parent] * (self.width + 1) + self.branch_t  # (member set, depth)
        return BranchPoints(
            row=row,
            t=self.branch_t,
            v_parent=self.run_value[parent],
            v_child=self.run_value[parent + 1],
            n_parent=self.run_count[parent],
            n_child=self.run_count[parent + 1],
            node=node,
            mu=self.run_value[root[row]],
        )


def _runs(batch: Batch, backend: str) -> PrefixValues:
    fn = get_backend(resolve_backend(backend, batch.device)).prefix_runs
    runs = fn(batch.responses, batch.lengths, batch.rewards, batch.group_index)
    return PrefixValues(
        batch.lengths,
        runs.branch_offsets,
        runs.branch_t,
        runs.run_value,
        runs.run_count,
        runs.run_first,
        width=batch.shape[1],
        group_index=batch.group_index,
        starts=batch.starts,
    )


def prefix_values(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    backend: str = "auto",
) -> PrefixValues:
    """V and member counts of the parent and child of every token (proofs_notes/prefix-values.md).

    Args:
        responses: (B, L) int token ids, right- or left-padded (padding values are never read).
        response_mask: (B, L) bool or 0/1; each row a prefix (right padding) or a suffix (left
            padding) of ones, n_i of them.
        rewards: (B,) finite float rewards; used raw (float32 rewards are exact in float64).
        group_ids: (B,) ints or hashables; same id = same prompt.
        backend: "reference" (exact, then one rounding to float64), "torch" (float64 sums from the
            lcp matrix; equal to the reference within float64 rounding), "triton" (the torch path on
            the same device) or "auto".

    Returns:
        `PrefixValues` on responses' device; `.dense()` gives the (B, L) tensors.

    >>> import torch, tempo_rl
    >>> y = torch.tensor([[7, 1], [7, 2]])
    >>> d = tempo_rl.prefix_values(y, torch.ones_like(y), [1.0, 0.0], [0, 0]).dense()
    >>> d.v_parent.tolist(), d.v_child.tolist(), d.n_child.tolist(), d.branch.tolist()
    ([[0.5, 0.5], [0.5, 0.5]], [[0.5, 1.0], [0.5, 0.0]], [[2, 1], [2, 1]], [[False, True], [False, True]])
    """
    batch = validate(responses, response_mask, rewards, group_ids)
    return _runs(batch, backend)


def predicted_snr_ratio(m, r, rho=0.0, *, td_coef: float = 1.0):
    """SNR(TEMPO) / SNR(GRPO) at one node with m members (proofs_notes/tree-rollouts.md, Proposition T2).

    a^2 (1 + r - rho) / (a^2 + b + r - rho (a^2 - b)), a = 1 + td_coef (1 - 1/m), b = (m - 1) td_coef^2 / m^2;
    with td_coef = 1: (2 - 1/m)^2 (1 + r - rho) / (4 - 3/m + r - rho (4 - 5/m + 2/m^2)).

    Args:
        m: members of the node (float or tensor, >= 1).
        r: delta^2 / sigma^2, the squared offset of the node's value from mu over the outcome variance below it.
        rho: |g|^2 / (sigma^2 F) in [0, 1]; 0 is the small-signal limit.
        td_coef: TEMPO's weight on TD.

    >>> round(predicted_snr_ratio(2, 0.0), 4), round(predicted_snr_ratio(8, 0.2), 4)
    (0.9, 1.1029)
    """
    a = 1 + td_coef * (1 - 1 / m)
    b = (m - 1) * td_coef**2 / (m * m)
    return a * a * (1 + r - rho) / (a * a + b + r - rho * (a * a - b))


@dataclass(frozen=True)
class BranchSNRStats:
    """One entry per branch node of the batch (N nodes): tensors (N,).

    m: int64 members.  depth: int64 |s|.  group_size: int64 G.  offset: float64 V(s) - mu.
    sigma2: float64 unbiased estimate of sigma_s^2 = Var(R | s) (divisor m - 1).
    delta2: float64 unbiased estimate of delta_s^2 = (E[R | s] - mu)^2, offset^2 - sigma2 / m.
    Unbiased when the members continue from s independently and mu does not depend on their
    rewards (the assumptions of Proposition T2; nodes holding most of the group break the second).
    """

    m: torch.Tensor
    depth: torch.Tensor
    group_size: torch.Tensor
    offset: torch.Tensor
    sigma2: torch.Tensor
    delta2: torch.Tensor

    def by_size(self) -> dict[int, dict[str, float]]:
        """Per node size m: node count, summed estimates, r = sum delta2 / sum sigma2, predicted ratio.

        The ratio of two unbiased sums is consistent as nodes accumulate, not unbiased itself.
        """
        out = {}
        for m in sorted(set(self.m.tolist())):
            pick = self.m == m
            d2, s2 = float(self.delta2[pick].sum()), float(self.sigma2[pick].sum())
            r = d2 / s2 if s2 > 0 else math.nan
            ratio = float(predicted_snr_ratio(m, max(r, 0.0))) if s2 > 0 else math.nan
            out[m] = {
                "nodes": int(pick.sum()),
                "delta2_sum": d2,
                "sigma2_sum": s2,
                "r": r,
                "predicted_snr_ratio": ratio,
            }
        return out

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers a trainer can log, the same four keys every step (docs/metrics.md): node count,
        mean m, and r pooled over the nodes with m < G (sum delta2 / sum sigma2) with their count.
        Undefined values are 0.0, never NaN and never left out: mean m when no group branches (m >= 2
        at every branch node), r when no node below a whole group has outcome variance."""
        inner = self.m < self.group_size  # the root-level node of a group has mu = V(s) by construction
        d2, s2 = float(self.delta2[inner].sum()), float(self.sigma2[inner].sum())
        return {
            f"{prefix}branch_nodes": float(self.m.numel()),
            f"{prefix}branch_inner_nodes": float(inner.sum()),
            f"{prefix}branch_node_mean_m": float(self.m.double().mean()) if self.m.numel() else 0.0,
            f"{prefix}branch_r_unbiased": d2 / s2 if s2 > 0 else 0.0,
        }


# sqrt of float64's largest value, with room for summing a group's squares: past it sigma^2 is inf.
MAX_SNR_SPREAD = 1e150


def branch_snr_stats(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    backend: str = "auto",
) -> BranchSNRStats:
    """Per branch node: m, and unbiased delta^2, sigma^2 (proofs_notes/tree-rollouts.md, section 1).

    Two passes of `prefix_values`: one on R, one on (R - mu_g)^2, whose V(s) is the node's mean
    squared offset; sigma2 = m / (m - 1) * (that - (V(s) - mu)^2). Same arguments as `prefix_values`.
    """
    batch = validate(responses, response_mask, rewards, group_ids)
    first = _runs(batch, backend)
    spread = (batch.rewards.to(torch.float64) - first.mu).abs()  # (B,)
    if spread.numel() and float(spread.max()) > MAX_SNR_SPREAD:
        raise ValueError(
            f"rewards: a reward lies {float(spread.max()):.3g} from its group's mean; the branch SNR squares "
            f"these offsets, which overflows float64 past {MAX_SNR_SPREAD:.0e}: rescale the rewards"
        )
    squares = spread**2  # (B,)
    second = _runs(replace(batch, rewards=squares, loss_mask=None), backend)
    p, q = first.points(), second.points()
    keep = _first_of_each(p.node)  # one entry per node (its rows all report it)
    m = p.n_parent[keep]
    offset = p.v_parent[keep] - p.mu[keep]
    sigma2 = (m / (m - 1)) * (q.v_parent[keep] - offset * offset).clamp_min(0.0)  # m >= 2 at a branch
    return BranchSNRStats(
        m=m,
        depth=p.t[keep],
        group_size=first.group_size[p.row[keep]],
        offset=offset,
        sigma2=sigma2,
        delta2=offset * offset - sigma2 / m,
    )


def _first_of_each(key: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct value of key (P,), in sorted key order."""
    sorted_key, order = torch.sort(key, stable=True)
    fresh = torch.ones_like(sorted_key, dtype=torch.bool)
    fresh[1:] = sorted_key[1:] != sorted_key[:-1]
    return order[fresh]
