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

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tempo_rl
from tempo_rl import AdvantageMismatch, TreeStats, check_against_reference, resolve_backend
from tempo_rl.policy_loss import fused_logprobs

from . import checkpoint
from .config import TrainConfig, add_config_arguments, config_from_args
from .data import BUILTIN_TASKS, Example, batch_for_step, load_dataset
from .loss import policy_loss
from .rewards import load_reward, safe_reward
from .rollout import Rollout, forward_hidden, forward_logprobs, lm_head, sample_groups

log = logging.getLogger("tempo_rl.trainer")


# ----------------------------------------------------------------------------- set-up
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    from .tiny import make_base_model

    from .tiny import WARMUP_FORGET_CARRY

    task = cfg.dataset if cfg.dataset in WARMUP_FORGET_CARRY else "add"
    return str(make_base_model(cfg.tiny_dir, warmup_steps=cfg.tiny_warmup_steps, task=task))


def make_optimizer(model, cfg: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.lr_warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return opt, sched


def eval_examples(cfg: TrainConfig) -> list[Example]:
    if cfg.eval_dataset:
        return load_dataset(cfg.eval_dataset, n=cfg.eval_prompts, seed=cfg.seed + 1)[: cfg.eval_prompts]
    if cfg.dataset in BUILTIN_TASKS:
        return BUILTIN_TASKS[cfg.dataset](cfg.eval_prompts, 10_000 + cfg.seed)
    return load_dataset(cfg.dataset)[: cfg.eval_prompts]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- advantages
def compute_advantages(roll: Rollout, rewards: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, TreeStats]:
    """(B, Lr) token advantages of the configured estimator and the batch's tree statistics, from
    one pass over the tokens (GRPO and Dr. GRPO are TEMPO with td_coef = 0, bitwise)."""
    return tempo_rl.tempo_advantages_with_stats(
        roll.responses, roll.response_mask, rewards, roll.group_ids,
        norm_by_std=cfg.estimator != "dr_grpo", td_coef=cfg.td_coef if cfg.estimator == "tempo" else 0.0,
        backend=cfg.backend)


def trust_check(adv: torch.Tensor, roll: Rollout, rewards: torch.Tensor, cfg: TrainConfig, step: int) -> bool:
    """Compare the fast backend's advantages with the exact reference on a sample of whole groups
    (bounded cost at any batch size); raise AdvantageMismatch naming group, row and token.
    Returns False when there is nothing to check (the backend already is the reference)."""
    if resolve_backend(cfg.backend, adv.device) == "reference":
        return False
    try:
        check_against_reference(
            adv, roll.responses, roll.response_mask, rewards, roll.group_ids,
            norm_by_std=cfg.estimator != "dr_grpo", td_coef=cfg.td_coef if cfg.estimator == "tempo" else 0.0,
            atol=cfg.trust_atol, max_groups=cfg.trust_groups, seed=cfg.seed + step)
    except AdvantageMismatch as e:
        raise AdvantageMismatch(f"step {step}: backend {resolve_backend(cfg.backend, adv.device)!r}: {e}; rerun "
                                "with --backend reference and report the batch") from None
    return True


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


def ppo_update(model, ref_model, opt, sched, roll: Rollout, adv: torch.Tensor, cfg: TrainConfig, step: int,
               autocast_dtype) -> dict[str, float]:
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
            denom = float(roll.response_mask[mb].sum()) if cfg.aggregation == "token-mean" else float(len(mb))
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


def micro_loss_unfused(model, part: Rollout, adv, old_logp, ref_logp, cfg: TrainConfig, denom: float,
                       autocast_dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference path: full (B, Lr, V) logits, trainer/loss.py. Returns (loss to backward, metrics)."""
    logp, ent = forward_logprobs(model, part, with_entropy=True, autocast_dtype=autocast_dtype)
    out = policy_loss(
        logp, logp.detach() if old_logp is None else old_logp, adv, part.response_mask,
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.aggregation,
        ref_logp=ref_logp, kl_coef=cfg.kl_coef, denom=denom)
    m = part.response_mask.float()
    return out.loss, {"clip_fraction": out.clip_fraction, "approx_kl": out.approx_kl, "kl_ref": out.kl,
                      "entropy": (ent * m).sum() / m.sum().clamp(min=1)}


def micro_loss_fused(model, part: Rollout, adv, old_logp, ref_logp, cfg: TrainConfig, denom: float,
                     autocast_dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same loss through `tempo_rl.fused_policy_loss` (chunks of tokens, no (B, Lr, V) logits).

    The op divides by the micro-batch's own token (or response) count; rescaling by count / denom
    gives the mini-batch divisor of gradient accumulation, as `aggregate(..., denom=)` does."""
    weight, bias = lm_head(model)
    hidden = forward_hidden(model, part, autocast_dtype=autocast_dtype)  # (b, Lr, H)
    if old_logp is None:  # single update: old = current, detached (ratio exactly 1)
        old_logp = fused_logprobs(hidden.detach(), weight.detach(), part.responses, bias=bias)
    loss, metrics = tempo_rl.fused_policy_loss(
        hidden, weight, part.responses, old_logp, adv, part.response_mask, bias=bias, ref_logp=ref_logp,
        kl_coef=cfg.kl_coef, clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.aggregation)
    count = max(part.n_tokens, 1) if cfg.aggregation == "token-mean" else part.responses.shape[0]
    scale = count / denom
    return loss * scale, {"clip_fraction": metrics["clip_fraction"], "approx_kl": metrics["approx_kl"],
                          "kl_ref": metrics["kl"] * scale, "entropy": metrics["entropy"]}


# ----------------------------------------------------------------------------- metrics
def score(roll: Rollout, batch: list[Example], cfg: TrainConfig, reward_fn) -> torch.Tensor:
    answers = [batch[g].answer for g in roll.group_ids.tolist()]
    values = [safe_reward(reward_fn, t, a, time_limit=cfg.reward_time_limit) for t, a in zip(roll.texts, answers)]
    return torch.tensor(values, dtype=torch.float32, device=roll.responses.device)


def rollout_metrics(roll: Rollout, rewards: torch.Tensor, adv: torch.Tensor, tree: TreeStats) -> dict[str, Any]:
    m = roll.response_mask.bool()
    a = adv[m]
    return {
        "reward_mean": float(rewards.mean()),
        "accuracy": float((rewards >= 1.0).float().mean()),
        "response_length": float(roll.response_mask.sum(-1).float().mean()),
        **tree.as_metrics(prefix=""),
        "tokens_generated": roll.stats.get("tokens_generated", roll.n_tokens),
        "adv_mean": float(a.mean()) if a.numel() else 0.0,
        "adv_std": float(a.std()) if a.numel() > 1 else 0.0,
        "adv_absmax": float(a.abs().max()) if a.numel() else 0.0,
    }


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[Example], cfg: TrainConfig, reward_fn, autocast_dtype) -> float:
    """Accuracy (reward >= 1) of one response per eval prompt, sampled at the training temperature
    (greedy with --eval-greedy). The sampling RNG is forked and seeded, so evaluating neither
    disturbs training (resume stays exact) nor varies between runs of one seed."""
    hits = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        for i in range(0, len(examples), 64):
            chunk = examples[i : i + 64]
            roll = sample_groups(model, tokenizer, [e.prompt for e in chunk], group_size=1, greedy=cfg.eval_greedy,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 chat_template=cfg.chat_template, autocast_dtype=autocast_dtype)
            hits += sum(safe_reward(reward_fn, t, e.answer, time_limit=cfg.reward_time_limit) >= 1.0
                        for t, e in zip(roll.texts, chunk))
    return hits / max(1, len(examples))


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows of a JSONL log written after `step` (all of them for a fresh run, step 0), so a
    resumed or repeated run never mixes in rows of the run it replaces."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in rows) if step > 0 else "")


class MetricLog:
    """metrics.jsonl (one line per step) and TensorBoard scalars when available."""

    def __init__(self, out_dir: Path, use_tb: bool):
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                pass

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])


