"""TEMPO in SkyRL (skyrl-train 0.3.x): `trainer.algorithm.advantage_estimator=tempo`.

SkyRL calls a registered advantage estimator with `token_level_rewards`, `response_mask` and
`index` (the prompt uids) but no token ids (`skyrl_train.utils.ppo_utils.compute_advantages_and_returns`).
TEMPO needs the response token ids to build each group's prefix tree. Two pieces supply them,
without forking SkyRL:

1. `compute_tempo_outcome_advantage`, registered as "tempo" with SkyRL's
   `register_advantage_estimator` when this module is imported (also inside Ray workers, where
   SkyRL pickles registered estimators: it pickles by reference). It takes the responses as a
   `responses=` argument or, when SkyRL calls it, from `response_tokens(...)`, a context the
   trainer sets.
2. `TempoRayPPOTrainer`, SkyRL's `RayPPOTrainer` whose `compute_advantages_and_returns` holds the
   batch's response tokens (the last `response_len` columns of `data["sequences"]`: SkyRL left-pads
   the prompt and right-pads the response) in `response_tokens` while SkyRL's own method runs, and
   adds the tree statistics (`tempo/*`) to the step metrics. `TempoPPOExp` is SkyRL's `BasePPOExp`
   whose `get_trainer` builds it (SkyRL's documented way to swap the trainer).

A run (Hydra, SkyRL's own `ppo_base_config`):

    python -m tempo_rl.integrations.skyrl trainer.algorithm.advantage_estimator=tempo \\
        +trainer.algorithm.tempo_td_coef=1.0 ...

Options read from `trainer.algorithm`: `grpo_norm_by_std` (SkyRL's; True divides by the group std)
and, added with Hydra's `+`: `tempo_td_coef` (1.0), `tempo_eps` (1e-6, SkyRL's GRPO epsilon),
`tempo_backend` ("auto"), `tempo_trust_check` (False), `tempo_trust_groups` (4),
`tempo_log_branch_snr` (False).

The tree covers each response (SkyRL's `response_mask`, a prefix of ones); advantages go on every
response token, as SkyRL's GRPO does, and SkyRL's `loss_mask` (0 on environment output in a
multi-turn response) masks the loss later. Rows SkyRL adds to fill the data-parallel batch
(`pad_size`, uids `pad<i>`) are groups of one and are left out of the tree statistics.
Step-wise trajectories (`generator.step_wise_trajectories`) are refused: their advantages are
computed on the last step only, where the tree of a whole response is not available.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from tempo_rl.integrations import require_engine, tempo_step_options

if __name__ == "__main__":  # run the importable module, so Ray pickles its classes by reference
    from tempo_rl.integrations.skyrl import main

    main()
    sys.exit(0)

require_engine("skyrl_train.trainer", "skyrl")

import ray  # noqa: E402
from skyrl_train.entrypoints.main_base import BasePPOExp, config_dir  # noqa: E402
from skyrl_train.trainer import RayPPOTrainer  # noqa: E402
from skyrl_train.utils.ppo_utils import register_advantage_estimator  # noqa: E402

import tempo_rl  # noqa: E402

__all__ = [
    "TEMPO",
    "TempoPPOExp",
    "TempoRayPPOTrainer",
    "compute_tempo_outcome_advantage",
    "main",
    "response_tokens",
    "step_options",
]

TEMPO = "tempo"


@dataclass
class _ResponseTokens:
    responses: torch.Tensor  # (B, L) int token ids, right-padded
    scored: torch.Tensor | None  # (B,) bool: False on SkyRL's batch-filling rows
    stats: dict[str, float] = field(default_factory=dict)  # filled by the estimator, for metrics


_CURRENT: contextvars.ContextVar[_ResponseTokens | None] = contextvars.ContextVar("tempo_skyrl", default=None)


@contextlib.contextmanager
def response_tokens(responses: torch.Tensor, scored: torch.Tensor | None = None) -> Iterator[dict[str, float]]:
    """Make `responses` (B, L) visible to the "tempo" estimator while SkyRL computes advantages.

    `scored` (B,) bool marks the rows that count in the tree statistics. Yields a dict that
    receives the statistics.
    """
    call = _ResponseTokens(responses, scored)
    token = _CURRENT.set(call)
    try:
        yield call.stats
    finally:
        _CURRENT.reset(token)


def step_options(config: Any, norm_by_std: bool = True, with_metrics: bool = True) -> tempo_rl.StepOptions:
    """The engine step's options from SkyRL's `trainer.algorithm` config (keys in the module docstring)."""
    return tempo_step_options(config, norm_by_std=norm_by_std, with_metrics=with_metrics)


def compute_tempo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | list,
    *,
    grpo_norm_by_std: bool = True,
    config: Any = None,
    responses: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TEMPO advantages in SkyRL's estimator signature; returns (advantages, returns), both (B, L).

    Args:
        token_level_rewards: (B, L) float; the outcome reward R_i is the row sum, as in SkyRL's GRPO.
        response_mask: (B, L) 0/1, a prefix of ones per row: each response's tokens.
        index: (B,) prompt uids; equal uid = same group.
        grpo_norm_by_std: SkyRL's option; True divides by sigma_g + eps.
        config: SkyRL's `trainer.algorithm` config (see the module docstring for the keys read).
        responses: (B, L) int token ids; default: the ones set by `response_tokens`.

    A[i, t] = (R_i - mu_g + td_coef * (V(child) - V(parent))) / (sigma_g + eps) on response tokens
    (arXiv 2509.18314; `tempo_rl.tempo_advantages`), 0 elsewhere; returns equal advantages, as
    for SkyRL's GRPO.
    """
    call = _CURRENT.get()
    scored = None
    if responses is None and call is not None:
        responses, scored = call.responses, call.scored
    if responses is None:
        raise ValueError(
            "tempo estimator: no response token ids. Launch with `python -m tempo_rl.integrations.skyrl` "
            "(TempoRayPPOTrainer passes them), or call compute_tempo_outcome_advantage(..., responses=...)"
        )
    if tuple(responses.shape) != tuple(response_mask.shape):
        raise ValueError(
            f"tempo estimator: responses has shape {tuple(responses.shape)}, response_mask "
            f"{tuple(response_mask.shape)}; expected the same"
        )
    scores = token_level_rewards.sum(dim=-1)  # (B,)
    options = step_options(config, bool(grpo_norm_by_std), with_metrics=call is not None)
    result = tempo_rl.advantage_step(
        responses.to(response_mask.device), response_mask, scores, list(index), scored=scored, options=options
    )
    if call is not None:
        call.stats.update(result.metrics)
    advantages = result.advantages.to(token_level_rewards.dtype)  # (B, L)
    return advantages, advantages


