"""`python -m experiments.compare`: TEMPO vs GRPO on one budget, each at its own best learning rate.

For every estimator, every learning rate of the sweep and every seed, one training run (same
prompts, same budget). Each estimator is then judged at the learning rate that gives it the highest
mean eval accuracy over the run (area under its curve, mean over seeds). An equal-rate comparison
would mislead: at a group's first branch V(parent) is the group mean, so TEMPO's TD term doubles
the advantage there and TEMPO takes a larger step at the same rate.

Writes `<out>.png` (learning curves at each estimator's best rate, mean and min/max over seeds; and
the sweep), `<out>.md` (tables: sweep, steps to the target accuracy, step time and the share of it
spent computing advantages, TEMPO-vs-GRPO gradient cosine and norm ratio), `<out>.json` (all data).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from tempo_rl.cli import int_at_least
from tempo_rl.trainer.config import TrainConfig, load_file
from tempo_rl.trainer.data import batch_for_step, load_dataset
from tempo_rl.trainer.loss import policy_loss
from tempo_rl.trainer.rewards import load_reward_functions
from tempo_rl.trainer.rollout import forward_logprobs, sample_groups


def _one_run(cfg: TrainConfig) -> list[dict[str, Any]]:
    from tempo_rl.trainer.train import train

    return train(cfg)


def _finished(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    """The metric rows of a run that already completed all its steps under the same config."""
    out = Path(cfg.output_dir)
    try:
        saved = json.loads((out / "config.json").read_text())
        rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    except (OSError, ValueError):
        return None
    same = saved == json.loads(json.dumps(cfg.to_dict()))
    steps = [r["step"] for r in rows if r["step"] > 0]
    return rows if same and steps == list(range(1, cfg.steps + 1)) else None


def make_arms(estimators: list[str], rollouts: list[str], tree_group_size: int = 0) -> dict[str, dict[str, Any]]:
    """Arm name -> TrainConfig overrides. With independent rollouts only, arms are the estimators
    ("tempo"); otherwise "tempo+tree" etc. Tree arms may sample more leaves per group
    (`tree_group_size`) so that every arm generates about the same number of tokens per step."""
    arms = {}
    for r in rollouts:
        for e in estimators:
            name = e if rollouts == ["independent"] else f"{e}+{r}"
            arms[name] = {"estimator": e, "rollout": r}
            if r == "tree" and tree_group_size:
                arms[name]["group_size"] = tree_group_size
    return arms


def run_grid(
    base: TrainConfig,
    arms: dict[str, dict[str, Any]] | list[str],
    lrs: list[float],
    seeds: list[int],
    out_dir: Path,
    jobs: int,
    reuse: bool = True,
) -> dict[tuple[str, float, int], list[dict[str, Any]]]:
    """Every (arm, lr, seed) run; `jobs` processes, one torch thread each. An arm is an estimator
    name or, from `make_arms`, a name with its config overrides. A run that already finished with
    the same config is read back instead of rerun (`reuse`)."""
    if not isinstance(arms, dict):
        arms = {e: {"estimator": e} for e in arms}
    runs = {
        (a, lr, s): replace(
            base,
            **arms[a],
            lr=lr,
            seed=s,
            threads=1,
            progress=False,
            save_final=False,
            tensorboard=False,
            report_to=[],
            overwrite=True,
            output_dir=str(out_dir / f"{a.replace('+', '_')}_lr{lr:g}_seed{s}"),
        )
        for a in arms
        for lr in lrs
        for s in seeds
    }
    for cfg in runs.values():
        cfg.validate()
    results = {key: rows for key, cfg in runs.items() if reuse and (rows := _finished(cfg)) is not None}
    todo = {key: cfg for key, cfg in runs.items() if key not in results}
    for cfg in todo.values():  # a rerun starts clean rather than appending to old metrics
        (Path(cfg.output_dir) / "metrics.jsonl").unlink(missing_ok=True)
    print(f"{len(results)} runs reused, {len(todo)} to run", flush=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {key: pool.submit(_one_run, cfg) for key, cfg in todo.items()}
        for key, fut in futures.items():
            results[key] = fut.result()
            print(f"done {key}: final eval {results[key][-1].get('eval_accuracy')}", flush=True)
    return results


def eval_curve(history: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def steps_to(history: list[dict[str, Any]], target: float) -> int | None:
    """First eval step whose accuracy reaches the target; None if never."""
    for step, acc in zip(*eval_curve(history)):
        if acc >= target:
            return step
    return None


def tokens_to(history: list[dict[str, Any]], target: float) -> int | None:
    """Tokens generated up to and including the first eval step that reaches the target; None if never."""
    step = steps_to(history, target)
    return None if step is None else sum(r.get("tokens_generated", 0) for r in history if r["step"] <= step)


def seconds_to(history: list[dict[str, Any]], target: float) -> float | None:
    """Training wall-clock (sum of step times, evaluations excluded) up to and including the first eval
    step that reaches the target; None if never."""
    step = steps_to(history, target)
    return None if step is None else sum(r.get("time_step_s", 0.0) for r in history if r["step"] <= step)


def summarise(results, estimators, lrs, seeds, target) -> dict[str, Any]:
    sweep: dict[str, dict[str, Any]] = {}
    best: dict[str, float] = {}
    for e in estimators:
        sweep[e] = {}
        for lr in lrs:
            curves = [eval_curve(results[(e, lr, s)])[1] for s in seeds]
            auc = statistics.mean(statistics.mean(c) for c in curves)
            final = statistics.mean(c[-1] for c in curves)
            hits = [steps_to(results[(e, lr, s)], target) for s in seeds]
            tokens = [tokens_to(results[(e, lr, s)], target) for s in seeds]
            seconds = [seconds_to(results[(e, lr, s)], target) for s in seeds]
            sweep[e][f"{lr:g}"] = {
                "mean_eval_accuracy": auc,
                "final_eval_accuracy": final,
                "steps_to_target": hits,
                "tokens_to_target": tokens,
                "seconds_to_target": seconds,
            }
        best[e] = max(lrs, key=lambda lr: sweep[e][f"{lr:g}"]["mean_eval_accuracy"])
    timing = {}
    for e in estimators:
        rows = [r for s in seeds for r in results[(e, best[e], s)]]
        rows = [r for r in rows if "time_step_s" in r]  # not the step-0 evaluation
        timing[e] = {
            "step_s": statistics.median(r["time_step_s"] for r in rows),
            "advantage_s": statistics.median(r["time_advantage_s"] for r in rows),
            "advantage_fraction": statistics.median(r["advantage_time_fraction"] for r in rows),
            "branch_token_fraction": statistics.mean(r["branch_token_fraction"] for r in rows),
            "nodes_per_group": statistics.mean(r["nodes_per_group"] for r in rows),
            "tokens_per_step": statistics.mean(r.get("tokens_generated", 0) for r in rows),
            "mean_branch_depth": statistics.mean(r.get("mean_branch_depth") or 0.0 for r in rows),
            "first_branch_depth": statistics.mean(r.get("first_branch_depth") or 0.0 for r in rows),
            "branch_r_unbiased": _mean_of(rows, "branch_r_unbiased"),
            "branch_node_mean_m": _mean_of(rows, "branch_node_mean_m"),
        }
    return {"sweep": sweep, "best_lr": best, "timing": timing}


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a metric over the rows that log it; None if none do. Runs made before the metrics kept
    their keys every step leave it out where undefined; later runs log 0.0 there, which this mean counts."""
    got = [r[key] for r in rows if key in r]
    return statistics.mean(got) if got else None


