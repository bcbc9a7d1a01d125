"""`tempo-rl train`: policy optimisation of a causal LM with TEMPO (or GRPO / Dr. GRPO) advantages.

One step: P prompts -> G sampled responses each (`generate` under inference_mode, or a prefix tree
per group with `rollout = "tree"`: trainer/tree_rollout.py) -> verifiable
rewards -> token advantages from `tempo_rl.tempo_advantages` (TEMPO, arXiv 2509.18314) or
`tempo_rl.grpo_advantages` -> PPO clipped surrogate (asymmetric clip), `ppo_epochs` x
`mini_batches` AdamW updates with gradient accumulation and clipping -> metrics, checkpoints.

Left out on purpose: value models (TEMPO is critic-free), entropy bonuses, dynamic sampling and
overlong-reward shaping, multi-GPU (the advantages are batch-invariant, so data parallelism would
only need gradient all-reduce), and generation servers (vLLM): `generate` keeps it one readable file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tempo_rl
from tempo_rl import AdvantageMismatch, StepOptions, StepResult, advantage_step
from tempo_rl.policy_loss import fused_logprobs

from . import checkpoint
from .config import INSTALL_TRAIN, TrainConfig, UsageError, add_config_arguments, config_from_args
from .data import (
    BUILTIN_TASKS,
    CHANCE_TOKENS,
    Example,
    batch_for_step,
    hold_out,
    load_dataset,
    prompt_text,
    reward_columns,
)
from .loss import policy_loss
from .rewards import (
    RewardBatch,
    RewardFunction,
    TrainingStopped,
    check_reward_arguments,
    load_reward_functions,
    score_batch,
)
from .rollout import ChanceToken, Rollout, forward_hidden, forward_logprobs, lm_head, sample_groups
from .run_dir import check_output_dir, check_resume, clear_run, keep_rows_up_to

log = logging.getLogger("tempo_rl.trainer")


# ----------------------------------------------------------------------------- set-up
def pick_device(name: str) -> torch.device:
    """The torch device of `--device`; UsageError when this torch cannot use it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"device {name!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise UsageError(
                f"device {name!r}: this torch ({torch.__version__}, {build}) has no CUDA device; "
                "use --device cpu, or install a CUDA build of torch on a GPU machine"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"device {name!r}: the trainer runs on 'cpu' or 'cuda'")
    return device


TRAIN_MODULES = ("transformers", "tokenizers", "safetensors", "tqdm")


def require_modules(modules: tuple[str, ...], what: str, install: str) -> None:
    """UsageError naming the first missing module and the install command."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"{what} needs the Python package {name!r}, which is not installed: {install}")


def check_model_dir(cfg: TrainConfig) -> None:
    """A local model directory must exist and hold a config.json (no hub downloads: say so up front)."""
    if cfg.model == "tiny":
        return
    path = Path(cfg.model)
    if not path.is_dir():
        raise UsageError(
            f"model {cfg.model!r}: no such directory (the trainer loads a local directory written "
            "by save_pretrained; download a hub model first, e.g. `hf download Qwen/Qwen3-1.7B "
            "--local-dir models/Qwen3-1.7B`)"
        )
    if not (path / "config.json").is_file():
        raise UsageError(f"model {cfg.model!r}: no config.json in it; expected a directory written by save_pretrained")


def load_policy(path: str | Path, device: torch.device, gradient_checkpointing: bool = False):
    """Tokenizer and model through the same `from_pretrained` path a real model takes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    if gradient_checkpointing:  # recomputes activations in the training forward; generation keeps its KV cache
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()  # transformers 5 renamed it; 4.x only has the old name
    return tokenizer, model


def model_path(cfg: TrainConfig) -> str:
    if cfg.model != "tiny":
        return cfg.model
    from .tiny import WARMUP_FORGET_CARRY, make_base_model

    task = cfg.dataset if cfg.dataset in WARMUP_FORGET_CARRY else "add"
    return str(make_base_model(cfg.tiny_dir, warmup_steps=cfg.tiny_warmup_steps, task=task))


