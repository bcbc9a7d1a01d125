"""TEMPO advantages in TRL's `GRPOTrainer` (TRL 1.x, checked against 1.16).

`TempoGRPOTrainer` is `trl.GRPOTrainer` with one change: the advantages it hands the loss are
TEMPO's (B, L) token advantages (`tempo_rl.tempo_advantages`, arXiv 2509.18314) instead of GRPO's
(B,) sequence advantages. Generation, rewards, the reference model and KL (`beta`), every
`loss_type`, importance sampling and logging are TRL's own; `GRPOTrainer._compute_loss` already
accepts (B, L) advantages.

How it hooks in. `_calculate_rewards` returns the rewards of the whole generation batch, gathered
from every process; the subclass keeps them together with this process's completion ids. After
TRL's `_generate_and_score_completions` has built the batch, the completion ids of all processes
are gathered too, so every prompt's `num_generations` completions are visible together even when
the per-device batch splits a group across processes; TEMPO runs on that global batch and each
process keeps its own rows (TRL's `process_slice`). Every process computes the same numbers: the
advantages do not depend on the world size (the estimator's batch invariance, property 5b of the
semantics).

Mapping of TRL's options:
- `scale_rewards="group"` (TRL's default) -> `norm_by_std=True`; `"none"` -> `norm_by_std=False`
  (Dr. GRPO form); `"batch"` -> the unnormalised TEMPO advantages divided by the std of all rewards
  in the generation batch, as TRL does for GRPO.
- Several reward functions: their weighted sum (`reward_weights`) is the reward R, as with TRL's
  default `multi_objective_aggregation="sum_then_normalize"`. `"normalize_then_sum"` is refused.
- A completion every reward function scored None: TRL leaves it out of its group's baseline and
  gives it advantage 0; here it is left out of its group's tree too and gets 0 on every token.
- Tool-output tokens (TRL's `tool_mask`) stay in the tree and get advantage 0 (`loss_mask`).
- `tempo_eps` defaults to TRL's 1e-4, so with `tempo_td_coef=0` the advantages are TRL's GRPO
  advantages broadcast over the tokens.

Memory. TRL 1.16 scores completion tokens through a fused, tiled LM head (`add_fused_lm_head`):
the (B, T, V) logits are never formed, and its loss takes the (B, T) advantages as they are, so
TEMPO costs no more memory than GRPO here. `use_liger_kernel=True` is accepted: in TRL 1.16 it only
swaps in Liger's layer kernels. A TRL that routes the loss to Liger's fused GRPO loss (which takes
one advantage per sequence, `compute_liger_loss`) is refused; `tempo_rl.fused_policy_loss` is the
(B, T)-advantage loss of that kind, used by `tempo-rl train` (`fused_loss = True`).

Metrics and rollouts. `tempo/td_coef` and the tree statistics are logged with TRL's metrics, the
same keys every generation batch (docs/metrics.md); `tempo_dump_rollouts_every=N` appends every N-th
training generation batch to <output_dir>/rollouts.jsonl, the file `tempo-rl inspect` reads.

Training on the tree (`tempo_tree_forward=True`). The policy, old-policy and reference log-probs are
scored by `tempo_rl.tree_logprobs`: each chunk of rows TRL scores at once is packed into its prefix
tree (the shared prompt and every shared completion prefix once) and run in one forward, whose
attention follows the tree. The log-probs equal TRL's per-row ones to float rounding, and the
gradients flow through the shared nodes to every row that uses them, so TRL's loss is unchanged.
The forward goes through the model TRL hands its scoring (on several processes, the
DistributedDataParallel wrapper, whose forward prepares the gradient all-reduce), and a PEFT/LoRA
model runs with its adapters. It is refused, naming the option, where it cannot be exact: FSDP,
DeepSpeed, XLA or Megatron-LM (the LM head runs outside the model's forward, where those may hold
the parameters sharded), multimodal inputs, an MoE load-balancing loss, or an entropy bonus (the
tree's entropies carry no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tempo_rl
from tempo_rl.extras import require, requires
from tempo_rl.viz.rollouts import dump_line

require(("trl", "accelerate"), "tempo_rl.integrations.trl", "trl")  # trl itself named first when both are missing
with requires("trl", "tempo_rl.integrations.trl"):
    from accelerate.utils import DistributedType, gather
    from trl import GRPOConfig, GRPOTrainer

__all__ = ["TempoGRPOConfig", "TempoGRPOTrainer", "step_options"]

_NORM_BY_STD = {"group": True, "none": False, "batch": False}


@dataclass
class TempoGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus TEMPO's options (all prefixed `tempo_`)."""

    tempo_td_coef: float = field(
        default=1.0,
        metadata={"help": "Weight of TEMPO's TD term V(child) - V(parent) (arXiv 2509.18314). 0 gives GRPO."},
    )
    tempo_eps: float = field(
        default=1e-4,
        metadata={"help": "Added to the group (or batch) reward std; 1e-4 is TRL's GRPO value."},
    )
    tempo_backend: str = field(
        default="auto",
        metadata={"help": "tempo_rl backend: 'auto', 'reference', 'torch' or 'triton'."},
    )
    tempo_log_tree_stats: bool = field(
        default=True,
        metadata={
            "help": "Log tempo/td_coef and the prefix-tree statistics (tempo/*) each generation step, the same "
            "keys every step (docs/metrics.md; computed with the advantages, from the same pass over the tokens)."
        },
    )
    tempo_trust_check: bool = field(
        default=False,
        metadata={
            "help": "Each step, recompute tempo_trust_groups sampled groups with the exact reference and "
            "raise tempo_rl.AdvantageMismatch on a difference (cost independent of the batch size)."
        },
    )
    tempo_trust_groups: int = field(default=4, metadata={"help": "Groups checked per step by tempo_trust_check."})
    tempo_tree_forward: bool = field(
        default=False,
        metadata={
            "help": "Score log-probs on each batch's prefix tree (tempo_rl.tree_logprobs): shared prompts and "
            "completion prefixes run once; same log-probs and gradients to float rounding. One process or DDP "
            "(several processes), LoRA included; text only."
        },
    )
    tempo_log_branch_snr: bool = field(
        default=False,
        metadata={
            "help": "Log the per-node diagnostic of tempo_rl.branch_snr_stats (tempo/branch_nodes, "
            "tempo/branch_inner_nodes, tempo/branch_node_mean_m, tempo/branch_r_unbiased: where TEMPO is expected "
            "to pay, proofs_notes/tree-rollouts.md). Costs about 2x the advantages (0.5 s at 3584 x 8192 on one "
            "CPU core)."
        },
    )
    tempo_dump_rollouts_every: int = field(
        default=0,
        metadata={
            "help": "Every N-th generation batch (the first included), append its scored completions to "
            "<output_dir>/rollouts.jsonl (step, group_id, prompt, response token ids, text, reward), the file "
            "`tempo-rl inspect` reads; 0: never."
        },
    )


class TempoGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` trained on TEMPO token advantages; takes the same arguments.

    `args` may be a `TempoGRPOConfig` (for the `tempo_*` options) or a plain `GRPOConfig`
    (TEMPO with its defaults).
    """

    _tag_names = ["trl", "grpo", "tempo"]
    _name = "TEMPO-GRPO"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_supported(self.args)
        self.tempo_options = step_options(self.args)
        self.tempo_tree_forward = bool(getattr(self.args, "tempo_tree_forward", False))
        if self.tempo_tree_forward:
            _check_tree_forward(self.args, self.accelerator.distributed_type)
        self._tempo_scored: tuple[list[list[int]], torch.Tensor] | None = None
        self._tempo_generations = 0  # training generation batches so far (tempo_dump_rollouts_every)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._tempo_scored = (completion_ids_list, rewards_per_func)  # rewards: all processes, (B_global, F)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._tempo_scored = None
        output = super()._generate_and_score_completions(inputs)
        if self._tempo_scored is None:
            raise RuntimeError("TempoGRPOTrainer: GRPOTrainer scored no completions (_calculate_rewards not called)")
        completion_ids_list, rewards_per_func = self._tempo_scored
        self._tempo_scored = None
        output["advantages"] = self._tempo_advantages(output, completion_ids_list, rewards_per_func)
        if self.model.training:
            self._dump_rollouts(output, completion_ids_list, rewards_per_func)
        return output

    def _tempo_advantages(
        self, output: dict[str, Any], completion_ids_list: list[list[int]], rewards_per_func: torch.Tensor
    ) -> torch.Tensor:
        """This process's (B_local, L) TEMPO advantages, computed on the gathered generation batch."""
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        local = _local_batch(output, completion_ids_list)
        batch = _gather_batch(self.accelerator, local)
        n_local, n_global = local["responses"].shape[0], batch["responses"].shape[0]
        if rewards_per_func.shape[0] != n_global:
            raise ValueError(
                f"TempoGRPOTrainer: {rewards_per_func.shape[0]} rewards for {n_global} gathered completions; "
                "every process must score the same number of completions"
            )
        rewards, group_ids = _rewards_and_groups(rewards_per_func, self.reward_weights, group_size)
        options = self.tempo_options
        # One pass over the tokens gives the advantages and the tree statistics logged as tempo/*;
        # unscored rows (ids < 0) are left out of the statistics.
        result = tempo_rl.advantage_step(
            batch["responses"],
            batch["response_mask"],
            rewards,
            group_ids,
            loss_mask=batch["loss_mask"],
            scored=group_ids >= 0,
            options=options,
        )
        adv = result.advantages  # (B_global, L_global)
        if self.scale_rewards == "batch":
            adv = adv / (_batch_std(rewards, group_ids) + options.eps)
        self._log_tempo(mode, batch, adv, result.metrics)
        start = self.accelerator.process_index * n_local
        return adv[start : start + n_local, : local["responses"].shape[1]].contiguous()  # (B_local, L)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **media: Any,
    ):
        """TRL's scoring, or with `tempo_tree_forward` the same (B, T) log-probs (and entropies, without
        gradient) from one forward per chunk of rows over its prefix tree."""
        if not self.tempo_tree_forward:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **media,
            )
        given = sorted(k for k, v in media.items() if v is not None)
        if given or compute_aux_loss:
            what = ", ".join(given) if given else "an MoE load-balancing loss"
            raise ValueError(f"TempoGRPOTrainer: tempo_tree_forward=True scores text only; this batch has {what}")
        split = input_ids.shape[1] - logits_to_keep  # prompt columns, then completion columns
        rows = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], rows):
            ids, mask = input_ids[start : start + rows], attention_mask[start : start + rows]
            with self.accelerator.autocast():
                logp, entropy = tempo_rl.tree_logprobs_and_entropy(
                    model,  # as TRL passes it (DDP-wrapped when training on several processes)
                    ids[:, :split],
                    mask[:, :split],
                    ids[:, split:],
                    mask[:, split:],
                    temperature=self.temperature,
                    with_entropy=compute_entropy,
                )
            logps.append(logp.float())
            if entropy is not None:
                entropies.append(entropy.float())
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _log_tempo(
        self, mode: str, batch: dict[str, torch.Tensor], adv: torch.Tensor, metrics: dict[str, float]
    ) -> None:
        # The completions table shows one advantage per completion: the mean over its tokens (adv is 0
        # past them; summing the int64 mask is several times faster than a bool one).
        seq_adv = adv.sum(1) / batch["response_mask"].sum(1).clamp(min=1)  # (B_global,)
        for _ in range(min(len(seq_adv), len(self._logs["advantages"]))):
            self._logs["advantages"].pop()  # GRPO's values that GRPOTrainer just logged
        self._logs["advantages"].extend(seq_adv.tolist())
        for key, value in metrics.items():  # the same keys every step (tempo_rl.advantage_step)
            self._metrics[mode][key].append(value)

    def _dump_rollouts(
        self, output: dict[str, Any], completion_ids_list: list[list[int]], rewards_per_func: torch.Tensor
    ) -> None:
        """Every `tempo_dump_rollouts_every`-th training generation batch: its scored completions appended
        to <output_dir>/rollouts.jsonl by the main process, `step` being TRL's global step at generation."""
        every = int(getattr(self.args, "tempo_dump_rollouts_every", 0))
        self._tempo_generations += 1
        if not every or (self._tempo_generations - 1) % every:
            return
        # Every process takes part in the gathers (the batch as `_tempo_advantages` saw it); one writes.
        batch = _gather_batch(self.accelerator, _local_batch(output, completion_ids_list))
        rewards, group_ids = _rewards_and_groups(rewards_per_func, self.reward_weights, self.num_generations)
        prompts = _gather_batch(self.accelerator, {"ids": output["prompt_ids"], "mask": output["prompt_mask"]})
        if not self.accelerator.is_main_process:
            return
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)  # a processor's tokenizer
        path = Path(self.args.output_dir) / "rollouts.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for row in (group_ids >= 0).nonzero().flatten().tolist():  # unscored completions have no reward
                ids = batch["responses"][row][batch["response_mask"][row].bool()].tolist()
                prompt = tokenizer.decode(prompts["ids"][row][prompts["mask"][row].bool()], skip_special_tokens=True)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                gid = int(group_ids[row])
                f.write(dump_line(self.state.global_step, gid, prompt, ids, text, float(rewards[row])))


def step_options(args: Any) -> tempo_rl.StepOptions:
    """The engine step's options from a `TempoGRPOConfig` (a plain `GRPOConfig` gets the defaults)."""
    defaults = TempoGRPOConfig.__dataclass_fields__
    get = lambda name: getattr(args, name, defaults[name].default)
    return tempo_rl.StepOptions(
        td_coef=float(get("tempo_td_coef")),
        norm_by_std=_NORM_BY_STD[args.scale_rewards],
        eps=float(get("tempo_eps")),
        backend=str(get("tempo_backend")),
        tree_stats=bool(get("tempo_log_tree_stats")),
        trust_check=bool(get("tempo_trust_check")),
        trust_groups=int(get("tempo_trust_groups")),
        log_branch_snr=bool(get("tempo_log_branch_snr")),
        metrics_prefix="tempo/",
    )


def _check_supported(args: GRPOConfig) -> None:
    if args.scale_rewards not in _NORM_BY_STD:
        raise ValueError(
            f"TempoGRPOTrainer: scale_rewards must be one of {sorted(_NORM_BY_STD)}, got {args.scale_rewards!r}"
        )
    if args.multi_objective_aggregation != "sum_then_normalize":
        raise ValueError(
            "TempoGRPOTrainer: multi_objective_aggregation must be 'sum_then_normalize' (TEMPO needs one "
            f"reward per completion before normalising), got {args.multi_objective_aggregation!r}"
        )
    every = getattr(args, "tempo_dump_rollouts_every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"TempoGRPOTrainer: tempo_dump_rollouts_every must be an int >= 0, got {every!r}")
    if getattr(args, "use_liger_kernel", False) and hasattr(GRPOTrainer, "compute_liger_loss"):
        raise ValueError(
            "TempoGRPOTrainer: use_liger_kernel=True makes this TRL version compute the loss with Liger's fused GRPO "
            "loss, which takes one advantage per sequence, not TEMPO's (B, T). Use TRL >= 1.16, whose fused LM head "
            "never forms the (B, T, V) logits and which accepts use_liger_kernel=True with (B, T) advantages, or "
            "train with tempo_rl's trainer, whose loss is tempo_rl.fused_policy_loss (fused_loss=True)."
        )


# One process, or DistributedDataParallel (accelerate's MULTI_* types): the model's parameters are whole
# in every process, so the LM head can run outside the model's forward.
_TREE_DISTRIBUTED = {DistributedType.NO} | {t for t in DistributedType if t.name.startswith("MULTI_")}


def _check_tree_forward(args: GRPOConfig, distributed_type: DistributedType) -> None:
    if distributed_type not in _TREE_DISTRIBUTED:
        raise ValueError(
            f"TempoGRPOTrainer: tempo_tree_forward=True runs on one process or with DDP, not {distributed_type.value} "
            "(it scores through the LM head outside the model's forward, where sharded parameters are not whole); "
            "set tempo_tree_forward=False"
        )
    if getattr(args, "entropy_coef", 0.0) != 0.0 or getattr(args, "use_adaptive_entropy", False):
        raise ValueError(
            "TempoGRPOTrainer: tempo_tree_forward=True gives entropies without gradient, so it cannot train an "
            "entropy bonus; set entropy_coef=0 and use_adaptive_entropy=False, or tempo_tree_forward=False"
        )


def _local_batch(output: dict[str, Any], completion_ids_list: list[list[int]]) -> dict[str, torch.Tensor]:
    """This process's completions as TEMPO inputs, at the width of TRL's padded completion_ids."""
    responses = output["completion_ids"]  # (B_local, L), right-padded
    if len(completion_ids_list) != responses.shape[0]:
        raise ValueError(
            f"TempoGRPOTrainer: {len(completion_ids_list)} completions but completion_ids has {responses.shape[0]} rows"
        )
    lengths = torch.tensor([len(ids) for ids in completion_ids_list], device=responses.device)  # (B_local,)
    positions = torch.arange(responses.shape[1], device=responses.device)
    # The tree needs every completion token, even where TRL masks the loss (truncated completions).
    response_mask = (positions[None, :] < lengths[:, None]).long()  # (B_local, L)
    tool_mask = output.get("tool_mask")
    loss_mask = response_mask if tool_mask is None else response_mask * tool_mask.long()
    return {"responses": responses, "response_mask": response_mask, "loss_mask": loss_mask}


def _gather_batch(accelerator, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of all processes in process order (TRL's global order), padded to a common width."""
    if accelerator.num_processes == 1:
        return local
    # Padding values are never read: the masks are 0 there.
    return {k: gather(accelerator.pad_across_processes(v, dim=1, pad_index=0)) for k, v in local.items()}


def _rewards_and_groups(
    rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted reward per completion and its group id; unscored completions get id -1 - row.

    TRL's layout: the gathered batch holds each prompt's `group_size` completions in consecutive
    rows (its RepeatSampler and `rewards.view(-1, num_generations)` rely on it).
    """
    n = rewards_per_func.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"TempoGRPOTrainer: the gathered batch has {n} completions, not a multiple of num_generations="
            f"{group_size}; TEMPO needs every prompt's completions in consecutive rows"
        )
    weights = reward_weights.to(rewards_per_func.device, rewards_per_func.dtype)
    rewards = (rewards_per_func * weights[None, :]).nansum(dim=1)  # (B,)
    unscored = torch.isnan(rewards_per_func).all(dim=1)  # (B,)
    rows = torch.arange(n, device=rewards.device)
    # A group of one gets advantage 0 on every token: out of the baseline, out of the tree.
    group_ids = torch.where(unscored, -1 - rows, rows // group_size)
    return torch.where(unscored, torch.zeros_like(rewards), rewards), group_ids


def _batch_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    scored = rewards[group_ids >= 0]
    return scored.std() if scored.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
