"""Every tolerance the project compares advantages and prefix values with, in one place.

Tolerances come from measurement and from the rounding analysis of proofs_notes/fast-algorithm.md:
a result is compared with the exact reference rounded once, and may differ by a relative part (one
rounding of the returned dtype) plus an absolute part (the float64 roundings of the group's
centring, scaled as the advantages are). Where the contract says exact (non-branch tokens equal
GRPO, degenerate groups 0, batch invariance), callers compare bitwise and use none of this.

Used by `tempo_rl.testing` (`check_implementation`), `tempo_rl.check_against_reference` (the
trainer's trust check) and the test suite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from tempo_rl.reference import group_rows

if TYPE_CHECKING:
    from tempo_rl.testing.strategies import Case

__all__ = [
    "advantage_bound",
    "allowed_error",
    "relative_tolerance",
    "snippet_tolerance",
    "trust_bound",
    "value_tolerance",
]


def relative_tolerance(dtype: torch.dtype) -> float:
    """One rounding of the output dtype (2^-23 for float32), 4 * 2^-52 at float64."""
    return max(torch.finfo(dtype).eps, 4 * 2.0**-52)


def allowed_error(case: Case, dtype: torch.dtype, *, norm_by_std: bool, eps: float) -> torch.Tensor:
    """(B, 1) absolute part of the documented tolerance for each row (proofs_notes/fast-algorithm.md).

    float64 rounding of the centring, 4 * 64 * 2^-52 * (max_g |R| + 1), scaled like the advantages
    (divided by sigma_g + eps when norm_by_std). An entry passes when |returned - reference| <=
    rtol * |reference| + allowed_error, with rtol one rounding of the returned dtype (2^-23 for
    float32, 4 * 2^-52 for float64). `dtype` is the returned dtype (the absolute part does not
    depend on it; it is taken so callers state which output they bound).
    """
    r = case.rewards.double().cpu()
    tol = torch.zeros(r.shape[0], 1, dtype=torch.float64)
    for rows in group_rows(case.group_list).values():
        g = r[rows]
        top = g.abs().max().item()
        if norm_by_std:
            sigma = g.std().item() if len(rows) > 1 else 0.0
            if math.isfinite(sigma):
                ratio = (top + 1.0) / max(sigma + eps, 1e-300)
            else:  # rewards near 1e308: sigma^2 overflows; the same ratio on g / top
                ratio = (1.0 + 1.0 / top) / ((g / top).std().item() + eps / top)
        else:
            ratio = top + 1.0
        tol[rows] = 4 * 64 * 2.0**-52 * ratio
    return tol


def advantage_bound(
    case: Case, reference: torch.Tensor, dtype: torch.dtype, *, norm_by_std: bool, eps: float
) -> torch.Tensor:
    """(B, L) float64: how far advantages of `dtype` may sit from the exact `reference` (B, L):
    relative_tolerance(dtype) * |reference| + allowed_error(case, ...)."""
    atol = allowed_error(case, dtype, norm_by_std=norm_by_std, eps=eps)  # (B, 1)
    return relative_tolerance(dtype) * reference.double().abs() + atol


def trust_bound(atol: float, reference: torch.Tensor) -> float:
    """The trust check's tolerance: atol * max(1, |A_ref|max) over the sampled rows (a scale-free
    bound, so one default serves rewards of any size)."""
    return atol * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)


def value_tolerance(case: Case, value: torch.Tensor) -> torch.Tensor:
    """(B, L) absolute tolerance on prefix values V: 2^-52 (|V| + (G + 1) spread) per row's group,
    spread = max R - min R of the group (`tempo_rl.prefix_values`' docstring)."""
    r = case.rewards.double()
    spread = torch.zeros(len(case.group_ids), 1, dtype=torch.float64)
    for rows in group_rows(case.group_ids).values():
        g = r[rows]
        spread[rows] = (len(rows) + 1) * (g.max() - g.min()).item()
    return 2.0**-52 * (value.abs() + spread)


def snippet_tolerance(case: Case, scale: torch.Tensor) -> torch.Tensor:
    """(B, 1): a few float64 roundings of max|R| and G times the spread, over `scale` (B, 1): the
    advantages rebuilt from prefix values (proofs_notes/prefix-values.md) against the estimators."""
    r = case.rewards.double()
    tol = torch.zeros(len(case.group_ids), 1, dtype=torch.float64)
    for rows in group_rows(case.group_ids).values():
        g = r[rows]
        tol[rows] = 2.0**-49 * (g.abs().max() + (len(rows) + 2) * (g.max() - g.min())).item()
    return tol / scale
