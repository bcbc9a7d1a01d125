"""TEMPO in TRL: GRPOTrainer's own loop, with TEMPO's token advantages in its loss.

    pip install -e '.[trl]'          # from the repository root (TRL 1.x, accelerate, datasets)
    python examples/trl_tempo_grpo.py --model Qwen/Qwen3-1.7B --output-dir runs/trl-tempo      # one GPU
    torchrun --nproc_per_node 8 examples/trl_tempo_grpo.py --model Qwen/Qwen3-1.7B               # 8 GPUs
    python examples/trl_tempo_grpo.py --model tiny --cpu --output-dir runs/trl-tiny              # CPU, offline
    torchrun --nproc_per_node 2 examples/trl_tempo_grpo.py --model tiny --cpu                    # 2 CPU processes

The default is the real model on GPUs: Qwen3-1.7B on examples/data/arithmetic.jsonl (a JSONL file
read with `datasets`, `prompt` and `answer` per line), rewarded by the TRL-style functions of
examples/rewards.py, summed with weights. `--model tiny` is the project's own tiny policy, built
and warmed up locally on first use (runs/tiny-base, as `make demo` builds it; no hub), trained on
the built-in `add` task, whose reward (`correct`) it earns about half of the time at the start, so
groups disagree, trees branch and TEMPO's metrics (tempo/*) move. Replacing `TempoGRPOTrainer` and
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

TINY = "tiny"
# Per model: the real one on GPUs, the tiny policy on CPU (the demo's batch: 8 prompts x 8 completions
# per generation, 4 optimizer steps on it, a learning rate a 2-layer model learns from in minutes).
DEFAULTS = {
    "real": dict(
        dataset=str(HERE / "data" / "arithmetic.jsonl"),
        per_device_batch=8,
        steps_per_generation=1,
        max_completion_length=1024,
        learning_rate=1e-6,
        max_steps=200,
        threads=0,
    ),
    TINY: dict(
        dataset="add", per_device_batch=16, steps_per_generation=4, max_completion_length=24, learning_rate=1e-4,
        max_steps=100, threads=1,
    ),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real, tiny = DEFAULTS["real"], DEFAULTS[TINY]
    both = lambda name: f"(default: {real[name]}; {tiny[name]} with --model tiny)"
    p.add_argument(
        "--model",
        default="Qwen/Qwen3-1.7B",
        help="hub id or local directory, or 'tiny': the project's tiny policy, built on first use (default: %(default)s)",
    )
    p.add_argument("--tiny-dir", default="runs/tiny-base", help="where --model tiny is built and cached")
    p.add_argument(
        "--tiny-warmup-steps", type=int, default=1500, help="supervised warm-up steps when building --model tiny"
    )
    p.add_argument(
        "--dataset",
        help=f"JSONL with prompt and answer, or 'add' (the built-in task) {both('dataset')}",
    )
    p.add_argument("--output-dir", default="runs/trl-tempo")
    p.add_argument("--num-generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--per-device-batch", type=int, help=f"completions per device per step {both('per_device_batch')}")
    p.add_argument(
        "--steps-per-generation",
        type=int,
        help=f"optimizer steps per generation batch (TRL's option) {both('steps_per_generation')}",
    )
    p.add_argument("--max-completion-length", type=int, help=both("max_completion_length"))
    p.add_argument("--learning-rate", type=float, help=both("learning_rate"))
    p.add_argument("--max-steps", type=int, help=f"optimizer steps {both('max_steps')}")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads, 0: torch's default (a model this small runs fastest on one, and one degrades least "
        f"on a shared machine) {both('threads')}",
    )
    p.add_argument("--td-coef", type=float, default=1.0, help="TEMPO's TD weight (0: GRPO's advantages)")
    p.add_argument(
        "--dump-rollouts-every",
        type=int,
        default=0,
        help="append every N-th generation batch (the first included) to <output-dir>/rollouts.jsonl for "
        "`tempo-rl inspect` (0: never)",
    )
    p.add_argument("--cpu", action="store_true", help="run on CPU (small models only: --model tiny)")
    args = p.parse_args(argv)
    for name, value in DEFAULTS[TINY if args.model == TINY else "real"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def load_data(args: argparse.Namespace):
    """The training set and its reward functions with their weights."""
    from datasets import Dataset, load_dataset

    if args.dataset == "add":
        from tempo_rl.trainer.data import add_examples

        examples = add_examples(4096, seed=0)
        data = Dataset.from_dict({"prompt": [e.prompt for e in examples], "answer": [e.answer for e in examples]})
        return data, [correct], [1.0]  # the tiny policy writes its answer last, with no \boxed{}
    return load_dataset("json", data_files=args.dataset, split="train"), [correct, boxed], [1.0, 0.1]


def model_path(args: argparse.Namespace) -> str:
    """The model to load: `--model` itself, or the tiny policy, built (once, by the main process) if missing."""
    if args.model != TINY:
        return args.model
    from accelerate import PartialState

    from tempo_rl.trainer.tiny import make_base_model

    with PartialState().main_process_first():  # under torchrun the other processes wait for it
        return str(make_base_model(args.tiny_dir, warmup_steps=args.tiny_warmup_steps))


def build_trainer(args: argparse.Namespace, **config_overrides):
    """The TempoGRPOTrainer of the run; `config_overrides` reach TempoGRPOConfig (tests make it tiny)."""
    from tempo_rl.integrations.trl import TempoGRPOConfig, TempoGRPOTrainer

    dataset, reward_funcs, reward_weights = load_data(args)
    config = TempoGRPOConfig(
        **{
            "output_dir": args.output_dir,
            "num_generations": args.num_generations,
            "per_device_train_batch_size": args.per_device_batch,
            "steps_per_generation": args.steps_per_generation,
            "max_completion_length": args.max_completion_length,
            "learning_rate": args.learning_rate,
            "max_steps": args.max_steps,
            "reward_weights": reward_weights,
            "loss_type": "dapo",  # token-mean, as in the TEMPO runs
            "epsilon": 0.2,  # clip low
            "epsilon_high": 0.28,  # clip high (DAPO's clip-higher)
            "beta": 0.0,  # no KL term, no reference model
            "scale_rewards": "group",  # divide by the group's std
            "tempo_td_coef": args.td_coef,
            "tempo_dump_rollouts_every": args.dump_rollouts_every,
            "logging_steps": args.steps_per_generation,  # each logged row: one generation batch, its metrics
            "report_to": "none",
            "use_cpu": args.cpu,
            "bf16": not args.cpu,  # float32 on CPU: bf16 autocast there is slow and rounds the tiny model
            "gradient_checkpointing": args.model != TINY,  # TRL's default; the tiny model's activations are small
            **config_overrides,
        }
    )
    return TempoGRPOTrainer(model=model_path(args), reward_funcs=reward_funcs, args=config, train_dataset=dataset)


def train(args: argparse.Namespace, **config_overrides):
    """Build the trainer on `--threads` torch threads and train it; returns the trainer."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = build_trainer(args, **config_overrides)
    trainer.train()
    return trainer


def main(argv: list[str] | None = None, **config_overrides) -> int:
    import torch

    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("trl_tempo_grpo.py: no GPU here; add --cpu (with a small model: --model tiny)", file=sys.stderr)
        return 2
    train(args, **config_overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
