"""TEMPO as a verl advantage estimator (verl 0.9.x): `algorithm.adv_estimator=tempo`.

verl calls a registered estimator with `token_level_rewards`, `response_mask`, `index` (the
prompt uid) and `config` only (`verl.trainer.ppo.ray_trainer.compute_advantage`), and its v1
trainer reads only those fields from the TransferQueue before computing advantages. TEMPO also
needs the response token ids to build each group's prefix tree. Two pieces supply them without
forking verl:

1. The estimator `compute_tempo_outcome_advantage`, registered as "tempo" with
   `verl.trainer.ppo.core_algos.register_adv_est`. It takes the responses as a `responses=`
   argument or, when verl calls it, from `response_tokens(...)`, a context the trainer sets.
2. Trainer modes `tempo_<mode>` (`tempo_sync`, `tempo_colocate_async`, `tempo_separate_async`:
   one per mode registered in `verl.trainer.ppo.v1`), each the v1 trainer of that mode whose
   `_compute_advantage` first reads the `responses` field of the batch from the TransferQueue and
   holds it in `response_tokens` while verl's own `_compute_advantage` runs; it adds TEMPO's tree
   statistics (`tempo/*`) to the step metrics.

Both are registered when verl is imported, through the `verl.plugins` entry point in
tempo-rl's pyproject.toml (importing this module registers them too). A run:

    python -m verl.trainer.main_ppo algorithm.adv_estimator=tempo trainer.v1.trainer_mode=tempo_sync ...

Options read from `algorithm`: `norm_adv_by_std_in_grpo` (True -> norm_by_std) and, added with
Hydra's `+algorithm.tempo_td_coef=0.5`, `tempo_td_coef` (default 1.0), `tempo_eps` (default 1e-6,
verl's GRPO epsilon), `tempo_backend` (default "auto"), and `tempo_trust_check` (default False:
True recomputes `tempo_trust_groups` sampled groups, default 4, with the exact reference each step
and raises `tempo_rl.AdvantageMismatch` on a difference; its cost does not grow with the batch), and
`tempo_log_branch_snr` (default False: True adds the per-node diagnostic of
`tempo_rl.branch_snr_stats` to the tempo/* metrics, at about 2x the advantages' cost).

The tree covers each response's span, tool output included (verl's attention mask over the
response, or its length in the TransferQueue); verl's `response_mask`, which is 0 on tool output
inside a multi-turn response and so has holes, is passed as the loss mask and never changes the
tree (`tree_and_loss_masks`). The legacy trainer (`trainer.use_v1=False`) has no such hook: there the
estimator raises, naming the trainer mode to use.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

import tempo_rl
from tempo_rl.extras import requires
from tempo_rl.integrations import config_option, tempo_step_options

with requires("verl", "tempo_rl.integrations.verl"):
    from verl.trainer.ppo import core_algos

__all__ = [
    "TEMPO",
    "compute_tempo_outcome_advantage",
    "response_tokens",
    "step_options",
    "tree_and_loss_masks",
    "TempoAdvantageMixin",
]

TEMPO = "tempo"
logger = logging.getLogger(__name__)


@dataclass
class _ResponseTokens:
    responses: torch.Tensor  # (B, L') int token ids, right-padded
    lengths: torch.Tensor | None  # (B,) tokens per response; None: take them from response_mask
    attention_mask: torch.Tensor | None = None  # (B, P + L) verl's; its last L columns: the spans
    stats: dict[str, float] = field(default_factory=dict)  # filled by the estimator, for metrics


_CURRENT: contextvars.ContextVar[_ResponseTokens | None] = contextvars.ContextVar("tempo_responses", default=None)


@contextlib.contextmanager
def response_tokens(
    responses: torch.Tensor, lengths: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
) -> Iterator[dict[str, float]]:
    """Make `responses` (B, L) visible to the "tempo" estimator while verl computes advantages.

    Each response's span (its tree) comes from `attention_mask` (B, P + L), verl's, whose last L
    columns cover the response, tool output included; else from `lengths` (B,), its token count;
    else it runs to the last position where verl's `response_mask` is 1. Yields a dict that
    receives the tree statistics.
    """
    call = _ResponseTokens(responses, lengths, attention_mask)
    token = _CURRENT.set(call)
    try:
        yield call.stats
    finally:
        _CURRENT.reset(token)


def tree_and_loss_masks(
    response_mask: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's masks as TEMPO takes them: (the response's span, the tokens to train), both (B, L).

    verl's multi-turn `response_mask` is 0 on tool output inside a response, so it has holes;
    TEMPO's response mask must be the contiguous span of the response (its tree runs over every
    token, tool output included) and the holes belong in the loss mask. The span comes from, in
    order: `attention_mask` (B, P + L) over prompt and response, whose last L columns are 1 on
    each response's tokens; `lengths` (B,), tokens per response; else one past the last 1 of
    `response_mask`.

    Args:
        response_mask: (B, L) 0/1, verl's (the loss mask: 0 on padding and on tool output).
        attention_mask: optional (B, P + L) 0/1, verl's, P >= 0 prompt columns before the response.
        lengths: optional (B,) int tokens per response.

    Returns:
        (span, loss): span (B, L) bool, a contiguous run of ones per row; loss = `response_mask`.
        ValueError, naming the row and position, where `response_mask` is 1 outside the span.

    >>> m = torch.tensor([[1, 1, 0, 0, 1, 0]])  # tool output at positions 2 and 3
    >>> span, loss = tree_and_loss_masks(m, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]]))
    >>> span.int().tolist(), loss.tolist()
    ([[1, 1, 1, 1, 1, 0]], [[1, 1, 0, 0, 1, 0]])
    """
    width = response_mask.shape[1]
    positions = torch.arange(width, device=response_mask.device)  # (L,)
    if attention_mask is not None:
        if (
            attention_mask.dim() != 2
            or attention_mask.shape[0] != response_mask.shape[0]
            or attention_mask.shape[1] < width
        ):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, P + L) with B, L "
                f"{tuple(response_mask.shape)} like response_mask"
            )
        span = attention_mask[:, attention_mask.shape[1] - width :].to(response_mask.device).bool()  # (B, L)
    else:
        if lengths is None:
            # One past the last 1 of each row; tool output inside the response stays in the tree.
            lengths = torch.where(response_mask.bool(), positions + 1, 0).amax(dim=1)  # (B,)
        span = positions[None, :] < lengths.to(response_mask.device)[:, None]  # bool: one byte a token
    outside = response_mask.bool() & ~span  # (B, L)
    if bool(outside.any()):
        row, t = (int(v) for v in torch.nonzero(outside)[0])
        raise ValueError(
            f"response_mask row {row} is 1 at position {t}, outside the response's span "
            f"({'attention_mask' if attention_mask is not None else 'response_lengths'})"
        )
    return span, response_mask


