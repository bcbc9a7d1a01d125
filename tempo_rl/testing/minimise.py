"""Shrink a failing batch to a small one that fails the same way.

Greedy, deterministic, coarse to fine: hand the batch over contiguous, keep the row order, drop
the loss mask, drop rows (halves first, then single rows), drop columns, shorten responses, set
rewards to 0 or 1, set tokens and padding to 0, rename groups 0, 1, ...; each change is kept when
the batch still fails, and the search restarts from the smaller batch until nothing helps or the
budget of checks is spent. A batch is never made invalid: masks stay prefixes of ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from .strategies import take

__all__ = ["minimise"]


def _keep_rows(trial: Any, keep: list[int]) -> Any:
    """The trial restricted to rows `keep` (in order); its second row order restricted alike."""
    rank = {old: new for new, old in enumerate(keep)}
    order = [rank[r] for r in trial.order.tolist() if r in rank]
    shown = trial.presentation
    if shown is not None and shown.left_padded:  # the same rows stay left padded, under their new numbers
        shown = replace(shown, left_padded=tuple(rank[r] for r in shown.left_padded if r in rank))
    return replace(
        trial,
        case=take(trial.case, torch.tensor(keep, dtype=torch.long)),
        order=torch.tensor(order, dtype=torch.long),
        presentation=shown,
    )


def _with_case(trial: Any, **fields: Any) -> Any:
    return replace(trial, case=replace(trial.case, **fields))


def _drop_rows(trial: Any, still_fails: Callable[[Any], bool], budget: _Budget) -> Any:
    """Delete chunks of rows, halves first, then quarters, ... single rows (ddmin's first half)."""
    size = trial.case.responses.shape[0] // 2
    while size >= 1:
        start = 0
        while start < trial.case.responses.shape[0] and budget.left():
            B = trial.case.responses.shape[0]
            candidate = _keep_rows(trial, [r for r in range(B) if not start <= r < start + size])
            if _valid(candidate) and budget.spend() and still_fails(candidate):
                trial = candidate  # the next chunk now starts at `start`
            else:
                start += size
        size //= 2
    return trial


def _narrower(trial: Any) -> Iterator[Any]:
    case = trial.case
    L = case.responses.shape[1]
    for width in (0, L // 2, L - 1):
        if 0 <= width < L:
            cut = lambda t: None if t is None else t[:, :width].clone()  # noqa: E731
            yield _with_case(
                trial,
                responses=cut(case.responses),
                response_mask=cut(case.response_mask),
                loss_mask=cut(case.loss_mask),
            )


def _shorter(trial: Any) -> Iterator[Any]:
    case = trial.case
    for row, n in enumerate(case.lengths):
        for new in dict.fromkeys((0, n - 1)):
            if 0 <= new < n:
                mask = case.response_mask.clone()
                mask[row, new:] = False
                yield _with_case(trial, response_mask=mask)


def _simpler_rewards(trial: Any) -> Iterator[Any]:
    rewards = trial.case.rewards
    for row in range(rewards.shape[0]):
        now = rewards[row].item()
        if now == 0.0 and math.copysign(1.0, now) < 0:  # -0.0 reads as 0.0 but prints as -0.0
            now = -1.0
        for value in (0.0, 1.0):
            if now != value and now not in (0.0, 1.0)[: int(value) + 1]:  # 0 is simpler than 1: no cycles
                new = rewards.clone()
                new[row] = value
                yield _with_case(trial, rewards=new)


def _simpler_tokens(trial: Any) -> Iterator[Any]:
    case = trial.case
    real = case.response_mask.bool()
    padded = torch.where(real, case.responses, torch.zeros_like(case.responses))
    if not torch.equal(padded, case.responses):
        yield _with_case(trial, responses=padded)
    for row, col in torch.nonzero(real & (case.responses != 0)).tolist():
        now = case.responses[row, col].item()
        for value in (0, 1):
            if now != value and now not in (0, 1)[: value + 1]:  # 0 is simpler than 1: no cycles
                new = case.responses.clone()
                new[row, col] = value
                yield _with_case(trial, responses=new)


def _simpler_ids(trial: Any) -> Iterator[Any]:
    ids = trial.case.group_list
    dense: dict = {}
    renamed = [dense.setdefault(g, len(dense)) for g in ids]
    if renamed != ids:
        yield _with_case(trial, group_ids=renamed)


def _plainer_layout(trial: Any) -> Iterator[Any]:
    """The presentation dropped, then each of its tensors handed over in the default way."""
    if trial.presentation is None:
        return
    yield replace(trial, presentation=None)
    default = type(trial.presentation)()
    for name in ("responses", "response_mask", "rewards", "group_ids", "loss_mask", "left_padded"):
        if getattr(trial.presentation, name) != getattr(default, name):
            yield replace(trial, presentation=replace(trial.presentation, **{name: getattr(default, name)}))


def _plainer_order_and_loss(trial: Any) -> Iterator[Any]:
    B = trial.case.responses.shape[0]
    if not torch.equal(trial.order, torch.arange(B)):
        yield replace(trial, order=torch.arange(B))
    if trial.case.loss_mask is not None:
        yield _with_case(trial, loss_mask=None)


STEPS = (_plainer_layout, _plainer_order_and_loss, _simpler_ids, _narrower, _shorter, _simpler_rewards, _simpler_tokens)


class _Budget:
    """At most `checks` candidate checks and `seconds` of wall time."""

    def __init__(self, checks: int, seconds: float) -> None:
        self.checks, self.until = checks, time.monotonic() + seconds

    def left(self) -> bool:
        return self.checks > 0 and time.monotonic() < self.until

    def spend(self) -> bool:
        self.checks -= 1
        return self.checks >= 0


def _valid(trial: Any) -> bool:
    """A candidate whose layout still fits its values ("expanded" needs repeated values)."""
    if trial.presentation is None:
        return True
    try:
        trial.presentation.apply(trial.case)
    except ValueError:
        return False
    return True


def _greedy(
    trial: Any, step: Callable[[Any], Iterator[Any]], still_fails: Callable[[Any], bool], budget: _Budget
) -> tuple[Any, bool]:
    """Apply `step`'s first failing candidate until none fails; returns (trial, changed)."""
    changed = True
    any_change = False
    while changed and budget.left():
        changed = False
        for candidate in step(trial):
            if not _valid(candidate):
                continue
            if not (budget.left() and budget.spend()):
                break
            if still_fails(candidate):
                trial, changed, any_change = candidate, True, True
                break
    return trial, any_change


def minimise(trial: Any, still_fails: Callable[[Any], bool], *, checks: int = 2000, seconds: float = 60.0) -> Any:
    """The smallest trial reached from `trial` by changes that keep `still_fails(trial)` true.

    Args:
        trial: has `.case` (a contiguous Case), `.presentation` (or None) and `.order` (B,).
        still_fails: runs the check on a candidate; True when it fails the same way.
        checks, seconds: stop after this many candidate checks or this much time (a slow
            implementation then gets a larger, still failing, batch).
    """
    budget = _Budget(checks, seconds)
    changed = True
    while changed and budget.left():
        B = trial.case.responses.shape[0]
        trial = _drop_rows(trial, still_fails, budget)
        changed = trial.case.responses.shape[0] != B
        for step in STEPS:
            trial, step_changed = _greedy(trial, step, still_fails, budget)
            changed |= step_changed
    return trial
