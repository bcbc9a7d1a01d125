"""`tempo-rl train`'s command line: options, the run, and its summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .config import UsageError, add_config_arguments, config_from_args
from .loading import quiet_hf_progress
from .rewards import TrainingStopped
from .train import train


def add_arguments(parser) -> None:
    add_config_arguments(parser)


def run(args) -> int:
    """`tempo-rl train`: 0 on success, 2 on bad input (one line on stderr), 1 when the run stopped."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        if not cfg.progress:
            quiet_hf_progress()
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
            f"reward_mean per {'step' if width == 1 else f'{width} steps'}: "
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
