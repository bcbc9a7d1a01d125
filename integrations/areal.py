"""TEMPO in AReaL (1.0.x): `TempoPPOTrainer` in place of `areal.PPOTrainer`.

AReaL computes advantages in `PPOActor._compute_advantages(data)` on one padded batch: `input_ids`
(B, T) right-padded (`attention_mask`), `loss_mask` (B, T) 1 on the response tokens, `rewards` (B,).
Its GRPO is a group-level `actor.reward_norm` (mean and std over each `group_size` consecutive
rows) and a return summed over the response (discount 1, lambda 1, no critic).

`TempoPPOActor` is AReaL's `PPOActor` whose `_compute_advantages` runs AReaL's own (reward penalty,
scaling, clipping, group normalization, KL reward, returns) and adds TEMPO's TD term,
td_coef * (V(child) - V(parent)) / (sigma_g + eps) (arXiv 2509.18314), from one call of
`tempo_rl.advantage_step` on the same rewards and groups. The TD term is the difference between the
step's advantages and GRPO's (TEMPO with td_coef 0), exactly 0 at tokens where no group branches, so
there the advantages are AReaL's own GRPO advantages bit for bit. `actor.adv_norm`, when set, is
applied after the TD term is added, as AReaL applies it after its returns.

`TempoPPOTrainer` is `areal.PPOTrainer` whose actor engine (FSDP, Megatron or Archon) builds a
`TempoPPOActor`; the reference model and critic stay AReaL's. A run uses `TempoGRPOConfig`
(`GRPOConfig` whose `actor` is a `TempoPPOActorConfig`, with the `tempo_*` fields):

    config, _ = load_expr_config(sys.argv[1:], TempoGRPOConfig)
    with TempoPPOTrainer(config, train_dataset=..., valid_dataset=...) as trainer:
        trainer.train(workflow=..., workflow_kwargs=...)

Requirements, checked when the actor is built: `actor.reward_norm` with `mean_level: group` (its
`group_size` consecutive rows are one prompt's group; `std_level: group` divides by the group std,
`std_level: null` is the Dr. GRPO form), `std_unbiased: true` and no leave-one-out mean, as in
TEMPO's definition. The tree of a row covers its tokens from the first loss token to the end of
the sequence; tokens with `loss_mask` 0 inside (tool output in multi-turn runs) stay in the tree and
get no advantage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from tempo_rl.integrations import require_engine

require_engine("areal.trainer.ppo.actor", "areal")

from areal.api.cli_args import GRPOConfig, PPOActorConfig  # noqa: E402
from areal.trainer.ppo.actor import PPOActor  # noqa: E402
from areal.trainer.rl_trainer import PPOTrainer  # noqa: E402
from areal.utils import stats_tracker  # noqa: E402
from areal.utils.environ import is_single_controller  # noqa: E402

import tempo_rl  # noqa: E402

__all__ = [
    "TempoGRPOConfig",
    "TempoPPOActor",
    "TempoPPOActorConfig",
    "TempoPPOTrainer",
    "check_whole_groups",
    "response_rows",
    "step_options",
    "tempo_engine_class",
]


@dataclass
class TempoPPOActorConfig(PPOActorConfig):
    """AReaL's `PPOActorConfig` plus TEMPO's options (all prefixed `tempo_`)."""

    tempo_td_coef: float = field(
        default=1.0,
        metadata={"help": "Weight of TEMPO's TD term V(child) - V(parent) (arXiv 2509.18314). 0 gives GRPO."},
    )
    tempo_backend: str = field(default="auto", metadata={"help": "'auto', 'reference', 'torch' or 'triton'."})
    tempo_trust_check: bool = field(
        default=False,
        metadata={"help": "Recompute tempo_trust_groups sampled groups with the exact reference each step."},
    )
    tempo_trust_groups: int = field(default=4, metadata={"help": "Groups the trust check recomputes."})
    tempo_log_branch_snr: bool = field(
        default=False,
        metadata={"help": "Log the per-node diagnostic of tempo_rl.branch_snr_stats (about 2x the advantages' cost)."},
    )


@dataclass
class TempoGRPOConfig(GRPOConfig):
    """AReaL's `GRPOConfig` whose actor carries TEMPO's options."""

    actor: TempoPPOActorConfig = field(default_factory=TempoPPOActorConfig)


def step_options(config: Any) -> tempo_rl.StepOptions:
    """The engine step's options from an actor config: groups and std from `reward_norm`, the rest
    from the `tempo_*` fields (defaults when the config is AReaL's plain `PPOActorConfig`)."""
    norm = config.reward_norm
    if norm is None or norm.mean_level != "group":
        raise ValueError("TEMPO in AReaL needs actor.reward_norm with mean_level: group (its group_size is the group)")
    if norm.std_level not in ("group", None) or norm.mean_leave1out or not norm.std_unbiased:
        raise ValueError(
            "TEMPO in AReaL needs actor.reward_norm.std_level group or null, mean_leave1out false and std_unbiased "
            f"true; got std_level={norm.std_level!r}, mean_leave1out={norm.mean_leave1out}, std_unbiased={norm.std_unbiased}"
        )
    return tempo_rl.StepOptions(
        td_coef=float(getattr(config, "tempo_td_coef", 1.0)),
        norm_by_std=norm.std_level == "group",
        eps=float(norm.eps),
        backend=str(getattr(config, "tempo_backend", "auto")),
        trust_check=bool(getattr(config, "tempo_trust_check", False)),
        trust_groups=int(getattr(config, "tempo_trust_groups", 4)),
        log_branch_snr=bool(getattr(config, "tempo_log_branch_snr", False)),
        metrics_prefix="tempo/",
    )


def response_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AReaL's (B, T) rows -> responses (B, L) left-aligned, their tree mask (B, L), loss mask (B, L)
    and `starts` (B,), the position of each row's first loss token (the response starts there)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    has_loss = loss_mask.bool()
    starts = torch.where(has_loss, positions, input_ids.shape[1]).amin(dim=1)  # (B,)
    ends = attention_mask.sum(dim=1).long()  # (B,) right padding after
    lengths = (ends - starts).clamp(min=0)  # (B,)
    width = max(int(lengths.max().item()), 1) if len(lengths) else 1
    offsets = torch.arange(width, device=input_ids.device)  # (L,)
    tree = offsets[None, :] < lengths[:, None]  # (B, L)
    index = (starts[:, None] + offsets[None, :]).clamp(max=input_ids.shape[1] - 1)  # (B, L)
    responses = torch.where(tree, input_ids.gather(1, index), 0)
    return responses, tree, has_loss.gather(1, index) & tree, starts


def check_whole_groups(input_ids: torch.Tensor, starts: torch.Tensor, group_size: int) -> None:
    """Each run of `group_size` consecutive rows must share one prompt (the tokens before `starts`):
    AReaL's group normalization and TEMPO's tree both read the batch that way. A group that lost a
    trajectory (AReaL's grouped workflow keeps the others) shifts every later group: refused here,
    naming the first row out of place, rather than mixing two prompts' responses in one tree.
    Each group is compared with its first row that has a loss token; a row without one (nothing to
    train on) must only hold that row's prompt first."""
    b, t = input_ids.shape
    rows = torch.arange(b, device=input_ids.device)  # (B,)
    has = starts < t  # (B,) the row has a loss token
    group = rows // group_size  # (B,)
    first = torch.full((b // group_size + 1,), b, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, group, torch.where(has, rows, b), "amin")[group]  # (B,) b: none in the group
    ref = first.clamp(max=b - 1)
    in_prompt = torch.arange(t, device=input_ids.device)[None, :] < starts[ref][:, None]  # (B, T)
    same = ((input_ids == input_ids[ref]) | ~in_prompt).all(dim=1) & (~has | (starts == starts[ref]))  # (B,)
    same |= first == b
    if not bool(same.all()):
        row = int((~same).nonzero()[0, 0])
        head = int(group[row]) * group_size
        raise ValueError(
            f"TEMPO: row {row} should be in the group of rows {head}..{head + group_size - 1} (group_size "
            f"{group_size}), but its prompt differs from row {int(ref[row])}'s. AReaL's batch must be whole groups "
            "of group_size consecutive rows of one prompt; a group that lost a trajectory shifts every later one. "
            "Make the workflow return all group_size trajectories of a prompt (or none)."
        )


class TempoPPOActor(PPOActor):
    """AReaL's `PPOActor` with TEMPO's TD term added to its GRPO advantages."""

    def __init__(self, config: PPOActorConfig, engine: Any):
        super().__init__(config, engine)
        self.tempo_options = step_options(config)
        self.tempo_adv_norm, self.adv_norm = self.adv_norm, None  # applied after the TD term

    def _compute_advantages(self, data: dict[str, Any]) -> dict[str, Any]:
        responses, tree, loss, starts = response_rows(data["input_ids"], data["attention_mask"], data["loss_mask"])
        data = super()._compute_advantages(data)  # AReaL's GRPO; its loss_mask is now rolled by -1
        scores = (data["rewards"] + self.reward_bias) * self.reward_scaling  # (B,) as AReaL scored them
        scores = torch.clip(scores, max=self.reward_clip, min=-self.reward_clip)
        group_size = self.config.reward_norm.group_size
        if scores.shape[0] % group_size:
            raise ValueError(f"TEMPO: batch of {scores.shape[0]} rows is not whole groups of {group_size}")
        check_whole_groups(data["input_ids"], starts, group_size)
        group_ids = torch.arange(scores.shape[0], device=scores.device) // group_size  # (B,)
        result = tempo_rl.advantage_step(
            responses, tree, scores, group_ids, loss_mask=loss, options=self.tempo_options
        )  # (B, L)
        grpo = tempo_rl.tempo_advantages(
            responses,
            tree,
            scores,
            group_ids,
            loss_mask=loss,
            norm_by_std=self.tempo_options.norm_by_std,
            eps=self.tempo_options.eps,
            td_coef=0.0,
            backend=self.tempo_options.backend,
        )
        td = _to_rows(result.advantages - grpo, tree, starts, data["advantages"])  # (B, T); exactly 0 off branches
        data["advantages"] = data["advantages"] + td
        data["returns"] = data["returns"] + td
        if self.tempo_adv_norm is not None:
            data["advantages"] = self.tempo_adv_norm(data["advantages"], data["loss_mask"])
        stats_tracker.scalar(**result.metrics)  # logged with AReaL's own step statistics
        self.tempo_metrics = result.metrics
        return data


def _to_rows(values: torch.Tensor, tree: torch.Tensor, starts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, L) per response token -> (B, T) in AReaL's layout, where the value for token p sits at
    p - 1 (AReaL rolls log-probs and the loss mask by -1: position t predicts token t + 1)."""
    out = torch.zeros_like(like)
    offsets = torch.arange(values.shape[1], device=values.device)  # (L,)
    index = (starts[:, None] - 1 + offsets[None, :]).clamp(min=0, max=like.shape[1] - 1)  # (B, L)
    return out.scatter_add_(1, index, torch.where(tree, values, 0).to(like.dtype))


class _TempoActorEngine:
    """Put before an AReaL actor engine class: its `actor` is a `TempoPPOActor`."""

    def __init__(self, config: PPOActorConfig):
        super().__init__(config)  # type: ignore[call-arg]
        self.actor = TempoPPOActor(config, self)


_ENGINES = {
    "fsdp": ("areal.engine", "FSDPPPOActor"),
    "megatron": ("areal.engine", "MegatronPPOActor"),
    "archon": ("areal.experimental.engine.archon_engine", "ArchonPPOActor"),
}


def tempo_engine_class(backend: str) -> type:
    """The actor engine of `backend` ("fsdp", "megatron", "archon") whose actor is a `TempoPPOActor`."""
    if backend not in _ENGINES:
        raise ValueError(f"Invalid backend: {backend}, expected fsdp, megatron or archon")
    module, base_name = _ENGINES[backend]
    name = "Tempo" + base_name
    cls = globals().get(name)
    if cls is None:
        base = getattr(importlib.import_module(module), base_name)
        cls = type(name, (_TempoActorEngine, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls  # importable by name, so it pickles to AReaL's workers
    return cls


def __getattr__(name: str) -> type:
    """`TempoFSDPPPOActor` and the others, built on first use (pickle finds them here in a worker)."""
    for backend, (_, base_name) in _ENGINES.items():
        if name == "Tempo" + base_name:
            return tempo_engine_class(backend)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TempoPPOTrainer(PPOTrainer):
    """`areal.PPOTrainer` whose actor engine computes TEMPO advantages (`TempoPPOActor`)."""

    def _create_train_engine(self, actor_config: PPOActorConfig, alloc: Any) -> Any:
        if actor_config is not self.config.actor:  # the reference model and the teacher stay AReaL's
            return super()._create_train_engine(actor_config, alloc)
        step_options(actor_config)  # refuse an unsupported reward_norm before any GPU is allocated
        actor_cls = tempo_engine_class(alloc.backend)
        if is_single_controller():
            actor = actor_cls.as_controller(actor_config, self.scheduler)
        else:
            actor = actor_cls(config=actor_config)
        actor.create_process_group(parallel_strategy=alloc.parallel)
        return actor