def gradient_snr(grad: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per rollout: each estimator's mean cosine c between gradients of different batches, the SNR it
    implies, c / (1 - c) (for g_i = mean + isotropic independent noise, E cos ~ SNR / (1 + SNR)), and the
    TEMPO/GRPO ratio of those SNRs; and, where the rows carry it, the direct SNR over the batches
    (`batch_snr`) and its ratio."""
    out = {}
    for r in dict.fromkeys(g.get("rollout", "independent") for g in grad):
        rows = [g for g in grad if g.get("rollout", "independent") == r and "cos_other_batches_tempo" in g]
        if not rows:
            continue
        row: dict[str, float] = {}
        for est in ("grpo", "tempo"):
            c = statistics.mean(g[f"cos_other_batches_{est}"] for g in rows)
            row[f"cos_{est}"] = c
            row[f"snr_{est}"] = c / (1 - c)
        row["snr_ratio"] = row["snr_tempo"] / row["snr_grpo"] if row["snr_grpo"] > 0 else float("nan")
        if "direct_snr_tempo" in rows[0]:
            row["direct_snr_grpo"], row["direct_snr_tempo"] = rows[0]["direct_snr_grpo"], rows[0]["direct_snr_tempo"]
            d = row["direct_snr_grpo"]
            row["direct_snr_ratio"] = row["direct_snr_tempo"] / d if d > 0 else float("nan")
        out[r] = row
    return out


def gradient_agreement(
    base: TrainConfig, n_batches: int, rollout: str = "independent", group_size: int = 0
) -> list[dict[str, float]]:
    """On a few rollout batches of the initial policy: cosine and norm ratio of the TEMPO and GRPO
    policy gradients (same samples, ratio 1, the configured aggregation). Each row also carries the
    mean cosine of its gradients with the other batches' (per estimator): a scale-free
    signal-to-noise measure, since independent noise averages to cosine 0."""
    from tempo_rl.trainer.evaluate import score
    from tempo_rl.trainer.loading import chance_token, load_policy, model_path, sampling_config
    from tempo_rl.trainer.train import compute_advantages

    cfg = replace(base, rollout=rollout, group_size=group_size or base.group_size)
    torch.manual_seed(cfg.seed)
    tokenizer, model = load_policy(model_path(cfg), torch.device("cpu"))
    examples = load_dataset(
        cfg.dataset, seed=cfg.seed, prompt_column=cfg.prompt_column, answer_column=cfg.answer_column
    )
    reward_fns = load_reward_functions(cfg.reward, cfg.reward_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    out, grads = [], {"tempo": [], "grpo": []}
    for b in range(n_batches):
        batch = batch_for_step(examples, 10_000 + b, cfg.prompts_per_step, cfg.seed)
        sampling = sampling_config(tokenizer, cfg, chance_token(tokenizer, cfg))
        roll = sample_groups(
            model, tokenizer, [e.prompt for e in batch], sampling, group_size=cfg.group_size, tree=cfg.tree_config()
        )
        rewards = score(roll, batch, cfg, reward_fns)
        for est in ("tempo", "grpo"):
            adv = compute_advantages(roll, rewards, replace(cfg, estimator=est)).advantages
            logp, _ = forward_logprobs(model, roll)
            loss = policy_loss(logp, logp.detach(), adv, roll.loss_mask, aggregation=cfg.aggregation).loss
            grads[est].append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        t, g = grads["tempo"][-1], grads["grpo"][-1]
        out.append(
            {
                "cosine": _cos(t, g),
                "norm_ratio": float(t.norm() / (g.norm() + 1e-30)),
                "reward_mean": float(rewards.mean()),
                "tokens_generated": roll.stats.get("tokens_generated", 0),
            }
        )
    for est, gs in grads.items():
        for i, row in enumerate(out):
            if len(gs) > 1:
                row[f"cos_other_batches_{est}"] = statistics.mean(_cos(gs[i], h) for j, h in enumerate(gs) if j != i)
                row[f"direct_snr_{est}"] = batch_snr(torch.stack(gs))
    return out


def batch_snr(grads: torch.Tensor) -> float:
    """|E g|^2 / E|g - E g|^2 of one batch's gradient, from n >= 2 batches' gradients (n, P): the
    trace of the covariance with divisor n - 1, and |mean|^2 less its share of it (tr Cov / n), so
    numerator and denominator are both unbiased. Unlike a cosine between batches it also sees noise
    in the gradient's size along a fixed direction (a single binary decision's gradient has one
    direction whatever the sample)."""
    n = grads.shape[0]
    g = grads.double()
    mean = g.mean(0)
    var = float(((g - mean) ** 2).sum() / (n - 1))
    signal = float(mean.dot(mean)) - var / n
    return signal / var if var > 0 else float("inf")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-30))


def plot(results, summary, estimators, lrs, seeds, target, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_tokens = any("+" in e for e in estimators)  # rollouts compared: also plot against generated tokens
    fig, axes = plt.subplots(1, 3 if by_tokens else 2, figsize=(16 if by_tokens else 11, 4))
    ax, ax2 = axes[0], axes[-1]
    for e in estimators:
        lr = summary["best_lr"][e]
        curves = [eval_curve(results[(e, lr, s)]) for s in seeds]
        steps = curves[0][0]
        ys = list(zip(*[c[1] for c in curves]))
        mean = [statistics.mean(y) for y in ys]
        (line,) = ax.plot(steps, mean, marker="o", label=f"{e} (lr {lr:g}, {len(seeds)} seeds)")
        ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
        ax2.plot(lrs, [summary["sweep"][e][f"{x:g}"]["mean_eval_accuracy"] for x in lrs], marker="o", label=e)
        if by_tokens:
            cum = [
                statistics.mean(
                    sum(r.get("tokens_generated", 0) for r in results[(e, lr, s)] if r["step"] <= st) for s in seeds
                )
                for st in steps
            ]
            axes[1].plot(cum, mean, marker="o", color=line.get_color(), label=e)
    if by_tokens:
        axes[1].axhline(target, color="grey", ls="--", lw=1)
        axes[1].set(xlabel="tokens generated", ylabel="eval accuracy (sampled)", title="against generated tokens")
        axes[1].legend()
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set(xlabel="step", ylabel="eval accuracy (sampled)", title="each estimator at its best lr (band: min-max)")
    ax2.set(xscale="log", xlabel="learning rate", ylabel="mean eval accuracy over the run", title="lr sweep")
    ax2.minorticks_off()
    ax2.set_xticks(lrs, [f"{x:g}" for x in lrs])
    ax.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _fmt_steps(hits: list[int | None], budget: int) -> str:
    shown = ", ".join("-" if h is None else str(h) for h in hits)
    reached = [h for h in hits if h is not None]
    med = statistics.median([h if h is not None else float("inf") for h in hits])
    return (
        f"{'not reached' if med == float('inf') else f'{med:g}'} ({shown}; {len(reached)}/{len(hits)} within {budget})"
    )


def markdown(summary, grad, cfg: TrainConfig, estimators, lrs, seeds, target, command: str) -> str:
    lines = [
        f"# TEMPO vs GRPO on the `{cfg.dataset}` task",
        "",
        f"`{command}`",
        "",
        f"{cfg.steps} steps x {cfg.prompts_per_step} prompts x {cfg.group_size} samples, "
        f"{len(seeds)} seeds, lr sweep {', '.join(f'{x:g}' for x in lrs)}; eval accuracy = one sample "
        f"at temperature {cfg.temperature:g} per held-out prompt ({cfg.eval_prompts} prompts, every "
        f"{cfg.eval_every} steps).",
        "",
        "## Learning-rate sweep (mean eval accuracy over the run / final, mean over seeds)",
        "",
        "| estimator | " + " | ".join(f"lr {x:g}" for x in lrs) + " | best lr |",
        "|---|" + "---|" * (len(lrs) + 1),
    ]
    for e in estimators:
        cells = [
            f"{summary['sweep'][e][f'{x:g}']['mean_eval_accuracy']:.3f} / "
            f"{summary['sweep'][e][f'{x:g}']['final_eval_accuracy']:.3f}"
            for x in lrs
        ]
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {summary['best_lr'][e]:g} |")
    lines += [
        "",
        f"## Steps to eval accuracy >= {target:g}, each at its best lr (median; per seed)",
        "",
        "| estimator | best lr | steps to target | mean eval acc | final eval acc | step time (s) | "
        "advantage time (ms) | advantage share of step | branch-token fraction | nodes/group |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimators:
        lr = summary["best_lr"][e]
        s = summary["sweep"][e][f"{lr:g}"]
        t = summary["timing"][e]
        lines.append(
            f"| {e} | {lr:g} | {_fmt_steps(s['steps_to_target'], cfg.steps)} | "
            f"{s['mean_eval_accuracy']:.3f} | {s['final_eval_accuracy']:.3f} | {t['step_s']:.2f} | "
            f"{1e3 * t['advantage_s']:.1f} | {100 * t['advantage_fraction']:.2f}% | "
            f"{t['branch_token_fraction']:.3f} | {t['nodes_per_group']:.1f} |"
        )
    if any("+" in e for e in estimators):  # rollouts compared: the token budget and the trees' shape
        lines += [
            "",
            f"## Generated tokens to eval accuracy >= {target:g}, and the trees (best lr)",
            "",
            "| arm | group size | tokens generated / step | tokens to target (median; per seed) | "
            "training seconds to target (median) | "
            "mean first-branch depth | mean branch depth | branch-token fraction | unbiased r (nodes m < G) | "
            "mean node size m |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in estimators:
            lr = summary["best_lr"][e]
            t = summary["timing"][e]
            toks = summary["sweep"][e][f"{lr:g}"]["tokens_to_target"]
            med = statistics.median([x if x is not None else float("inf") for x in toks])
            shown = ", ".join("-" if x is None else str(x) for x in toks)
            lines.append(
                f"| {e} | {summary['group_size'][e]} | {t['tokens_per_step']:.0f} | "
                f"{'not reached' if med == float('inf') else f'{med:.0f}'} ({shown}) | "
                f"{_median_or_dash(summary['sweep'][e][f'{lr:g}'].get('seconds_to_target', []))} | "
                f"{t['first_branch_depth']:.1f} | {t['mean_branch_depth']:.1f} | {t['branch_token_fraction']:.3f} | "
                f"{_fmt(t.get('branch_r_unbiased'))} | {_fmt(t.get('branch_node_mean_m'))} |"
            )
    if grad:
        lines += [
            "",
            "## TEMPO vs GRPO policy gradient on the same samples (initial policy)",
            "",
            "cos to other batches: mean cosine of a batch's gradient with the other batches' gradients "
            "(same rollout, same estimator); noise drives it to 0, so higher means more signal.",
            "",
            "| rollout | batch | reward mean | tokens | cosine TEMPO-GRPO | norm ratio TEMPO/GRPO | "
            "cos to other batches GRPO | cos to other batches TEMPO |",
            "|---|---|---|---|---|---|---|---|",
        ]
        nan = float("nan")
        lines += [
            f"| {g.get('rollout', 'independent')} | {i} | {g['reward_mean']:.3f} | "
            f"{g.get('tokens_generated', '-')} | {g['cosine']:.4f} | {g['norm_ratio']:.3f} | {g.get('cos_other_batches_grpo', nan):.4f} | "
            f"{g.get('cos_other_batches_tempo', nan):.4f} |"
            for i, g in enumerate(grad)
        ]
        lines += [
            "",
            "Gradient SNR of one batch: implied by the mean cosine c between batches, c / (1 - c) (blind to "
            "noise in the gradient's size along a fixed direction), and direct, |mean|^2 / trace Cov over the "
            "batches (both unbiased; `batch_snr`):",
            "",
            "| rollout | cos GRPO | cos TEMPO | c/(1-c) GRPO | c/(1-c) TEMPO | ratio | direct SNR GRPO | "
            "direct SNR TEMPO | direct ratio TEMPO/GRPO |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        nan = float("nan")
        lines += [
            f"| {r} | {v['cos_grpo']:.4f} | {v['cos_tempo']:.4f} | {v['snr_grpo']:.3f} | {v['snr_tempo']:.3f} | "
            f"{v['snr_ratio']:.2f} | {v.get('direct_snr_grpo', nan):.3f} | {v.get('direct_snr_tempo', nan):.3f} | "
            f"{v.get('direct_snr_ratio', nan):.2f} |"
            for r, v in gradient_snr(grad).items()
        ]
    return "\n".join(lines) + "\n"


def _median_or_dash(xs: list[float | None]) -> str:
    """Median with the misses counted as infinite; '-' when at most half reached it."""
    if not xs:
        return "-"
    med = statistics.median([x if x is not None else float("inf") for x in xs])
    return "-" if med == float("inf") else f"{med:.1f}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML/JSON TrainConfig fields for every run (model, task, budget)")
    parser.add_argument("--estimators", nargs="+", default=["tempo", "grpo"], choices=["tempo", "grpo", "dr_grpo"])
    parser.add_argument(
        "--rollout",
        "--rollouts",
        dest="rollouts",
        nargs="+",
        default=["independent"],
        choices=["independent", "tree"],
        help="rollout kinds; with more than one, every estimator runs with each (arms 'tempo+tree', ...)",
    )
    parser.add_argument(
        "--tree-group-size",
        type=int_at_least(0),
        default=0,
        help="leaves per group for tree arms (0: the config's group_size); a tree generates fewer "
        "tokens per leaf, so more leaves give the arms equal tokens per step",
    )
    parser.add_argument(
        "--lrs",
        nargs="+",
        type=float,
        default=[5e-5, 1e-4, 2e-4, 4e-4],
        help="learning-rate sweep, run for every estimator (at least 3 values)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="at least 3 seeds")
    parser.add_argument("--steps", type=int_at_least(1), default=60, help="steps per run (the shared budget)")
    parser.add_argument("--eval-every", type=int_at_least(0), default=5, help="eval every N steps (0: never)")
    parser.add_argument("--target", type=float, default=0.8, help="eval accuracy that counts as reached")
    parser.add_argument(
        "--grad-batches", type=int_at_least(0), default=4, help="batches for the gradient cosine (0: skip)"
    )
    parser.add_argument("--jobs", type=int_at_least(1), default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--runs-dir", default="runs/compare", help="per-run metrics go here")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="rerun every run (default: read back runs that finished with the same config)",
    )
    parser.add_argument(
        "--out",
        default="compare_demo",
        help="writes OUT.png, OUT.md, OUT.json (default: compare_demo.* in the current directory)",
    )


def run(args) -> int:
    import sys

    from tempo_rl.trainer.config import UsageError
    from tempo_rl.trainer.loading import TRAIN_MODULES, require_modules

    try:  # before 25 minutes of runs, not at the plot after them
        require_modules((*TRAIN_MODULES, "matplotlib"), "python -m experiments.compare", "train")
    except UsageError as e:
        print(f"python -m experiments.compare: error: {e}", file=sys.stderr)
        return 2
    if len(args.lrs) < 3 or len(args.seeds) < 3:
        print("warning: a fair comparison needs >= 3 learning rates and >= 3 seeds", file=sys.stderr)
    base = TrainConfig(**(load_file(args.config) if args.config else {}))
    base = replace(base, steps=args.steps, eval_every=args.eval_every).validate()
    from tempo_rl.trainer.loading import model_path

    model_path(base)  # build the shared initial policy once, before the workers start
    t0 = time.perf_counter()
    arms = make_arms(args.estimators, args.rollouts, args.tree_group_size)
    names = list(arms)
    results = run_grid(base, arms, args.lrs, args.seeds, Path(args.runs_dir), args.jobs, reuse=not args.fresh)
    summary = summarise(results, names, args.lrs, args.seeds, args.target)
    summary["group_size"] = {a: arms[a].get("group_size", base.group_size) for a in names}
    grad = (
        [
            {"rollout": r, **row}
            for r in args.rollouts
            for row in gradient_agreement(base, args.grad_batches, r, args.tree_group_size if r == "tree" else 0)
        ]
        if args.grad_batches
        else []
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, summary, names, args.lrs, args.seeds, args.target, out.with_suffix(".png"))
    command = "python -m experiments.compare"
    if sys.argv[0].endswith("compare.py"):  # run as a script, not called from Python
        command = " ".join([command, *sys.argv[1:]])
    md = markdown(summary, grad, base, names, args.lrs, args.seeds, args.target, command)
    out.with_suffix(".md").write_text(md)
    curves = {f"{e}|{lr:g}|{s}": eval_curve(h) for (e, lr, s), h in results.items()}
    rewards = {
        f"{e}|{lr:g}|{s}": [r["reward_mean"] for r in h if "reward_mean" in r]  # not the step-0 eval
        for (e, lr, s), h in results.items()
    }
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "config": base.to_dict(),
                "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                "summary": summary,
                "gradient_agreement": grad,
                "gradient_snr": gradient_snr(grad),
                "eval_curves": curves,
                "train_reward": rewards,
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d"),
                "wall_s": time.perf_counter() - t0,
            },
            indent=1,
        )
    )
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tempo_rl.cli import UsageError

    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UsageError as e:  # a bad --config or option: one line, no traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
