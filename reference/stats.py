"""Tree statistics: how much a group branches, and so how much TEMPO differs from GRPO.

A branch token (TD possibly non-zero) is a token whose child prefix has fewer members than its
parent; every other token is exactly GRPO (proofs_notes/tempo.md, Proposition 1). The trainer
logs these per step; `tempo_rl.tree_stats` returns them for a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Sequence

from .advantage import group_rows
from .trie import PrefixTree


@dataclass(frozen=True)
class GroupTreeStats:
    """Statistics of one group's prefix tree."""

    n_responses: int
    n_tokens: int  # sum of n_k
    n_nodes: int  # distinct prefixes, the empty root included
    n_branch_nodes: int  # nodes with more than one continuation ("end" counts as one)
    n_branch_tokens: int  # tokens t of responses k with |Members(child)| < |Members(parent)|
    first_branch_depth: int | None  # |s| of the shallowest branch node; None if none
    max_depth: int  # longest response
    branch_depth_sum: int = 0  # sum of |s| over branch nodes

    @property
    def branch_token_fraction(self) -> float:
        return self.n_branch_tokens / self.n_tokens if self.n_tokens else 0.0

    @property
    def mean_branch_depth(self) -> float | None:
        """Mean |s| over branch nodes: where the TD term can act (None if the group never branches)."""
        return self.branch_depth_sum / self.n_branch_nodes if self.n_branch_nodes else None


@dataclass(frozen=True)
class TreeStats:
    """Per-group statistics and their batch totals."""

    groups: dict[Hashable, GroupTreeStats] = field(repr=False)
    n_groups: int
    n_responses: int
    n_tokens: int
    n_nodes: int
    n_branch_nodes: int
    n_branch_tokens: int
    max_depth: int
    mean_first_branch_depth: float | None  # over the groups that branch
    branch_depth_sum: int = 0  # sum of |s| over every group's branch nodes

    @property
    def branch_token_fraction(self) -> float:
        return self.n_branch_tokens / self.n_tokens if self.n_tokens else 0.0

    @property
    def mean_branch_depth(self) -> float | None:
        """Mean |s| over all branch nodes of the batch (None if no group branches)."""
        return self.branch_depth_sum / self.n_branch_nodes if self.n_branch_nodes else None

    @property
    def nodes_per_group(self) -> float:
        return self.n_nodes / self.n_groups if self.n_groups else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat batch metrics for logging (no per-group entries)."""
        out = {k: v for k, v in asdict(self).items() if k != "groups"}
        out["branch_token_fraction"] = self.branch_token_fraction
        out["nodes_per_group"] = self.nodes_per_group
        out["mean_branch_depth"] = self.mean_branch_depth
        return out

    def select(self, keep: Callable[[Hashable], bool]) -> TreeStats:
        """The statistics of the groups whose id passes `keep`, batch totals recomputed."""
        return combine({gid: g for gid, g in self.groups.items() if keep(gid)})

    def as_metrics(self, prefix: str = "tempo/") -> dict[str, float]:
        """The per-step tree metrics the trainer and every integration log, as floats: the same keys
        every step (docs/metrics.md). The depth metrics are 0.0 in a batch where no group branches
        (`branch_nodes_per_group` is 0.0 there too), so a dashboard's series never has a gap."""
        values = {
            "branch_token_fraction": self.branch_token_fraction,
            "nodes_per_group": self.nodes_per_group,
            "branch_nodes_per_group": self.n_branch_nodes / self.n_groups if self.n_groups else 0.0,
            "first_branch_depth": self.mean_first_branch_depth,
            "mean_branch_depth": self.mean_branch_depth,
            "max_depth": self.max_depth,
        }
        return {prefix + k: float(v or 0.0) for k, v in values.items()}


def group_tree_stats(tree: PrefixTree) -> GroupTreeStats:
    n_nodes = n_branch_nodes = branch_depth_sum = 0
    first_branch: int | None = None
    for node in tree.nodes():
        n_nodes += 1
        if node.is_branch:
            n_branch_nodes += 1
            branch_depth_sum += node.depth
            if first_branch is None or node.depth < first_branch:
                first_branch = node.depth
    n_branch_tokens = sum(sum(tree.is_branch_token(k)) for k in range(len(tree)))
    return GroupTreeStats(
        n_responses=len(tree),
        n_tokens=sum(len(s) for s in tree.sequences),
        n_nodes=n_nodes,
        n_branch_nodes=n_branch_nodes,
        n_branch_tokens=n_branch_tokens,
        first_branch_depth=first_branch,
        max_depth=max((len(s) for s in tree.sequences), default=0),
        branch_depth_sum=branch_depth_sum,
    )


def combine(groups: dict[Hashable, GroupTreeStats]) -> TreeStats:
    """Batch totals of per-group statistics (shared by every backend that computes them)."""
    stats = list(groups.values())
    depths = [g.first_branch_depth for g in stats if g.first_branch_depth is not None]
    return TreeStats(
        groups=groups,
        n_groups=len(stats),
        n_responses=sum(g.n_responses for g in stats),
        n_tokens=sum(g.n_tokens for g in stats),
        n_nodes=sum(g.n_nodes for g in stats),
        n_branch_nodes=sum(g.n_branch_nodes for g in stats),
        n_branch_tokens=sum(g.n_branch_tokens for g in stats),
        max_depth=max((g.max_depth for g in stats), default=0),
        mean_first_branch_depth=sum(depths) / len(depths) if depths else None,
        branch_depth_sum=sum(g.branch_depth_sum for g in stats),
    )


def tree_stats(sequences: Sequence[Sequence[int]], group_ids: Sequence[Hashable]) -> TreeStats:
    """Statistics of every group's tree, keyed by group id (rewards play no part)."""
    if len(sequences) != len(group_ids):
        raise ValueError(f"got {len(sequences)} sequences but {len(group_ids)} group_ids")
    groups = {
        gid: group_tree_stats(PrefixTree([sequences[i] for i in rows], [0] * len(rows)))
        for gid, rows in group_rows(group_ids).items()
    }
    return combine(groups)
