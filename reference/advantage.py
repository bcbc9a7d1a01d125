"""TEMPO and GRPO advantages, exactly as the contract (proofs_notes/contract.md) defines them.

Pure Python on ragged lists; the public `tempo_rl.tempo_advantages(..., backend="reference")`
validates tensors, calls these functions and pads the result. Values, TD and the numerator
R_i - mu_g + td_coef * TD are `Fraction`s; only the final division by (sigma_g + eps) is done in
float64, on numerator and variance divided by a power of two s_g near max|R_g| (exact, so the
same bits as unscaled float64 where that is finite, and finite for rewards of any magnitude).
For response i of group g and token t < n_i (proofs_notes/tempo.md, Definition 3):

    A[i, t] = (R_i - mu_g + td_coef * (V(y_i[:t+1]) - V(y_i[:t]))) / (sigma_g + eps)

GRPO is the same with TD = 0. A group of one, or a group whose rewards are all equal, gets 0.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Sequence

from .trie import PrefixTree

Ragged = list[list[float]]


_EPS_HEADROOM = 60  # the scale stays >= eps 2^-60, so eps / s_g is finite


@dataclass(frozen=True)
class GroupMoments:
    """mu_g and the unbiased variance of a group's rewards, exact, and the power-of-two scale."""

    size: int
    mean: Fraction
    var: Fraction  # divisor G - 1, as torch.std; 0 for a group of one
    exponent: int  # s_g = 2^exponent, max|R_g| in [s_g, 2 s_g)

    @classmethod
    def of(cls, rewards: Sequence[Fraction]) -> GroupMoments:
        size = len(rewards)
        mean = sum(rewards, Fraction(0)) / size
        ss = sum(((r - mean) ** 2 for r in rewards), Fraction(0))
        exponent = math.frexp(float(max((abs(r) for r in rewards), default=0)))[1] - 1
        return cls(
            size=size,
            mean=mean,
            var=ss / (size - 1) if size > 1 else Fraction(0),
            exponent=min(max(exponent, -1074), 1023),
        )

    @property
    def std(self) -> float:
        """sigma_g in float64, through the scaled variance: finite wherever sigma_g is (var may not be),
        inf where sigma_g itself is past float64 (rewards of +-1.5e308; the advantages stay finite)."""
        try:
            return math.ldexp(self.scaled_std(self.exponent), self.exponent)
        except OverflowError:
            return math.inf

    def scaled_std(self, exponent: int) -> float:
        """sigma_g / 2^exponent: the square root of the exactly scaled variance."""
        return math.sqrt(float(self.var / Fraction(2) ** (2 * exponent)))

    @property
    def degenerate(self) -> bool:
        """A group of one, or equal rewards: every advantage of the group is 0 (Proposition 6)."""
        return self.size < 2 or self.var == 0


def _to_float(value: Fraction, name: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"{name} too large: the advantages overflow float64 (largest finite is "
            f"{sys.float_info.max:.3g}); rescale it"
        ) from None


def normalise(
    numerator: Fraction, moments: GroupMoments, *, norm_by_std: bool, eps: float, name: str = "rewards"
) -> float:
    """The rounding step: numerator / (sigma_g + eps) in float64 (or the numerator itself).

    Numerator, sigma_g and eps are divided by s_g = 2^e first (exact), so the quotient is the one
    unscaled float64 gives wherever that is finite, and finite for rewards of any magnitude.
    """
    if moments.degenerate:
        return 0.0
    if not norm_by_std:
        return _to_float(numerator, name)
    e = moments.exponent
    if eps > 0:
        e = max(e, math.frexp(eps)[1] - 1 - _EPS_HEADROOM)
    x = _to_float(numerator / Fraction(2) ** e, name)
    quotient = x / (moments.scaled_std(e) + math.ldexp(eps, -e))
    if math.isinf(quotient):
        raise ValueError(f"{name} too large: the advantages overflow float64; rescale it")
    return quotient


