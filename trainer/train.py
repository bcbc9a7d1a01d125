"""`tempo-rl train`: policy optimisation of a causal LM with TEMPO (or GRPO / Dr. GRPO) advantages.

One step: P prompts -> G sampled responses each (`generate` under inference_mode, or a prefix tree
per group with `rollout = "tree"`: trainer/tree_rollout.py) -> verifiable
rewards -> token advantages from `tempo_rl.tempo_advantages` (TEMPO, arXiv 2509.18314) or
`tempo_rl.grpo_advantages` -> PPO clipped surrogate (asymmetric clip), `ppo_epochs` x
`mini_batches` AdamW updates with gradient accumulation and clipping -> metrics, checkpoints.

With `generator = "vllm"` a vLLM engine in this process samples the same rollouts (independent or
tree, trainer/vllm_rollout.py) and gets the policy's weights after every update.

Left out on purpose: value models (TEMPO is critic-free), entropy bonuses, dynamic sampling and
overlong-reward shaping, multi-GPU (the advantages are batch-invariant, so data parallelism would
only need gradient all-reduce), and remote generation servers.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tempo_rl import AdvantageMismatch, StepOptions, StepResult, advantage_step

from . import checkpoint, run_dir
from .config import TrainConfig
from .data import Example, batch_for_step
from .evaluate import evaluate, score_rollout
from .loading import Run, prepare, prompts_for, sampling_config, start_run
from .logs import all_groups_flat, dump_groups, reward_means, rollout_metrics
from .rewards import TrainingStopped
from .rollout import Rollout, sample_groups
from .update import ppo_update


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


# ----------------------------------------------------------------------------- the loop
@run_dir.guarded  # one writer per output directory; the model's directory is never written
def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run `cfg.steps` steps (continuing a checkpoint if `cfg.resume`); returns the metric rows.
    Raises UsageError on bad input (before the model loads) and TrainingStopped when the run cannot
    learn (every reward failed, or every group was flat for max_zero_variance_steps steps)."""
    run = start_run(cfg, prepare(cfg))
    if cfg.generator == "vllm":
        from .vllm_rollout import sampler_for_run

        run.sampler = sampler_for_run(run)
    history: list[dict[str, Any]] = []
    if cfg.eval_every and run.start == 0:  # where the policy starts, for the curve
        row = {"step": 0, "eval_accuracy": evaluate_policy(run)}
        run.metrics.write(row)
        history.append(row)
    bar = progress_bar(cfg, run.start)
    # The loop's counters continue where the checkpoint left them, so a resumed run checks the same
    # batches and stops at the same step as an uninterrupted one.
    counters = {"flat_steps": 0, "trust_checked": 0, **(run.setup.state or {}).get("run", {})}
    try:
        for step in bar:
            trust = counters["trust_checked"] < cfg.trust_batches
            row, roll, rewards, batch = train_step(run, step, trust=trust)
            counters["trust_checked"] += trust
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                row["eval_accuracy"] = evaluate_policy(run)
            if cfg.dump_rollouts_every and (step + 1) % cfg.dump_rollouts_every == 0:
                with run_dir.writing(run.out_dir / "rollouts.jsonl"):
                    dump_groups(run.out_dir / "rollouts.jsonl", roll, rewards, batch, step + 1)
            run.metrics.write(row)
            history.append(row)
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", eval=row.get("eval_accuracy", ""))
            counters["flat_steps"] = counters["flat_steps"] + 1 if all_groups_flat(rewards, roll.group_ids) else 0
            maybe_save(run, step + 1, counters)
            check_not_flat(cfg, counters["flat_steps"], step + 1, row["reward_mean"])
    finally:
        bar.close()
        run.metrics.close()
    return history