def make_optimizer(model, cfg: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.lr_warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return opt, sched


def train_and_eval_examples(cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    """The training pool and the eval prompts. A built-in task draws fresh eval prompts; a file without
    --eval-dataset gives up a held-out split (data.hold_out) that training never sees."""
    columns = dict(prompt_column=cfg.prompt_column, answer_column=cfg.answer_column)
    examples = load_dataset(cfg.dataset, seed=cfg.seed, **columns)
    if cfg.eval_dataset:
        evals = load_dataset(cfg.eval_dataset, n=cfg.eval_prompts, seed=cfg.seed + 1, **columns)
        return examples, evals[: cfg.eval_prompts]
    if cfg.dataset in BUILTIN_TASKS:
        return examples, BUILTIN_TASKS[cfg.dataset](cfg.eval_prompts, 10_000 + cfg.seed)
    return hold_out(examples, cfg.eval_prompts, cfg.seed)


def chance_token(tokenizer, cfg: TrainConfig) -> ChanceToken | None:
    """The environment token of a built-in task that has one (`data.CHANCE_TOKENS`), in this
    tokenizer's ids: its response position is the preamble's token count, each choice one token.
    UsageError when the tokenizer cannot express it so."""
    if cfg.dataset not in CHANCE_TOKENS:
        return None
    preamble, choices = CHANCE_TOKENS[cfg.dataset]
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) != 1 for i in ids):
        raise UsageError(f"dataset {cfg.dataset!r}: each of {choices} must be one token of this tokenizer")
    position = len(tokenizer(preamble, add_special_tokens=False)["input_ids"])
    return ChanceToken(position=position, token_ids=tuple(i[0] for i in ids))


