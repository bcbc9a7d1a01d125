"""Check a fast backend's advantages against the exact reference on a sample of whole groups.

By batch invariance (spec 5b; proofs_notes/tempo.md) a group's rows depend only on that group,
so the reference run on the sampled groups alone gives exactly the numbers the whole batch
would. The cost is bounded by `max_groups` and `max_tokens`, whatever the batch size: at the
authors' batch (3584 x 8192) the pure-Python reference on all of it takes minutes, on a few
groups about a second.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ._validate import shift_rows, validate
from .api import tempo_advantages
from .tolerances import trust_bound


class AdvantageMismatch(RuntimeError):
    """A backend's advantages differ from the reference's beyond the tolerance."""


@dataclass(frozen=True)
class TrustReport:
    groups_checked: int
    rows_checked: int
    tokens_checked: int
    max_abs_diff: float


def _sample_groups(
    group_index: torch.Tensor, lengths: torch.Tensor, *, max_groups: int, max_tokens: int, seed: int
) -> list[int]:
    """Dense indices of up to `max_groups` groups, in a seeded random order, within `max_tokens`
    (always at least one group)."""
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    tokens = torch.zeros(n_groups, dtype=torch.int64).index_add_(0, group_index.cpu(), lengths.cpu())
    order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed)).tolist()
    chosen: list[int] = []
    budget = max_tokens
    for g in order:
        if len(chosen) == max_groups:
            break
        if chosen and int(tokens[g]) > budget:
            continue
        chosen.append(g)
        budget -= int(tokens[g])
    return chosen


def _check_budget(*, atol: Any, max_groups: Any, max_tokens: Any) -> None:
    """A tolerance that compares (finite, >= 0) and a sample that holds at least one group."""
    if isinstance(atol, (bool, np.bool_)) or not isinstance(atol, numbers.Real):  # numpy scalars are Real
        raise TypeError(f"atol must be a real number, got {type(atol).__name__}")
    if not math.isfinite(atol) or atol < 0:
        raise ValueError(f"atol must be a finite number >= 0, got {atol}")
    for name, value in (("max_groups", max_groups), ("max_tokens", max_tokens)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}: the check would compare nothing")


def _check_advantages(advantages: Any, shape: tuple[int, int]) -> None:
    if not isinstance(advantages, torch.Tensor):
        raise TypeError(f"advantages must be a (B, L) tensor, got {type(advantages).__name__}")
    if tuple(advantages.shape) != shape:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected {shape} like responses")
    if not advantages.dtype.is_floating_point:
        raise TypeError(f"advantages must be a float tensor, got dtype {advantages.dtype}")


def _check_finite(advantages: torch.Tensor, batch: Any) -> None:
    """A NaN or inf anywhere is a mismatch, sampled group or not: the reference is finite on valid
    input, and one pass over the tensor costs little next to the reference on the sample."""
    bad = ~torch.isfinite(advantages)
    if bool(bad.any()):
        row, t = (int(i) for i in torch.nonzero(bad)[0])
        gid = batch.group_keys[int(batch.group_index[row])]
        raise AdvantageMismatch(
            f"advantages hold {int(bad.sum())} NaN or inf values; the first in group {gid!r}, row {row}, "
            f"token {t}: {float(advantages[row, t])} (the reference is finite on every valid batch)"
        )


def check_against_reference(
    advantages: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
    atol: float = 1e-5,
    max_groups: int = 4,
    max_tokens: int = 1 << 16,
    seed: int = 0,
) -> TrustReport:
    """Recompute `max_groups` sampled groups with backend="reference" and compare with
    `advantages` (B, L), the output of any backend on the same arguments.

    A difference above atol * max(1, |A_ref|max) raises AdvantageMismatch naming the group id, the
    batch row and the token; so does a NaN or inf anywhere in `advantages`, sampled group or not
    (the whole tensor is checked for finiteness). The sample always
    holds one group, even one over `max_tokens`, then only groups that fit the budget.

    Raises ValueError (naming the argument) for a tolerance that is NaN, inf or negative,
    max_groups or max_tokens below 1, and advantages of another shape than responses.
    """
    _check_budget(atol=atol, max_groups=max_groups, max_tokens=max_tokens)
    batch = validate(responses, response_mask, rewards, group_ids, loss_mask)
    _check_advantages(advantages, batch.shape)
    atol, max_groups, max_tokens = float(atol), int(max_groups), int(max_tokens)
    _check_finite(advantages, batch)
    chosen = _sample_groups(batch.group_index, batch.lengths, max_groups=max_groups, max_tokens=max_tokens, seed=seed)
    if not chosen:
        return TrustReport(0, 0, 0, 0.0)
    rows = torch.nonzero(torch.isin(batch.group_index.cpu(), torch.tensor(chosen)))[:, 0]  # (b,) batch order
    take = rows.to(batch.device)
    ref = tempo_advantages(
        batch.responses[take],
        batch.lengths[take, None] > torch.arange(batch.shape[1], device=batch.device),
        batch.rewards[take],
        batch.group_index[take],
        loss_mask=None if batch.loss_mask is None else batch.loss_mask[take],
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
        backend="reference",
    ).double()  # (b, L) right padded
    if batch.starts is not None:  # back to the caller's columns, where `advantages` has them
        ref = shift_rows(ref, -batch.starts[take].to(ref.device))
    ref = ref.cpu()
    got = advantages[take].double().cpu()
    err = (got - ref).abs()  # NaN where got is NaN, inf where got is inf
    bound = trust_bound(atol, ref)
    bad = ~(err <= bound)  # NaN compares False, so a NaN advantage is a mismatch
    worst = float(err.max()) if err.numel() else 0.0
    if bool(bad.any()):
        r, t = divmod(int(torch.nonzero(bad.reshape(-1))[0, 0]), err.shape[1])
        row = int(rows[r])
        gid = batch.group_keys[int(batch.group_index[row])]
        raise AdvantageMismatch(
            f"advantages disagree with the reference in group {gid!r}, row {row}, token {t}: "
            f"{float(got[r, t]):.6g} vs {float(ref[r, t]):.6g} (|diff| {float(err[r, t]):.3g} > atol {bound:.3g})"
        )
    return TrustReport(len(chosen), int(rows.numel()), int(batch.lengths[take].sum()), worst)
