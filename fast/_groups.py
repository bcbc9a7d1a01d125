"""Where each group's rows sit in the batch: the one layout step both fast paths share.

Groups may be interleaved anywhere and differ in size. Sorting the rows by dense group index
(stably, so members keep their batch order) lists each group's members contiguously; every
per-group reduction then runs over that member list in that order, never across groups, which
is what makes the output batch invariant (spec 5b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def members(self, groups: torch.Tensor, size: int) -> torch.Tensor:
        """(len(groups), size) batch rows of `groups`, all of size `size`, in member order."""
        return self.order[self.offsets[groups, None] + torch.arange(size, device=groups.device)]

    def by_size(self) -> list[tuple[int, torch.Tensor]]:
        """(size, group indices) for each distinct group size, smallest first."""
        return [(int(s), torch.nonzero(self.sizes == s)[:, 0]) for s in torch.unique(self.sizes).tolist()]