def prompts_for(tokenizer, batch: list[Example], cfg: TrainConfig) -> tuple[list[str], bool]:
    """(prompt strings, whether the sampler should apply the chat template). Text prompts go as they
    are (the sampler wraps them as a user turn with --chat-template); a batch holding chat prompts
    (lists of messages) is rendered here with the tokenizer's chat template, every prompt of it."""
    if all(isinstance(e.prompt, str) for e in batch):
        return [e.prompt for e in batch], cfg.chat_template
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError("dataset: chat prompts (lists of messages) need a tokenizer with a chat template")
    texts = []
    for e in batch:
        messages = e.prompt if isinstance(e.prompt, list) else [{"role": "user", "content": e.prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
            text = text[len(bos) :]  # the tokenizer adds it again
        texts.append(text)
    return texts, False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- advantages
def step_options(cfg: TrainConfig, step: int, trust: bool) -> StepOptions:
    """The engine step's options for this run (GRPO and Dr. GRPO are TEMPO with td_coef = 0,
    bitwise; Dr. GRPO does not divide by the group std). `trust`: run the sampled trust check."""
    return StepOptions(
        estimator="tempo" if cfg.estimator == "tempo" else "grpo",
        td_coef=cfg.td_coef,
        norm_by_std=cfg.estimator != "dr_grpo",
        backend=cfg.backend,
        trust_check=trust,
        trust_groups=cfg.trust_groups,
        trust_atol=cfg.trust_atol,
        trust_seed=cfg.seed + step,
        log_branch_snr=True,
        metrics_prefix="",
    )


def compute_advantages(
    roll: Rollout, rewards: torch.Tensor, cfg: TrainConfig, step: int = 0, trust: bool = False
) -> StepResult:
    """`tempo_rl.advantage_step` on the rollout: (B, Lr) advantages, the trust check's report, tree
    statistics and the branch-node diagnostic (proofs_notes/tree-rollouts.md section 1.3)."""
    try:
        return advantage_step(
            roll.responses,
            roll.response_mask,
            rewards,
            roll.group_ids,
            loss_mask=roll.env_mask,
            options=step_options(cfg, step, trust),
        )
    except AdvantageMismatch as e:
        raise AdvantageMismatch(f"step {step}: {e}") from None


# ----------------------------------------------------------------------------- one update
@dataclass
class UpdateStats:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.values.setdefault(k, []).append(float(v))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


def minibatch_order(n: int, cfg: TrainConfig, step: int, epoch: int) -> torch.Tensor:
    """Row order for one epoch, a pure function of (seed, step, epoch) so resume is exact."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch)
    return torch.randperm(n, generator=gen)


def ppo_update(
    model, ref_model, opt, sched, roll: Rollout, adv: torch.Tensor, cfg: TrainConfig, step: int, autocast_dtype
) -> dict[str, float]:
    """ppo_epochs x mini_batches optimizer updates on one rollout batch."""
    n_updates = cfg.ppo_epochs * cfg.mini_batches
    old_logp = ref_logp = None
    if n_updates > 1:  # with a single update the ratio is 1 and old = current (detached)
        old_logp = score_logprobs(model, roll, cfg, autocast_dtype)
    if cfg.kl_coef:
        ref_logp = score_logprobs(ref_model, roll, cfg, autocast_dtype)
    stats = UpdateStats()
    n = roll.responses.shape[0]
    model.train()
    for epoch in range(cfg.ppo_epochs):
        order = minibatch_order(n, cfg, step, epoch).to(adv.device)
        for mb in order.chunk(cfg.mini_batches):
            denom = float(roll.loss_mask[mb].sum()) if cfg.aggregation == "token-mean" else float(len(mb))
            for micro in mb.chunk(cfg.grad_accum):
                part = roll.select(micro)
                old = None if old_logp is None else old_logp[micro]
                ref = None if ref_logp is None else ref_logp[micro]
                loss_fn = micro_loss_fused if cfg.fused_loss else micro_loss_unfused
                loss, metrics = loss_fn(model, part, adv[micro], old, ref, cfg, denom, autocast_dtype)
                loss.backward()
                stats.add(loss=loss.item(), **metrics)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            stats.add(grad_norm=gnorm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return stats.means()


@torch.no_grad()
def score_logprobs(model, roll: Rollout, cfg: TrainConfig, autocast_dtype) -> torch.Tensor:
    """log pi(response token) (B, Lr) without gradient: old-policy and reference scores."""
    if not cfg.fused_loss:
        return forward_logprobs(model, roll, autocast_dtype=autocast_dtype)[0]
    weight, bias = lm_head(model)
    hidden = forward_hidden(model, roll, autocast_dtype=autocast_dtype)  # (B, Lr, H)
    return fused_logprobs(hidden, weight, roll.responses, bias=bias)


def micro_loss_unfused(
    model, part: Rollout, adv, old_logp, ref_logp, cfg: TrainConfig, denom: float, autocast_dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full-logits path (trainer/loss.py): (B, Lr, V) logits. Returns (loss to backward, metrics)."""
    logp, ent = forward_logprobs(model, part, with_entropy=True, autocast_dtype=autocast_dtype)
    out = policy_loss(
        logp,
        logp.detach() if old_logp is None else old_logp,
        adv,
        part.loss_mask,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        aggregation=cfg.aggregation,
        ref_logp=ref_logp,
        kl_coef=cfg.kl_coef,
        denom=denom,
    )
    m = part.loss_mask.float()
    return out.loss, {
        "clip_fraction": out.clip_fraction,
        "approx_kl": out.approx_kl,
        "kl_ref": out.kl,
        "entropy": (ent * m).sum() / m.sum().clamp(min=1),
    }


def micro_loss_fused(
    model, part: Rollout, adv, old_logp, ref_logp, cfg: TrainConfig, denom: float, autocast_dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same loss through `tempo_rl.fused_policy_loss` (chunks of tokens, no (B, Lr, V) logits).

    The op divides by the micro-batch's own token (or response) count; rescaling by count / denom
    gives the mini-batch divisor of gradient accumulation, as `token_weights(..., denom=)` does."""
    weight, bias = lm_head(model)
    hidden = forward_hidden(model, part, autocast_dtype=autocast_dtype)  # (b, Lr, H)
    if old_logp is None:  # single update: old = current, detached (ratio exactly 1)
        old_logp = fused_logprobs(hidden.detach(), weight.detach(), part.responses, bias=bias)
    loss, metrics = tempo_rl.fused_policy_loss(
        hidden,
        weight,
        part.responses,
        old_logp,
        adv,
        part.loss_mask,
        bias=bias,
        ref_logp=ref_logp,
        kl_coef=cfg.kl_coef,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        aggregation=cfg.aggregation,
    )
    count = max(part.n_loss_tokens, 1) if cfg.aggregation == "token-mean" else part.responses.shape[0]
    scale = count / denom
    return loss * scale, {
        "clip_fraction": metrics["clip_fraction"],
        "approx_kl": metrics["approx_kl"],
        "kl_ref": metrics["kl"] * scale,
        "entropy": metrics["entropy"],
    }


# ----------------------------------------------------------------------------- metrics
def score_rollout(
    roll: Rollout, batch: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], where: str = ""
) -> RewardBatch:
    """Every reward function on every response of the rollout, with its prompt's dataset columns."""
    rows = [batch[g] for g in roll.group_ids.tolist()]
    ids = [roll.responses[i, : int(n)].tolist() for i, n in enumerate(roll.response_mask.sum(-1))]
    return score_batch(
        rewards,
        [e.prompt for e in rows],
        roll.texts,
        reward_columns(rows),
        completion_ids=ids,
        time_limit=cfg.reward_time_limit,
        where=where,
    )


def score(
    roll: Rollout, batch: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], step: int | None = None
) -> torch.Tensor:
    """(B,) float32 total rewards; TrainingStopped when every reward call of the batch failed."""
    where = "" if step is None else f" at step {step}"
    scored = score_rollout(roll, batch, cfg, rewards, where)
    if scored.all_failed:
        raise TrainingStopped(
            f"every reward call failed{where} ({', '.join(f.name for f in rewards)}); see the "
            "warnings above. Fix the reward function(s) and rerun"
        )
    return torch.tensor(scored.total, dtype=torch.float32, device=roll.responses.device)


def all_groups_flat(rewards: torch.Tensor, group_ids: torch.Tensor) -> bool:
    """True when within every group all rewards are equal (every advantage is then 0).
    rewards: (B,) float; group_ids: (B,) int."""
    for g in group_ids.unique():
        r = rewards[group_ids == g]
        if bool((r != r[0]).any()):
            return False
    return True


def rollout_metrics(roll: Rollout, rewards: torch.Tensor, result: StepResult, threshold: float = 1.0) -> dict[str, Any]:
    """The step's rollout numbers: rewards, lengths, the engine step's metrics (tree shape; the
    branch-node diagnostic: node count, mean m, pooled unbiased r = delta^2 / sigma^2, left out when
    undefined) and advantage moments over the tokens that carry loss."""
    m = roll.loss_mask.bool()
    a = result.advantages[m]
    return {
        "reward_mean": float(rewards.mean()),
        "accuracy": float((rewards >= threshold).float().mean()),
        "response_length": float(roll.response_mask.sum(-1).float().mean()),
        **result.metrics,
        "tokens_generated": roll.stats.get("tokens_generated", roll.n_tokens),
        "adv_mean": float(a.mean()) if a.numel() else 0.0,
        "adv_std": float(a.std()) if a.numel() > 1 else 0.0,
        "adv_absmax": float(a.abs().max()) if a.numel() else 0.0,
    }


@torch.no_grad()
def evaluate(
    model, tokenizer, examples: list[Example], cfg: TrainConfig, rewards: list[RewardFunction], autocast_dtype
) -> float:
    """Accuracy (total reward >= accuracy_threshold, under `eval_reward` when set) of one response per
    eval prompt, sampled at the training temperature (greedy with --eval-greedy). The sampling RNG is forked and seeded, so
    evaluating neither disturbs training (resume stays exact) nor varies between runs of one seed."""
    hits = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        for i in range(0, len(examples), 64):
            chunk = examples[i : i + 64]
            prompts, chat = prompts_for(tokenizer, chunk, cfg)
            roll = sample_groups(
                model,
                tokenizer,
                prompts,
                group_size=1,
                greedy=cfg.eval_greedy,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                chat_template=chat,
                autocast_dtype=autocast_dtype,
                chance=chance_token(tokenizer, cfg),
            )
            scored = score_rollout(roll, chunk, cfg, rewards, " in evaluation")
            hits += sum(t >= cfg.accuracy_threshold for t in scored.total)
    return hits / max(1, len(examples))


LOGGER_MODULES = {"tensorboard": ("tensorboard",), "wandb": ("wandb",)}


class MetricLog:
    """metrics.jsonl (one line per step), and TensorBoard / Weights & Biases through their own libraries
    when `report_to` names them."""

    def __init__(self, out_dir: Path, cfg: TrainConfig):
        self.path = out_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if "tensorboard" in cfg.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        if "wandb" in cfg.loggers:
            import wandb

            self.wandb = wandb.init(dir=str(out_dir), config=cfg.to_dict(), name=out_dir.name, resume="allow")

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def dump_groups(path: Path, roll: Rollout, rewards: torch.Tensor, batch: list[Example], step: int) -> None:
    """Append every group of the step, each response with its prompt, to rollouts.jsonl (read by
    `tempo-rl inspect`)."""
    with open(path, "a") as f:
        for i, g in enumerate(roll.group_ids.tolist()):
            n = int(roll.response_mask[i].sum())
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "group_id": g,
                        "prompt": prompt_text(batch[g].prompt),
                        "response": roll.responses[i, :n].tolist(),
                        "text": roll.texts[i],
                        "reward": float(rewards[i]),
                    }
                )
                + "\n"
            )


