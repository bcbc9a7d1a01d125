"""Gradient SNR of TEMPO and GRPO on the `luck` task and its control, at the initial policy (no training).

`python -m experiments.luck_gradient --out benchmarks/results/luck_gradient.json` runs the
gradient diagnostic of `python -m experiments.compare` (`compare.gradient_agreement`: the TEMPO and GRPO policy
gradients of the same batches, and each estimator's mean cosine between batches) on
experiments/configs/luck.yaml with the task's reward ("luck": [heads] + 0.5 [answer right]) and with the
control's ("numeric": no coin term), for independent and tree rollouts, and prints the SNR each
cosine implies (`compare.gradient_snr`) next to the prediction of
benchmarks/results/luck_prediction.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from experiments import compare
from tempo_rl.trainer.config import TrainConfig, load_file

PREDICTED = {"luck": "1.5-3.4 (3.37 carry only, 1.54 with reward noise sd 0.5)", "numeric": "0.79-0.98"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/configs/luck.yaml")
    parser.add_argument("--batches", type=int, default=12, help="batches of prompts_per_step groups per arm")
    parser.add_argument("--tree-group-size", type=int, default=44)
    parser.add_argument("--rewards", nargs="+", default=["luck", "numeric"], choices=sorted(PREDICTED))
    parser.add_argument("--out", default="benchmarks/results/luck_gradient.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = TrainConfig(**load_file(args.config)).validate()
    out = {}
    for reward in args.rewards:
        cfg = replace(base, reward=[reward])
        grad = [
            {"rollout": r, **row}
            for r in ("independent", "tree")
            for row in compare.gradient_agreement(cfg, args.batches, r, args.tree_group_size if r == "tree" else 0)
        ]
        out[reward] = {"rows": grad, "snr": compare.gradient_snr(grad), "predicted_ratio": PREDICTED[reward]}
        for r, v in out[reward]["snr"].items():
            print(
                f"reward {reward:8s} {r:12s} cos GRPO {v['cos_grpo']:.4f} TEMPO {v['cos_tempo']:.4f}; direct SNR "
                f"GRPO {v['direct_snr_grpo']:.3f} TEMPO {v['direct_snr_tempo']:.3f} ratio {v['direct_snr_ratio']:.2f} "
                f"(predicted {PREDICTED[reward]})",
                flush=True,
            )
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
