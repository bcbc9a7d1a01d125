"""The engine step: advantages, the sampled trust check, tree statistics, the branch-node
diagnostic and the metrics they log, from a batch as an RL engine holds it.

`tempo-rl train`, every integration (TRL, verl, OpenRLHF, SkyRL, AReaL) and `tempo-rl bench --scale`
call `advantage_step`, so an option added to `StepOptions`, or a metric added here, reaches every
engine at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import torch

from .api import tempo_advantages, tempo_advantages_with_stats
from .backends import resolve_backend
from .prefix_values import branch_snr_stats
from .reference.stats import TreeStats
from .trust import AdvantageMismatch, TrustReport, check_against_reference

ESTIMATORS = ("tempo", "grpo")


@dataclass(frozen=True)
class StepOptions:
    """What one engine step computes and logs. Every field has the default the engines share."""

    estimator: str = "tempo"  # "tempo" or "grpo" (TEMPO with td_coef = 0, bitwise)
    td_coef: float = 1.0  # weight of TEMPO's TD term V(child) - V(parent); ignored by "grpo"
    norm_by_std: bool = True  # divide by sigma_g + eps; False gives the Dr. GRPO form
    eps: float = 1e-6  # added to the group's unbiased reward std
    backend: str = "auto"  # "auto", "reference", "torch" or "triton"
    tree_stats: bool = True  # tree statistics from the same pass over the tokens, in the metrics
    trust_check: bool = False  # recompute sampled groups with the exact reference; raise on a difference
    trust_groups: int = 4  # groups the trust check recomputes (its cost does not grow with the batch)
    trust_atol: float = 1e-5  # mismatch tolerance, relative to max(1, |A_ref|max)
    trust_seed: int = 0  # seed of the trust check's choice of groups
    log_branch_snr: bool = False  # the per-node diagnostic of `branch_snr_stats`, about 2x the advantages' cost
    metrics_prefix: str = "tempo/"  # prepended to every metric name

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.trust_groups < 1:
            raise ValueError(f"trust_groups must be >= 1, got {self.trust_groups!r}")
        if not self.trust_atol > 0:
            raise ValueError(f"trust_atol must be > 0, got {self.trust_atol!r}")

    @property
    def effective_td_coef(self) -> float:
        return self.td_coef if self.estimator == "tempo" else 0.0


@dataclass
class StepResult:
    """advantages: (B, L) token advantages; trust: the trust check's report (None when it did not
    run, or the backend is the reference itself); tree: the batch's tree statistics (None when not
    asked for); metrics: name -> float, the same keys every step for given options (docs/metrics.md):
    with `tree_stats`, the TD weight applied (`td_coef`, 0 for "grpo") and the tree statistics; then,
    with `log_branch_snr`, the branch-node diagnostic."""

    advantages: torch.Tensor
    trust: TrustReport | None
    tree: TreeStats | None
    metrics: dict[str, float] = field(default_factory=dict)


def advantage_step(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    scored: torch.Tensor | None = None,
    options: StepOptions = StepOptions(),
) -> StepResult:
    """One engine step on a batch (arXiv 2509.18314; `tempo_rl.tempo_advantages` gives the formula).

    Args:
        responses: (B, L) int token ids, right- or left-padded.
        response_mask: (B, L) 0/1, a prefix (right padding) or a suffix (left padding) of ones per
            row: the tokens of each response's tree.
        rewards: (B,) finite float rewards.
        group_ids: (B,) ints or hashables; same id = same prompt.
        loss_mask: optional (B, L) 0/1; 0 forces the advantage to 0 without changing the tree.
        scored: optional (B,) bool; rows False (a response no reward scored, given a group of its
            own by the caller) are left out of the tree statistics and the branch-node diagnostic.
        options: `StepOptions`.

    Returns a `StepResult`. Raises AdvantageMismatch (naming the backend, group, row and token)
    when the trust check finds a difference.
    """
    adv_options: dict[str, Any] = dict(
        loss_mask=loss_mask, norm_by_std=options.norm_by_std, eps=options.eps, td_coef=options.effective_td_coef
    )
    tree = None
    with torch.no_grad():
        if options.tree_stats:
            adv, tree = tempo_advantages_with_stats(
                responses, response_mask, rewards, group_ids, backend=options.backend, **adv_options
            )  # (B, L); one pass over the tokens for both
        else:
            adv = tempo_advantages(responses, response_mask, rewards, group_ids, backend=options.backend, **adv_options)
        trust = _trust(adv, responses, response_mask, rewards, group_ids, adv_options, options)
    metrics: dict[str, float] = {}
    if tree is not None:
        if scored is not None:
            keys = _keys(group_ids, scored)
            tree = tree.select(lambda gid: gid in keys)
        metrics[options.metrics_prefix + "td_coef"] = float(options.effective_td_coef)
        metrics.update(tree.as_metrics(prefix=options.metrics_prefix))
    if options.log_branch_snr:
        metrics.update(_branch_snr_metrics(responses, response_mask, rewards, group_ids, scored, options))
    return StepResult(adv, trust, tree, metrics)


def _trust(adv, responses, response_mask, rewards, group_ids, adv_options: dict, options: StepOptions):
    """The sampled trust check, or None when it is off or the backend is the reference itself."""
    name = resolve_backend(options.backend, adv.device)
    if not options.trust_check or name == "reference":
        return None
    try:
        return check_against_reference(
            adv,
            responses,
            response_mask,
            rewards,
            group_ids,
            atol=options.trust_atol,
            max_groups=options.trust_groups,
            seed=options.trust_seed,
            **adv_options,
        )
    except AdvantageMismatch as e:
        raise AdvantageMismatch(f"backend {name!r}: {e}; rerun with backend 'reference' and report the batch") from None


def _keys(group_ids, scored: torch.Tensor) -> set:
    rows = torch.as_tensor(scored).bool().cpu().tolist()
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    return {gid for gid, keep in zip(ids, rows) if keep}


def _branch_snr_metrics(responses, response_mask, rewards, group_ids, scored, options: StepOptions) -> dict:
    if scored is not None:  # only the scored rows' trees
        keep = torch.as_tensor(scored).bool().to(responses.device)
        rewards = torch.as_tensor(rewards)[keep.to(torch.as_tensor(rewards).device)]
        if isinstance(group_ids, torch.Tensor):
            group_ids = group_ids[keep.to(group_ids.device)]
        else:
            group_ids = [g for g, k in zip(group_ids, keep.cpu().tolist()) if k]
        responses, response_mask = responses[keep], response_mask[keep]
    snr = branch_snr_stats(responses, response_mask, rewards, group_ids, backend=options.backend)
    return snr.as_metrics(prefix=options.metrics_prefix)
