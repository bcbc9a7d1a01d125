"""TEMPO in TRL: GRPOTrainer's own loop, with TEMPO's token advantages in its loss.

    pip install -e '.[trl]'          # from the repository root (TRL 1.x, accelerate, datasets)
    python examples/trl_tempo_grpo.py --model Qwen/Qwen3-1.7B --output-dir runs/trl-tempo
    accelerate launch --num_processes 8 examples/trl_tempo_grpo.py --model Qwen/Qwen3-1.7B ...

The data is a JSONL file read with `datasets` (`prompt` and `answer` per line); the rewards are
TRL-style functions from examples/rewards.py, summed with weights. Replacing `TempoGRPOTrainer` and
`TempoGRPOConfig` with TRL's `GRPOTrainer` and `GRPOConfig` gives plain GRPO on the same run;
`--td-coef 0` gives GRPO's advantages exactly through the TEMPO trainer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # examples/rewards.py, wherever the script is started from

from rewards import boxed, correct  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Qwen/Qwen3-1.7B", help="hub id or local directory")
    p.add_argument("--dataset", default=str(HERE / "data" / "arithmetic.jsonl"), help="JSONL: prompt, answer")
    p.add_argument("--output-dir", default="runs/trl-tempo")
    p.add_argument("--num-generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--per-device-batch", type=int, default=8, help="completions per device per step")
    p.add_argument("--max-completion-length", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--td-coef", type=float, default=1.0, help="TEMPO's TD weight (0: GRPO's advantages)")
    p.add_argument("--cpu", action="store_true", help="run on CPU (small models only)")
    return p.parse_args(argv)


def build_trainer(args: argparse.Namespace, **config_overrides):
    """The TempoGRPOTrainer of the run; `config_overrides` reach TempoGRPOConfig (tests make it tiny)."""
    from datasets import load_dataset

    from tempo_rl.integrations.trl import TempoGRPOConfig, TempoGRPOTrainer

    dataset = load_dataset("json", data_files=args.dataset, split="train")
    config = TempoGRPOConfig(
        **{
            "output_dir": args.output_dir,
            "num_generations": args.num_generations,
            "per_device_train_batch_size": args.per_device_batch,
            "max_completion_length": args.max_completion_length,
            "learning_rate": args.learning_rate,
            "max_steps": args.max_steps,
            "reward_weights": [1.0, 0.1],
            "loss_type": "dapo",  # token-mean, as in the TEMPO runs
            "epsilon": 0.2,  # clip low
            "epsilon_high": 0.28,  # clip high (DAPO's clip-higher)
            "beta": 0.0,  # no KL term, no reference model
            "scale_rewards": "group",  # divide by the group's std
            "tempo_td_coef": args.td_coef,
            "logging_steps": 1,
            "report_to": "none",
            "use_cpu": args.cpu,
            **config_overrides,
        }
    )
    return TempoGRPOTrainer(model=args.model, reward_funcs=[correct, boxed], args=config, train_dataset=dataset)


def main(argv: list[str] | None = None, **config_overrides) -> int:
    trainer = build_trainer(parse_args(argv), **config_overrides)
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
