"""The public advantage API: one call, several backends that compute the same numbers.

Backends are named in one place, `tempo_rl.backends` ("reference", "torch", "triton", "auto").
A fast backend is trusted because the differential tests (tests/test_advantage_fast.py,
tests/test_stats.py) prove it equals the reference; the trainer re-checks a sample of groups.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch

from ._validate import Batch, check_responses, check_scalars, validate
from .backends import STAT_COLUMNS, get_backend, resolve_backend
from .fast.stats_torch import NO_BRANCH
from .reference.stats import GroupTreeStats, TreeStats, combine


def _backend_for(batch: Batch, backend: str):
    return get_backend(resolve_backend(backend, batch.device))


def _run(
    responses: Any,
    response_mask: Any,
    rewards: Any,
    group_ids: Any,
    loss_mask: Any,
    *,
    norm_by_std: Any,
    eps: Any,
    td_coef: Any,
    backend: str,
    with_stats: bool,
) -> tuple[torch.Tensor, TreeStats | None]:
    """Check the options and inputs once, run the backend, convert its statistics table."""
    check_scalars(norm_by_std=norm_by_std, eps=eps, td_coef=td_coef)
    batch = validate(responses, response_mask, rewards, group_ids, loss_mask)
    out, table = _backend_for(batch, backend).advantages_and_stats(
        batch.responses,
        batch.lengths,
        batch.rewards,
        batch.group_index,
        batch.loss_mask,
        norm_by_std=bool(norm_by_std),
        eps=float(eps),
        td_coef=float(td_coef),
        with_stats=with_stats,
    )  # (B, L) right padded
    return batch.to_caller(out), None if table is None else stats_from_table(table, batch.group_keys)


def stats_from_table(table: torch.Tensor, group_keys: Sequence[Hashable]) -> TreeStats:
    """TreeStats from a backend's (n_groups, len(STAT_COLUMNS)) int64 table, keyed by group id."""
    groups = {}
    for key, row in zip(group_keys, table.cpu().tolist()):
        fields = dict(zip(STAT_COLUMNS, row))
        if fields["first_branch_depth"] == NO_BRANCH:
            fields["first_branch_depth"] = None
        groups[key] = GroupTreeStats(**fields)
    return combine(groups)


def tempo_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """TEMPO token advantages (arXiv 2509.18314; proofs_notes/tempo.md, Definition 3).

    A[i, t] = (R_i - mu_g + td_coef * (V(y_i[:t+1]) - V(y_i[:t]))) / (sigma_g + eps), where V(s)
    is the mean reward of the group's responses that start with prefix s. At tokens where the
    group does not branch the TD term is exactly 0 and A equals GRPO bitwise.

    Args:
        responses: (B, L) int token ids, right- or left-padded (padding values are never read).
        response_mask: (B, L) bool or 0/1; each row a prefix of ones (right padding) or a suffix
            of ones (left padding), n_i of them; rows of a batch may differ.
        rewards: (B,) finite float rewards, one per response.
        group_ids: (B,) ints or hashables (e.g. verl's uid strings); same id = same prompt.
        loss_mask: optional (B, L) 0/1; 0 forces the advantage to 0 without changing the tree.
        norm_by_std: divide by sigma_g + eps; False gives the Dr. GRPO form.
        eps: added to the unbiased group std sigma_g.
        td_coef: weight of the TD term; 0 gives GRPO.
        backend: "auto", "reference", "torch" or "triton".

    Returns:
        (B, L) advantages at the response's own columns, float32 (float64 when rewards are
        float64): a left-padded row gets the right-padded row's values shifted, 0 outside the mask,
        where loss_mask is 0, and for groups of one or with equal rewards.

    >>> import torch, tempo_rl
    >>> y = torch.tensor([[7, 1], [7, 2]])
    >>> tempo_rl.tempo_advantages(y, torch.ones_like(y), torch.tensor([1.0, 0.0]), [0, 0],
    ...                           norm_by_std=False, backend="reference")
    tensor([[ 0.5000,  1.0000],
            [-0.5000, -1.0000]])
    """
    out, _ = _run(
        responses,
        response_mask,
        rewards,
        group_ids,
        loss_mask,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
        backend=backend,
        with_stats=False,
    )
    return out


def tempo_advantages_with_stats(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, TreeStats]:
    """`tempo_advantages` and `tree_stats` of the same batch in one call: the lcp work (the only
    pass over the tokens) is done once. Arguments as `tempo_advantages`; td_coef=0 gives GRPO
    advantages with the tree statistics.
    """
    out, stats = _run(
        responses,
        response_mask,
        rewards,
        group_ids,
        loss_mask,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
        backend=backend,
        with_stats=True,
    )
    assert stats is not None
    return out, stats


def grpo_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """GRPO advantages (R_i - mu_g) / (sigma_g + eps) broadcast over each response's tokens.

    Same arguments, validation, dtype and zeros as `tempo_advantages`; equal to it with
    td_coef=0, bitwise, on every backend.
    """
    out, _ = _run(
        responses,
        response_mask,
        rewards,
        group_ids,
        loss_mask,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=0.0,
        backend=backend,
        with_stats=False,
    )
    return out


def tree_stats(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    backend: str = "auto",
) -> TreeStats:
    """Per-group and batch statistics of the prefix trees: nodes, branch nodes and tokens,
    branch-token fraction, first and mean branch depth, max depth (proofs_notes/fast-algorithm.md,
    "Tree statistics", gives each as a function of the lcp matrix).

    All integers, so every backend gives exactly the reference's numbers. `.groups` maps each
    original group id to its `GroupTreeStats`; `.as_dict()` gives the batch numbers and
    `.as_metrics(prefix="tempo/")` the ones the trainer and integrations log.
    """
    responses = check_responses(responses)
    # Rewards play no part in the tree; zeros stand in so the one validator serves.
    batch = validate(responses, response_mask, torch.zeros(responses.shape[0]), group_ids)
    table = _backend_for(batch, backend).tree_stats(batch.responses, batch.lengths, batch.group_index)
    return stats_from_table(table, batch.group_keys)
