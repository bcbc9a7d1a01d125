"""A second, independent reading of the spec: the per-token loop.

This is how the authors' released code computes TEMPO (for each response, for each token, scan
the group for the responses that still share the prefix; stop once the response is alone), with
the two contract fixes: padding is never compared (only y_k = responses[k, :n_k] is), and a group
of one gives 0 rather than NaN. It shares no code with `trie.py`/`advantage.py`, so the tests
use it as an independent oracle (exact=True), and the benchmarks time it as the baseline
(exact=False, plain floats, as the authors do). Cost: O(sum_i n_i * G) per group.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Hashable, Sequence


def _one_response(seq_i, group_seqs, group_rewards, number):
    """TD of every token of y_i, scanning the group at each token."""
    alive = list(range(len(group_seqs)))  # Members(y_i[:t]) as indices into the group
    parent_value = sum((group_rewards[k] for k in alive), number(0)) / len(alive)
    tds = []
    for t, token in enumerate(seq_i):
        if len(alive) == 1:  # alone: every later prefix has the same single member
            tds.extend([number(0)] * (len(seq_i) - t))
            break
        child = [k for k in alive if len(group_seqs[k]) > t and group_seqs[k][t] == token]
        if len(child) == len(alive):
            tds.append(number(0))
            continue
        child_value = sum((group_rewards[k] for k in child), number(0)) / len(child)
        tds.append(child_value - parent_value)
        alive, parent_value = child, child_value
    return tds


def loop_tempo_advantages(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    *,
    loss_masks: Sequence[Sequence[bool]] | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
    exact: bool = True,
) -> list[list[float]]:
    """TEMPO advantages by the per-token loop; same arguments and output as the reference."""
    number = Fraction if exact else float
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(i)
    out: list[list[float]] = []
    for i, seq_i in enumerate(sequences):
        group = members[group_ids[i]]
        g_rewards = [number(rewards[k]) for k in group]
        size = len(group)
        mean = sum(g_rewards, number(0)) / size
        var = sum(((r - mean) ** 2 for r in g_rewards), number(0)) / (size - 1) if size > 1 else 0
        if size < 2 or var == 0:
            row = [0.0] * len(seq_i)
        else:
            tds = _one_response(seq_i, [sequences[k] for k in group], g_rewards, number)
            base = number(rewards[i]) - mean
            coef = number(td_coef)
            std = math.sqrt(float(var))
            row = [float(base + coef * td) for td in tds]
            if norm_by_std:
                row = [x / (std + eps) for x in row]
        if loss_masks is not None:
            row = [x if keep else 0.0 for x, keep in zip(row, loss_masks[i])]
        out.append(row)
    return out