def train_step(run: Run, step: int, trust: bool) -> tuple[dict[str, Any], Rollout, torch.Tensor, list[Example]]:
    """Sample, score, advantages, PPO update: the step's metric row, its rollout, rewards and prompts."""
    cfg = run.cfg
    t0 = time.perf_counter()
    batch = batch_for_step(run.setup.examples, step, cfg.prompts_per_step, cfg.seed)
    prompts, chat = prompts_for(run.tokenizer, batch, cfg)
    sampling = sampling_config(run.tokenizer, cfg, run.chance, chat_template=chat, autocast_dtype=run.autocast_dtype)
    roll = sample_rollout(run, prompts, sampling, step)
    t_gen = time.perf_counter()
    scored = score_rollout(roll, batch, cfg, run.setup.rewards, f" at step {step + 1}")
    if scored.all_failed:
        raise TrainingStopped(
            f"every reward call failed at step {step + 1} "
            f"({', '.join(f.name for f in run.setup.rewards)}); see the warnings above"
        )
    rewards = torch.tensor(scored.total, dtype=torch.float32, device=roll.responses.device)
    t_adv0 = time.perf_counter()
    result = compute_advantages(roll, rewards, cfg, step, trust=trust)
    t_adv = time.perf_counter() - t_adv0
    t_update0 = time.perf_counter()
    update = ppo_update(run, roll, result.advantages, step)
    if run.sampler is not None:  # the engine samples the next step from the updated policy
        run.sampler.load_weights(run.model)
    t_step = time.perf_counter() - t0
    row = {
        "step": step + 1,
        **rollout_metrics(roll, rewards, result, cfg.accuracy_threshold),
        **reward_means(scored),
        **update,
        "lr": run.sched.get_last_lr()[0],
        "time_step_s": t_step,
        "time_generate_s": t_gen - t0,
        "time_advantage_s": t_adv,
        "time_update_s": t_step - (t_update0 - t0),  # log-prob scoring and the PPO phase
        "advantage_time_fraction": t_adv / t_step,
        "tokens_per_s": roll.n_tokens / t_step,
    }
    return row, roll, rewards, batch


def sample_rollout(run: Run, prompts: list[str], sampling, step: int) -> Rollout:
    """The step's G responses per prompt: `generate` or the transformers tree sampler, or the vLLM
    engine with `--generator vllm` (its requests seeded by the run's seed and the step)."""
    cfg = run.cfg
    if run.sampler is None:
        return sample_groups(run.model, run.tokenizer, prompts, sampling, group_size=cfg.group_size, tree=run.tree)
    seed = cfg.seed * 100_003 + step
    kw = dict(group_size=cfg.group_size, tree=run.tree, seed=seed, device=run.setup.device)
    return run.sampler.sample(run.tokenizer, prompts, sampling, **kw)


def evaluate_policy(run: Run) -> float:
    cfg, setup = run.cfg, run.setup
    return evaluate(run.model, run.tokenizer, setup.evals, cfg, setup.eval_rewards, run.autocast_dtype)


def progress_bar(cfg: TrainConfig, start: int):
    from tqdm.auto import tqdm

    return tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not cfg.progress,
        desc=f"train {cfg.estimator}",
        dynamic_ncols=True,
        mininterval=1.0,
    )


def maybe_save(run: Run, done: int, counters: dict[str, int]) -> None:
    """A checkpoint every `save_every` steps, and after the last one with `save_final`."""
    cfg = run.cfg
    if (cfg.save_every and done % cfg.save_every == 0) or (done == cfg.steps and cfg.save_final):
        checkpoint.save(
            run.out_dir / "checkpoints",
            done,
            model=run.model,
            tokenizer=run.tokenizer,
            optimizer=run.opt,
            scheduler=run.sched,
            config=cfg.to_dict(),
            keep=cfg.keep_checkpoints,
            run_state=dict(counters),
            run_id=run.run_id,
        )


def check_not_flat(cfg: TrainConfig, flat_steps: int, done: int, reward_mean: float) -> None:
    """TrainingStopped after max_zero_variance_steps steps in a row where every group was flat."""
    if cfg.max_zero_variance_steps and flat_steps >= cfg.max_zero_variance_steps:
        raise TrainingStopped(
            f"for {flat_steps} steps in a row (to step {done}) every group's rewards were all equal "
            f"(mean reward {reward_mean:.3g}), so every advantage was 0 and nothing was learned; "
            "check the reward function against a few completions, or raise --temperature / "
            "--group-size (--max-zero-variance-steps 0 turns this check off)"
        )
