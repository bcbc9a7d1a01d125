"""Prefix values, exactly: V and |Members| of every node on every response's path.

For token t < n_i of response i, its parent is the node y_i[:t] and its child y_i[:t+1]
(proofs_notes/tempo.md, Definition 2). Along a path the member set, and so V, changes only after
a branch token (Definition 4), so each row is a sequence of *runs*: run 0 holds the depths
0..t_1 (the root's members, the whole group), run j the depths t_j + 1..t_{j+1}, where
t_1 < t_2 < ... are the row's branch tokens. A row with J branch tokens has J + 1 runs.

Values are `Fraction`s from the P2T trie; the public wrapper converts them to float64 once.
Imports nothing from torch or `fast/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Sequence

from .advantage import group_rows
from .trie import Node, PrefixTree


@dataclass(frozen=True)
class RowRuns:
    """One response's path, compressed.

    branch: the branch tokens t_1 < ... < t_J.  value, count: V and |Members| of each of the
    J + 1 runs.  first: the smallest batch row among each run's members (it names the member set,
    so (first, depth) names a node across rows).
    """

    branch: list[int]
    value: list[Fraction]
    count: list[int]
    first: list[int]


def _first_member(tree: PrefixTree, rows: list[int]) -> dict[int, int]:
    """id(node) -> smallest batch row through it (rows are in batch order, so the first visit)."""
    first: dict[int, int] = {}
    for k, row in enumerate(rows):
        for node in tree.path(k):
            first.setdefault(id(node), row)
    return first


def _row_runs(path: list[Node], first: dict[int, int]) -> RowRuns:
    runs = RowRuns(branch=[], value=[path[0].value], count=[path[0].count], first=[first[id(path[0])]])
    for t, (parent, child) in enumerate(zip(path, path[1:])):
        if child.count != parent.count:  # a branch token: a new member set starts at depth t + 1
            runs.branch.append(t)
            runs.value.append(child.value)
            runs.count.append(child.count)
            runs.first.append(first[id(child)])
    return runs


def prefix_values(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float | Fraction],
    group_ids: Sequence[Hashable],
) -> list[RowRuns]:
    """The runs of every response, exact.

    Args:
        sequences: B token sequences y_i (ragged, padding already removed).
        rewards: (B,) finite rewards (raw: not centred, not scaled).
        group_ids: (B,) hashable group ids.

    Example (proofs_notes/tempo.md, Example 1): one branch, at token 1 of both responses.
    >>> [(r.branch, r.value, r.count) for r in prefix_values([[7, 1], [7, 2]], [1.0, 0.0], ["q", "q"])]
    [([1], [Fraction(1, 2), Fraction(1, 1)], [2, 1]), ([1], [Fraction(1, 2), Fraction(0, 1)], [2, 1])]
    """
    if not (len(sequences) == len(rewards) == len(group_ids)):
        raise ValueError(
            f"sequences, rewards and group_ids differ in length: {len(sequences)}, {len(rewards)}, {len(group_ids)}"
        )
    out: list[RowRuns | None] = [None] * len(sequences)
    for rows in group_rows(group_ids).values():
        tree = PrefixTree([sequences[i] for i in rows], [rewards[i] for i in rows])
        first = _first_member(tree, rows)
        for k, i in enumerate(rows):
            out[i] = _row_runs(tree.path(k), first)
    return out  # type: ignore[return-value]