# Registered once the name is bound: SkyRL pickles the estimator (cloudpickle) when Ray is up, as in
# every SkyRL worker, and a function importable by name pickles by reference, without this module's
# ContextVar. A decorator would register it before the name exists, and cloudpickle would copy it.
register_advantage_estimator(TEMPO)(compute_tempo_outcome_advantage)


class TempoRayPPOTrainer(RayPPOTrainer):
    """SkyRL's `RayPPOTrainer` that hands the "tempo" estimator the batch's response token ids."""

    def compute_advantages_and_returns(self, data: Any) -> Any:
        if self.cfg.trainer.algorithm.advantage_estimator != TEMPO:
            return super().compute_advantages_and_returns(data)
        if self.cfg.generator.step_wise_trajectories:
            raise ValueError("tempo estimator: generator.step_wise_trajectories is not supported; set it to false")
        width = data["response_mask"].shape[1]
        responses = data["sequences"][:, -width:]  # (B, L): the response part, right-padded
        rows = responses.shape[0]
        pad_size = int(data.metadata.get("pad_size", 0) or 0)
        scored = torch.arange(rows) < rows - pad_size  # (B,) SkyRL's batch-filling rows are last
        with response_tokens(responses, scored) as stats:
            data = super().compute_advantages_and_returns(data)
        self.all_metrics.update(stats)
        return data


class TempoPPOExp(BasePPOExp):
    """SkyRL's `BasePPOExp` that trains with `TempoRayPPOTrainer`."""

    def get_trainer(
        self, cfg, tracker, tokenizer, train_dataset, eval_dataset, inference_engine_client, generator, colocate_pg
    ):
        return TempoRayPPOTrainer(
            cfg=cfg,
            tracker=tracker,
            tokenizer=tokenizer,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            inference_engine_client=inference_engine_client,
            generator=generator,
            colocate_pg=colocate_pg,
        )


@ray.remote(num_cpus=1)
def _entrypoint(cfg: Any) -> None:
    TempoPPOExp(cfg).run()  # as SkyRL's skyrl_entrypoint: not on the head node


def main(argv: list[str] | None = None) -> None:
    """SkyRL's `main_base` with `TempoPPOExp`: Hydra overrides of `ppo_base_config` on the command line."""
    import hydra
    from skyrl_train.utils import validate_cfg
    from skyrl_train.utils.utils import initialize_ray

    argv = sys.argv[1:] if argv is None else argv
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = hydra.compose(config_name="ppo_base_config", overrides=argv)
    validate_cfg(cfg)
    initialize_ray(cfg)
    ray.get(_entrypoint.remote(cfg))
