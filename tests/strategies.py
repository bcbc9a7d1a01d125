"""Hypothesis strategies for random TEMPO batches.

Batches are built to exercise the tree: tiny vocabularies and copied prefixes (so responses
share prefixes and branch at any depth), ragged lengths including 0 and L, groups of any size
interleaved anywhere, padding values that collide with real token ids, and binary, continuous,
equal and offset rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Hashable

import torch
from hypothesis import strategies as st


@dataclass(frozen=True)
class Case:
    """One batch: padded tensors plus the ragged view the reference takes."""

    responses: torch.Tensor  # (B, L) int
    response_mask: torch.Tensor  # (B, L) bool
    rewards: torch.Tensor  # (B,) float32 or float64
    group_ids: list[Hashable]
    loss_mask: torch.Tensor | None  # (B, L) bool

    @property
    def sequences(self) -> list[list[int]]:
        lengths = self.response_mask.sum(1).tolist()
        return [row[:n] for row, n in zip(self.responses.tolist(), lengths)]

    @property
    def reward_list(self) -> list[float]:
        return self.rewards.tolist()

    def kwargs(self) -> dict:
        return {"loss_mask": self.loss_mask}

    def args(self) -> tuple:
        return (self.responses, self.response_mask, self.rewards, self.group_ids)

    def with_rewards(self, rewards: torch.Tensor) -> Case:
        return replace(self, rewards=rewards)


@st.composite
def _group_sequences(draw, size: int, max_len: int, vocab: int) -> list[list[int]]:
    """G sequences that share prefixes: each new one copies a prefix of an earlier one."""
    tokens = st.integers(0, vocab - 1)
    seqs: list[list[int]] = []
    for _ in range(size):
        n = draw(st.integers(0, max_len))
        if seqs and draw(st.booleans()):
            src = draw(st.sampled_from(seqs))
            keep = draw(st.integers(0, min(n, len(src))))
            seq = src[:keep] + draw(st.lists(tokens, min_size=n - keep, max_size=n - keep))
        else:
            seq = draw(st.lists(tokens, min_size=n, max_size=n))
        seqs.append(seq)
    return seqs


@st.composite
def rewards_for(draw, size: int) -> list[float]:
    kind = draw(st.sampled_from(["binary", "continuous", "equal", "offset", "few"]))
    if kind == "binary":
        return [float(draw(st.integers(0, 1))) for _ in range(size)]
    if kind == "equal":
        value = draw(st.floats(-10, 10, allow_nan=False, width=32))
        return [value] * size
    if kind == "offset":  # |R| >> spread: values must keep their precision
        base = draw(st.sampled_from([1e3, -1e4, 1e5]))
        return [base + draw(st.integers(0, 3)) * 0.25 for _ in range(size)]
    if kind == "few":
        return [draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])) for _ in range(size)]
    return [draw(st.floats(-5, 5, allow_nan=False, width=32)) for _ in range(size)]


@st.composite
def cases(
    draw,
    *,
    max_batch: int = 10,
    max_len: int = 8,
    max_group: int = 6,
    max_vocab: int | None = None,
    with_loss_mask: bool | None = None,
    float64: bool | None = None,
) -> Case:
    """A random batch of interleaved groups."""
    n_groups = draw(st.integers(0, max(1, max_batch // 2)))
    sizes = [draw(st.integers(1, max_group)) for _ in range(n_groups)]
    while sum(sizes) > max_batch:
        sizes.pop()
    big_vocab = max_vocab is None and draw(st.booleans()) and draw(st.booleans())
    vocab = 2**31 - 1 if big_vocab else draw(st.integers(1, max_vocab or 3))
    L = draw(st.integers(0, max_len))
    group_names = draw(
        st.lists(st.one_of(st.integers(-5, 50), st.text(max_size=3)), min_size=n_groups,
                 max_size=n_groups, unique=True)
    )
    rows: list[tuple[Hashable, list[int], float]] = []
    for name, size in zip(group_names, sizes):
        seqs = draw(_group_sequences(size, L, vocab))
        rews = draw(rewards_for(size))
        rows += [(name, s, r) for s, r in zip(seqs, rews)]
    order = draw(st.permutations(range(len(rows))))  # interleave groups anywhere
    rows = [rows[i] for i in order]
    B = len(rows)
    pad = draw(st.sampled_from([0, 1, -1, 2**31 - 1]))
    responses = torch.full((B, L), pad, dtype=torch.int64)
    mask = torch.zeros((B, L), dtype=torch.bool)
    for i, (_, seq, _) in enumerate(rows):
        responses[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        mask[i, : len(seq)] = True
    if draw(st.booleans()):  # padding values that collide with real tokens
        noise = draw(st.integers(0, 2))
        responses = torch.where(mask, responses, torch.full_like(responses, noise))
    use64 = draw(st.booleans()) if float64 is None else float64
    rewards = torch.tensor([r for _, _, r in rows], dtype=torch.float64 if use64 else torch.float32)
    use_loss = draw(st.booleans()) if with_loss_mask is None else with_loss_mask
    loss = None
    if use_loss:
        bits = draw(st.lists(st.booleans(), min_size=B * L, max_size=B * L))
        loss = torch.tensor(bits, dtype=torch.bool).reshape(B, L)
    return Case(responses, mask, rewards, [name for name, _, _ in rows], loss)


def case_from(seqs: list[list[int]], rews: list[float], ids: list, L: int | None = None) -> Case:
    """A padded Case from ragged lists (padding value 0, float64 rewards, no loss mask)."""
    L = max((len(s) for s in seqs), default=0) if L is None else L
    responses = torch.zeros((len(seqs), L), dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        responses[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        mask[i, : len(s)] = True
    return Case(responses, mask, torch.tensor(rews, dtype=torch.float64), list(ids), None)


def widen(case: Case, L: int, tag: Hashable) -> Case:
    """The same batch with L >= its width columns (padding 0) and group ids tagged (tag, id)."""
    B, L0 = case.responses.shape
    grow = lambda t, fill: torch.cat([t, torch.full((B, L - L0), fill, dtype=t.dtype)], 1)  # noqa: E731
    return Case(
        grow(case.responses, 0), grow(case.response_mask, False), case.rewards,
        [(tag, g) for g in case.group_ids],
        None if case.loss_mask is None else grow(case.loss_mask, False),
    )


def concat(parts: list[Case]) -> Case:
    """One batch of several (same width and reward dtype); a part without a loss mask keeps all."""
    loss = None
    if any(p.loss_mask is not None for p in parts):
        loss = torch.cat([p.loss_mask if p.loss_mask is not None else p.response_mask for p in parts])
    return Case(
        torch.cat([p.responses for p in parts]), torch.cat([p.response_mask for p in parts]),
        torch.cat([p.rewards for p in parts]), sum((p.group_ids for p in parts), []), loss,
    )


def take(case: Case, rows: torch.Tensor) -> Case:
    """The batch's rows in the order `rows` gives."""
    return Case(
        case.responses[rows], case.response_mask[rows], case.rewards[rows],
        [case.group_ids[i] for i in rows.tolist()],
        None if case.loss_mask is None else case.loss_mask[rows],
    )


def interleave(group_ids: list, shuffled: list[int]) -> torch.Tensor:
    """A row order that moves groups anywhere but keeps each group's members in their order.

    Spec 5b promises bitwise invariance for that; reordering a group's own members may change
    the last bit of a fast path's sums, which Proposition 5(a) allows there.
    """
    queues: dict = {}
    for row, gid in enumerate(group_ids):
        queues.setdefault(gid, []).append(row)
    taken = {gid: 0 for gid in queues}
    order = []
    for row in shuffled:  # the slot pattern of a random shuffle, filled group by group in order
        gid = group_ids[row]
        order.append(queues[gid][taken[gid]])
        taken[gid] += 1
    return torch.tensor(order, dtype=torch.long)