# ----------------------------------------------------------------------------- before anything loads
@dataclass
class Setup:
    """What train() needs, all checked before the model loads."""

    device: torch.device
    examples: list[Example]
    evals: list[Example]
    rewards: list[RewardFunction]
    eval_rewards: list[RewardFunction]
    resume_from: Path | None = None
    state: dict[str, Any] | None = None


def prepare(cfg: TrainConfig) -> Setup:
    """Every check that can fail on the user's input, in the order a user fixes them: options, installed
    extras, device, model directory, data, rewards, output directory / checkpoint. Raises UsageError."""
    cfg.validate()
    require_modules(TRAIN_MODULES, "tempo-rl train", INSTALL_TRAIN)
    for name in cfg.loggers:
        require_modules(LOGGER_MODULES[name], f"report_to {name}", f"pip install 'tempo-rl[{name}]'")
    device = pick_device(cfg.device)
    check_model_dir(cfg)
    examples, evals = train_and_eval_examples(cfg)
    rewards = load_reward_functions(cfg.reward, cfg.reward_weights)
    check_reward_arguments(rewards, list(reward_columns(examples[:1000])))
    eval_rewards = load_reward_functions(cfg.eval_reward) if cfg.eval_reward else rewards
    setup = Setup(device, examples, evals if cfg.eval_every else [], rewards, eval_rewards)
    if cfg.resume:
        try:
            setup.resume_from = checkpoint.resolve(cfg.resume, Path(cfg.output_dir) / "checkpoints")
            setup.state = checkpoint.load_state(setup.resume_from)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        check_resume(setup.state, cfg, setup.resume_from)
    else:
        check_output_dir(cfg)
    return setup


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run `cfg.steps` steps (continuing a checkpoint if `cfg.resume`); returns the metric rows.
    Raises UsageError on bad input (before the model loads) and TrainingStopped when the run cannot
    learn (every reward failed, or every group was flat for max_zero_variance_steps steps)."""
    setup = prepare(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.output_dir)
    if cfg.overwrite and not cfg.resume:
        clear_run(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = setup.device
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None

    base = model_path(cfg)
    tokenizer, model = load_policy(setup.resume_from or base, device, cfg.gradient_checkpointing)
    model.eval()
    ref_model = None
    if cfg.kl_coef:
        ref_model = load_policy(base, device)[1].eval().requires_grad_(False)
    opt, sched = make_optimizer(model, cfg)
    seed_everything(cfg.seed)  # after any model building, so a cached and a fresh base sample alike
    start = 0
    if setup.state is not None:
        opt.load_state_dict(setup.state["optimizer"])
        sched.load_state_dict(setup.state["scheduler"])
        checkpoint.set_rng_state(setup.state["rng"])
        start = setup.state["step"]
        log.info("resumed from %s at step %d", setup.resume_from, start)

    examples, evals, rewards, eval_rewards = setup.examples, setup.evals, setup.rewards, setup.eval_rewards
    for log_file in ("metrics.jsonl", "rollouts.jsonl"):
        keep_rows_up_to(out_dir / log_file, start)
    metrics = MetricLog(out_dir, cfg)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    history: list[dict[str, Any]] = []
    checked = flat_steps = 0
    if cfg.eval_every and start == 0:  # where the policy starts, for the curve
        row = {"step": 0, "eval_accuracy": evaluate(model, tokenizer, evals, cfg, eval_rewards, autocast_dtype)}
        metrics.write(row)
        history.append(row)

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not cfg.progress,
        desc=f"train {cfg.estimator}",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    tree = cfg.tree_config()  # None: independent samples through `generate`
    chance = chance_token(tokenizer, cfg)  # an environment token inside each response, or None
    try:
        for step in bar:
            t0 = time.perf_counter()
            batch = batch_for_step(examples, step, cfg.prompts_per_step, cfg.seed)
            prompts, chat = prompts_for(tokenizer, batch, cfg)
            roll = sample_groups(
                model,
                tokenizer,
                prompts,
                group_size=cfg.group_size,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                chat_template=chat,
                autocast_dtype=autocast_dtype,
                tree=tree,
                chance=chance,
            )
            t_gen = time.perf_counter()
            scored = score_rollout(roll, batch, cfg, rewards, f" at step {step + 1}")
            if scored.all_failed:
                raise TrainingStopped(
                    f"every reward call failed at step {step + 1} "
                    f"({', '.join(f.name for f in rewards)}); see the warnings above"
                )
            rewards_t = torch.tensor(scored.total, dtype=torch.float32, device=roll.responses.device)
            t_adv0 = time.perf_counter()
            result = compute_advantages(roll, rewards_t, cfg, step, trust=checked < cfg.trust_batches)
            adv = result.advantages
            t_adv = time.perf_counter() - t_adv0
            checked += 1
            upd = ppo_update(model, ref_model, opt, sched, roll, adv, cfg, step, autocast_dtype)
            t_step = time.perf_counter() - t0
            row = {
                "step": step + 1,
                **rollout_metrics(roll, rewards_t, result, cfg.accuracy_threshold),
                **reward_means(scored),
                **upd,
                "lr": sched.get_last_lr()[0],
                "time_step_s": t_step,
                "time_generate_s": t_gen - t0,
                "time_advantage_s": t_adv,
                "advantage_time_fraction": t_adv / t_step,
                "tokens_per_s": roll.n_tokens / t_step,
            }
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                row["eval_accuracy"] = evaluate(model, tokenizer, evals, cfg, eval_rewards, autocast_dtype)
            if cfg.dump_rollouts_every and (step + 1) % cfg.dump_rollouts_every == 0:
                dump_groups(out_dir / "rollouts.jsonl", roll, rewards_t, batch, step + 1)
            metrics.write(row)
            history.append(row)
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", eval=row.get("eval_accuracy", ""))
            last = step + 1 == cfg.steps
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or (last and cfg.save_final):
                checkpoint.save(
                    out_dir / "checkpoints",
                    step + 1,
                    model=model,
                    tokenizer=tokenizer,
                    optimizer=opt,
                    scheduler=sched,
                    config=cfg.to_dict(),
                    keep=cfg.keep_checkpoints,
                )
            flat_steps = flat_steps + 1 if all_groups_flat(rewards_t, roll.group_ids) else 0
            if cfg.max_zero_variance_steps and flat_steps >= cfg.max_zero_variance_steps:
                raise TrainingStopped(
                    f"for {flat_steps} steps in a row (to step {step + 1}) every group's rewards were all equal "
                    f"(mean reward {row['reward_mean']:.3g}), so every advantage was 0 and nothing was learned; "
                    "check the reward function against a few completions, or raise --temperature / "
                    "--group-size (--max-zero-variance-steps 0 turns this check off)"
                )
    finally:
        bar.close()
        metrics.close()
    return history


def reward_means(scored: RewardBatch) -> dict[str, float]:
    """`reward/<name>`: each function's mean over the samples it applied to (when there are several)."""
    if len(scored.per_function) < 2:
        return {}
    out = {}
    for name, values in scored.per_function.items():
        got = [v for v in values if v is not None]
        out[f"reward/{name}"] = sum(got) / len(got) if got else 0.0
    return out


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    add_config_arguments(parser)


def run(args) -> int:
    """`tempo-rl train`: 0 on success, 2 on bad input (one line on stderr), 1 when the run stopped."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        history = train(cfg)
    except UsageError as e:
        print(f"tempo-rl train: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"tempo-rl train: stopped: {e}", file=sys.stderr)
        return 1
    evals = [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r]
    history = [r for r in history if "reward_mean" in r]
    if history:
        first, last = history[0], history[-1]
        print(
            f"reward_mean: step {first['step']} {first['reward_mean']:.3f} -> step {last['step']} "
            f"{last['reward_mean']:.3f}"
        )
        width = max(1, len(history) // 10)
        chunks = [history[i : i + width] for i in range(0, len(history), width)]
        print(
            f"reward_mean per {width} steps: "
            + " ".join(f"{sum(r['reward_mean'] for r in c) / len(c):.2f}" for c in chunks)
        )
        if evals:
            kind = "greedy" if cfg.eval_greedy else "sampled"
            print(
                f"eval accuracy ({kind}, reward >= {cfg.accuracy_threshold:g}): "
                + ", ".join(f"step {s}: {a:.3f}" for s, a in evals)
            )
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0