def dump_group(path: Path, roll: Rollout, rewards: torch.Tensor, step: int, group: int = 0) -> None:
    """Append one group's rollouts to rollouts.jsonl (read by `tempo-rl inspect`)."""
    with open(path, "a") as f:
        for i in (roll.group_ids == group).nonzero().flatten().tolist():
            n = int(roll.response_mask[i].sum())
            f.write(json.dumps({"step": step, "group_id": group, "response": roll.responses[i, :n].tolist(),
                                "text": roll.texts[i], "reward": float(rewards[i])}) + "\n")


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run `cfg.steps` steps (continuing a checkpoint if `cfg.resume`); returns the metric rows."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None

    base = model_path(cfg)
    resume_from = checkpoint.resolve(cfg.resume, out_dir / "checkpoints") if cfg.resume else None
    tokenizer, model = load_policy(resume_from or base, device, cfg.gradient_checkpointing)
    model.eval()
    ref_model = None
    if cfg.kl_coef:
        ref_model = load_policy(base, device)[1].eval().requires_grad_(False)
    opt, sched = make_optimizer(model, cfg)
    seed_everything(cfg.seed)  # after any model building, so a cached and a fresh base sample alike
    start = 0
    if resume_from:
        state = checkpoint.load_state(resume_from)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        start = state["step"]
        log.info("resumed from %s at step %d", resume_from, start)

    examples = load_dataset(cfg.dataset, seed=cfg.seed)
    evals = eval_examples(cfg) if cfg.eval_every else []
    reward_fn = load_reward(cfg.reward)
    for log_file in ("metrics.jsonl", "rollouts.jsonl"):
        keep_rows_up_to(out_dir / log_file, start)
    metrics = MetricLog(out_dir, cfg.tensorboard)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    history: list[dict[str, Any]] = []
    checked = 0
    if cfg.eval_every and start == 0:  # where the policy starts, for the curve
        row = {"step": 0, "eval_accuracy": evaluate(model, tokenizer, evals, cfg, reward_fn, autocast_dtype)}
        metrics.write(row)
        history.append(row)

    from tqdm.auto import tqdm

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not cfg.progress,
               desc=f"train {cfg.estimator}", dynamic_ncols=True, mininterval=1.0)
    tree = cfg.tree_config()  # None: independent samples through `generate`
    for step in bar:
        t0 = time.perf_counter()
        batch = batch_for_step(examples, step, cfg.prompts_per_step, cfg.seed)
        roll = sample_groups(model, tokenizer, [e.prompt for e in batch], group_size=cfg.group_size,
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             chat_template=cfg.chat_template, autocast_dtype=autocast_dtype, tree=tree)
        t_gen = time.perf_counter()
        rewards = score(roll, batch, cfg, reward_fn)
        t_adv0 = time.perf_counter()
        adv, tree_stats = compute_advantages(roll, rewards, cfg)
        t_adv = time.perf_counter() - t_adv0
        if checked < cfg.trust_batches:
            trust_check(adv, roll, rewards, cfg, step)
            checked += 1
        upd = ppo_update(model, ref_model, opt, sched, roll, adv, cfg, step, autocast_dtype)
        t_step = time.perf_counter() - t0
        row = {"step": step + 1, **rollout_metrics(roll, rewards, adv, tree_stats), **upd, "lr": sched.get_last_lr()[0],
               "time_step_s": t_step, "time_generate_s": t_gen - t0, "time_advantage_s": t_adv,
               "advantage_time_fraction": t_adv / t_step, "tokens_per_s": roll.n_tokens / t_step}
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            row["eval_accuracy"] = evaluate(model, tokenizer, evals, cfg, reward_fn, autocast_dtype)
        if cfg.dump_rollouts_every and (step + 1) % cfg.dump_rollouts_every == 0:
            dump_group(out_dir / "rollouts.jsonl", roll, rewards, step + 1)
        metrics.write(row)
        history.append(row)
        bar.set_postfix(reward=f"{row['reward_mean']:.2f}", eval=row.get("eval_accuracy", ""))
        last = step + 1 == cfg.steps
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or (last and cfg.save_final):
            checkpoint.save(out_dir / "checkpoints", step + 1, model=model, tokenizer=tokenizer, optimizer=opt,
                            scheduler=sched, config=cfg.to_dict(), keep=cfg.keep_checkpoints)
    bar.close()
    return history


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    add_config_arguments(parser)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    history = train(cfg)
    evals = [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r]
    history = [r for r in history if "reward_mean" in r]
    if history:
        first, last = history[0], history[-1]
        print(f"reward_mean: step {first['step']} {first['reward_mean']:.3f} -> step {last['step']} "
              f"{last['reward_mean']:.3f}")
        width = max(1, len(history) // 10)
        chunks = [history[i : i + width] for i in range(0, len(history), width)]
        print(f"reward_mean per {width} steps: " + " ".join(
            f"{sum(r['reward_mean'] for r in c) / len(c):.2f}" for c in chunks))
        if evals:
            print("eval accuracy (sampled): " + ", ".join(f"step {s}: {a:.3f}" for s, a in evals))
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0
