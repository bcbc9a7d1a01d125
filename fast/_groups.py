"""Where each group's rows sit in the batch, and the power-of-two scale of each group's rewards:
the layout and numerics steps both fast paths share.

Groups may be interleaved anywhere and differ in size. Sorting the rows by dense group index
(stably, so members keep their batch order) lists each group's members contiguously; every
per-group reduction then runs over that member list in that order, never across groups, which
is what makes the output batch invariant (spec 5b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The scale never drops below eps * 2^-_EPS_HEADROOM, so eps / scale stays finite.
_EPS_HEADROOM = 60


@dataclass(frozen=True)
class GroupLayout:
    """order: (B,) int64 rows grouped by group, members in batch order.
    sizes: (n_groups,) int64 group sizes G_g.  offsets: (n_groups,) int64 start of group g in `order`.
    """

    order: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def of(cls, group_index: torch.Tensor) -> GroupLayout:
        order = torch.argsort(group_index, stable=True)  # (B,)
        sizes = torch.bincount(group_index)  # (n_groups,)
        offsets = torch.cumsum(sizes, 0) - sizes  # (n_groups,)
        return cls(order=order, sizes=sizes, offsets=offsets)

    @property
    def n_groups(self) -> int:
        return self.sizes.numel()

    def members(self, groups: torch.Tensor, size: int) -> torch.Tensor:
        """(len(groups), size) batch rows of `groups`, all of size `size`, in member order."""
        return self.order[self.offsets[groups, None] + torch.arange(size, device=groups.device)]

    def by_size(self) -> list[tuple[int, torch.Tensor]]:
        """(size, group indices) for each distinct group size, smallest first."""
        return [(int(s), torch.nonzero(self.sizes == s)[:, 0]) for s in torch.unique(self.sizes).tolist()]


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0 ** exponent exactly, float64, for integer exponents in [-1074, 1023] (subnormals too)."""
    e = exponent.to(torch.int64)
    normal = (e + 1023).clamp_min(1) << 52  # biased exponent, zero mantissa
    subnormal = torch.ones_like(e) << (e + 1074).clamp(0, 51)  # 2^-1074 .. 2^-1023
    return torch.where(e >= -1022, normal, subnormal).view(torch.float64)


def group_scale(rewards: torch.Tensor, group_index: torch.Tensor, n_groups: int, *, eps: float) -> torch.Tensor:
    """(n_groups,) float64 power of two s_g with max|R_g| in [s_g, 2 s_g) (s_g >= eps 2^-60).

    Every group statistic is computed on R / s_g: dividing by a power of two is exact, and so
    commutes with every later rounding, so the result is bitwise what unscaled float64 gives
    wherever that neither overflows nor underflows, and finite where it would (rewards near
    1e308, or a std that underflows with eps = 0). proofs_notes/fast-algorithm.md, "Scale".
    """
    magnitude = torch.zeros(n_groups, dtype=torch.float64, device=rewards.device)
    magnitude = magnitude.scatter_reduce(0, group_index, rewards.to(torch.float64).abs(), "amax")  # (n_groups,)
    exponent = torch.frexp(magnitude).exponent.to(torch.int64) - 1  # magnitude = m 2^(e+1), m in [0.5, 1)
    if eps > 0:
        exponent = exponent.clamp_min(
            torch.frexp(torch.tensor(eps, dtype=torch.float64)).exponent.item() - 1 - _EPS_HEADROOM
        )
    return _power_of_two(exponent.clamp(-1074, 1023))


def check_finite(values: torch.Tensor, name: str) -> None:
    """Finite rewards can still give an advantage past the output dtype's range (Dr. GRPO on
    rewards near its limit, a huge td_coef): refuse, naming the argument, rather than return inf.
    values: advantages already in the output dtype."""
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"{name} too large: the advantages overflow {values.dtype} (largest finite is "
            f"{torch.finfo(values.dtype).max:.3g}); rescale it"
        )