def group_rows(group_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Row indices of each group, groups in order of first appearance, rows in batch order."""
    rows: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        rows.setdefault(gid, []).append(i)
    return rows


def _masked(values: list[float], mask: Sequence[bool] | None) -> list[float]:
    if mask is None:
        return values
    return [v if keep else 0.0 for v, keep in zip(values, mask)]


def _check_lengths(sequences, rewards, group_ids, loss_masks) -> None:
    if not (len(sequences) == len(rewards) == len(group_ids)):
        raise ValueError(
            f"sequences, rewards and group_ids differ in length: {len(sequences)}, {len(rewards)}, {len(group_ids)}"
        )
    if loss_masks is not None:
        for i, (seq, mask) in enumerate(zip(sequences, loss_masks, strict=True)):
            if len(mask) != len(seq):
                raise ValueError(f"loss_mask row {i} has {len(mask)} entries for {len(seq)} tokens")


def tempo_advantages(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    *,
    loss_masks: Sequence[Sequence[bool]] | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
) -> Ragged:
    """TEMPO advantages, one float64 list of length n_i per response.

    Args:
        sequences: B token sequences y_i (ragged; the mask is already applied).
        rewards: (B,) finite rewards.
        group_ids: (B,) hashable group ids; groups may interleave and differ in size.
        loss_masks: optional ragged 0/1 per token; 0 forces the advantage to 0 (the tree is unchanged).
        norm_by_std: divide by sigma_g + eps (GRPO); False gives the Dr. GRPO form.
        eps: added to sigma_g.
        td_coef: weight of the TD term; 0 gives GRPO exactly.

    Example (the two-response group of proofs_notes/tempo.md, Example 1):
    >>> tempo_advantages([[7, 1], [7, 2]], [1.0, 0.0], ["q", "q"], norm_by_std=False)
    [[0.5, 1.0], [-0.5, -1.0]]
    """
    _check_lengths(sequences, rewards, group_ids, loss_masks)
    out: Ragged = [[] for _ in sequences]
    coef = Fraction(td_coef)
    for rows in group_rows(group_ids).values():
        tree = PrefixTree([sequences[i] for i in rows], [rewards[i] for i in rows])
        moments = GroupMoments.of(tree.rewards)
        for k, i in enumerate(rows):
            base = tree.rewards[k] - moments.mean
            values = [
                normalise(
                    base + coef * td,
                    moments,
                    norm_by_std=norm_by_std,
                    eps=eps,
                    name="rewards" if td == 0 else "td_coef",
                )
                for td in tree.td(k)
            ]
            out[i] = _masked(values, loss_masks[i] if loss_masks is not None else None)
    return out


def grpo_advantages(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    *,
    loss_masks: Sequence[Sequence[bool]] | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Ragged:
    """GRPO advantages (R_i - mu_g) / (sigma_g + eps) on every token; same arguments as TEMPO.

    >>> grpo_advantages([[7, 1], [7, 2]], [1.0, 0.0], ["q", "q"], norm_by_std=False)
    [[0.5, 0.5], [-0.5, -0.5]]
    """
    _check_lengths(sequences, rewards, group_ids, loss_masks)
    out: Ragged = [[] for _ in sequences]
    for rows in group_rows(group_ids).values():
        exact = [Fraction(rewards[i]) for i in rows]
        moments = GroupMoments.of(exact)
        for k, i in enumerate(rows):
            value = normalise(exact[k] - moments.mean, moments, norm_by_std=norm_by_std, eps=eps)
            values = [value] * len(sequences[i])
            out[i] = _masked(values, loss_masks[i] if loss_masks is not None else None)
    return out


def td_values(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
) -> list[list[Fraction]]:
    """Exact TD[i, t] = V(child) - V(parent) for every token of every response."""
    _check_lengths(sequences, rewards, group_ids, None)
    out: list[list[Fraction]] = [[] for _ in sequences]
    for rows in group_rows(group_ids).values():
        tree = PrefixTree([sequences[i] for i in rows], [rewards[i] for i in rows])
        for k, i in enumerate(rows):
            out[i] = tree.td(k)
    return out