def compute_tempo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    responses: torch.Tensor | None = None,
    response_lengths: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TEMPO advantages in verl's estimator signature; returns (advantages, returns), both (B, L).

    Args:
        token_level_rewards: (B, L) float; the outcome reward R_i is the row sum, as in verl's GRPO.
        response_mask: (B, L) 0/1; verl's loss mask (0 on padding and on tool output).
        index: (B,) prompt uids; equal uid = same group.
        config: verl's `algorithm` config (see the module docstring for the keys read).
        responses: (B, L') int token ids, L' >= L; default: the ones set by `response_tokens`.
        response_lengths: (B,) tokens per response; default: from `response_tokens`, else the
            last 1 of `response_mask`.
        attention_mask: (B, P + L) verl's attention mask over prompt and response; where given
            (here or to `response_tokens`) its last L columns are each response's span.

    The span of each response is its tree, tool output included; verl's `response_mask` is the
    loss mask (`tree_and_loss_masks`).

    A[i, t] = (R_i - mu_g + td_coef * (V(child) - V(parent))) / (sigma_g + eps) on loss tokens
    (arXiv 2509.18314; `tempo_rl.tempo_advantages`), 0 elsewhere; returns equal advantages, as
    for verl's GRPO.
    """
    call = _CURRENT.get()
    if responses is None and call is not None:
        responses, response_lengths = call.responses, call.lengths if response_lengths is None else response_lengths
        attention_mask = call.attention_mask if attention_mask is None else attention_mask
    if responses is None:
        raise ValueError(
            "tempo estimator: no response token ids. Run verl's v1 trainer with "
            "trainer.v1.trainer_mode=tempo_sync (or tempo_<your mode>), which passes them, or call "
            "compute_tempo_outcome_advantage(..., responses=...) inside tempo_rl.integrations.verl.response_tokens"
        )
    if index is None:
        raise ValueError("tempo estimator: index (the prompt uid of each response) is required")
    width = response_mask.shape[1]
    if responses.shape[0] != response_mask.shape[0] or responses.shape[1] < width:
        raise ValueError(
            f"tempo estimator: responses has shape {tuple(responses.shape)}, response_mask "
            f"{tuple(response_mask.shape)}; expected the same rows and at least as many columns"
        )
    responses = responses[:, :width].to(response_mask.device)
    span, loss = tree_and_loss_masks(response_mask, attention_mask=attention_mask, lengths=response_lengths)
    group_ids = list(index)
    scores = token_level_rewards.sum(dim=-1)
    # Tree statistics and the branch-node diagnostic only when a trainer mode receives them.
    result = tempo_rl.advantage_step(
        responses, span, scores, group_ids, loss_mask=loss, options=step_options(config, call is not None)
    )
    if call is not None:
        call.stats.update(result.metrics)
    return result.advantages, result.advantages


def step_options(config: Any, with_metrics: bool = True) -> tempo_rl.StepOptions:
    """The engine step's options from verl's `algorithm` config (keys in the module docstring)."""
    norm_by_std = bool(config_option(config, "norm_adv_by_std_in_grpo", True))
    return tempo_step_options(config, norm_by_std=norm_by_std, with_metrics=with_metrics)


core_algos.register_adv_est(TEMPO)(compute_tempo_outcome_advantage)


def _fetch_responses(tq: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's response token ids (B, L') and lengths (B,) from the TransferQueue."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses"])
    responses = data["responses"]
    if responses.is_nested:  # ragged rows: one per response, its own length
        lengths = responses.offsets().diff()  # (B,)
        return torch.nested.to_padded_tensor(responses, 0), lengths
    return responses, torch.full((responses.shape[0],), responses.shape[1], dtype=torch.long)


class TempoAdvantageMixin:
    """Put before a verl v1 `PPOTrainer` subclass: gives the "tempo" estimator the responses."""

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        if self.config.algorithm.adv_estimator != TEMPO:
            return super()._compute_advantage(batch, metrics)
        from verl.trainer.ppo.v1 import trainer_base  # the TransferQueue client verl's own code uses

        responses, lengths = _fetch_responses(trainer_base.tq, batch)
        with response_tokens(responses, lengths) as stats:
            batch = super()._compute_advantage(batch, metrics)
        metrics.update(stats)
        return batch


def _register_trainers() -> list[str]:
    """Register `tempo_<mode>` for every v1 trainer mode; returns the names registered."""
    from verl.trainer.ppo.v1 import trainer_base

    names = []
    for mode, base in list(trainer_base.TRAINER_REGISTRY.items()):
        if mode.startswith("tempo_"):
            continue
        name = f"Tempo{base.__name__}"
        cls = globals().get(name)
        if cls is None:
            cls = type(name, (TempoAdvantageMixin, base), {"__module__": __name__, "__qualname__": name})
            globals()[name] = cls  # importable by name, so it pickles
        trainer_base.register_trainer(f"tempo_{mode}")(cls)
        names.append(f"tempo_{mode}")
    return names


try:
    TRAINER_MODES = _register_trainers()
except ImportError as e:  # a verl install without the v1 trainer's dependencies (ray, TransferQueue)
    TRAINER_MODES = []
    logger.warning("tempo: verl's v1 trainer is not importable (%s); only the estimator is registered", e)
