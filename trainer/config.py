"""TrainConfig: every knob of `tempo-rl train`, with its help text, grouped by theme.

Defaults train the embedded demo (tiny model, built-in `add` task) on CPU. Values come from, in
increasing priority: these defaults, a YAML/JSON file (`--config`), command-line flags.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _f(default: Any, help: str, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **extra})


@dataclass
class TrainConfig:
    # model and data
    model: str = _f("tiny", "a local Hugging Face model directory (AutoModelForCausalLM.from_pretrained), "
                    "or 'tiny' for the embedded demo policy, built and warmed up on first use", "model and data")
    tiny_dir: str = _f("runs/tiny-base", "where the 'tiny' policy is built and cached", "model and data")
    tiny_warmup_steps: int = _f(1500, "supervised warm-up steps when building the 'tiny' policy", "model and data")
    dataset: str = _f("add", "built-in task name ('add') or a JSONL file with 'prompt' and 'answer' per line",
                      "model and data")
    eval_dataset: str = _f("", "held-out prompts for greedy evaluation; '' uses a seeded draw of the built-in "
                           "task (seed+1), or the training file", "model and data")
    chat_template: bool = _f(False, "wrap each prompt as a user turn with the tokenizer's chat template "
                             "(for instruct models such as Qwen3)", "model and data")
    reward: str = _f("numeric", "'numeric' (exact rational match of the final answer; \\boxed{}, commas, "
                     "fractions normalised), 'choice' (multiple-choice letter), or 'module:function'",
                     "model and data")
    reward_time_limit: float = _f(5.0, "seconds a reward call may take before it scores 0 with a warning",
                                  "model and data")

    # sampling
    prompts_per_step: int = _f(8, "prompts per rollout batch", "sampling")
    group_size: int = _f(8, "G: responses sampled per prompt (one group, one prefix tree)", "sampling")
    max_new_tokens: int = _f(24, "response length limit; generation also stops at EOS", "sampling")
    temperature: float = _f(1.0, "sampling temperature", "sampling")
    top_p: float = _f(1.0, "nucleus sampling threshold", "sampling")
    rollout: str = _f("independent", "'independent' (G samples per prompt with `generate`) or 'tree' (each group "
                      "sampled as a prefix tree: roots, then branches forked inside sampled responses and "
                      "continued from the policy; trainer/tree_rollout.py)", "sampling",
                      choices=("independent", "tree"))
    tree_roots: int = _f(2, "tree: responses sampled from the prompt alone before any fork", "sampling")
    fork_at: str = _f("entropy", "tree: fork depths are 'entropy' (the parent's highest-entropy positions, its "
                      "decision tokens), 'random' (uniform) or 'fixed' (fork_depths)", "sampling",
                      choices=("entropy", "random", "fixed"))
    fork_depths: str = _f("", "tree: comma-separated response depths for fork_at='fixed', e.g. '8,16'", "sampling")
    forks_per_point: int = _f(1, "tree: children forked at one (parent, depth) point", "sampling")
    fork_points_per_parent: int = _f(0, "tree: fork points one parent gives per wave (0: as many as needed; 1 "
                                     "nests forks, children forking from the previous wave)", "sampling")
    min_fork_depth: int = _f(1, "tree: forks share at least this many response tokens with their parent", "sampling")
    max_fork_depth: int = _f(0, "tree: ... and at most this many (0: no limit)", "sampling")

    # advantages
    estimator: str = _f("tempo", "'tempo' (GRPO + TD over the group's prefix tree, arXiv 2509.18314), "
                        "'grpo' ((R - mean) / std), or 'dr_grpo' (R - mean, no std; Liu et al. 2025)",
                        "advantages", choices=("tempo", "grpo", "dr_grpo"))
    td_coef: float = _f(1.0, "weight of TEMPO's TD term (0 gives GRPO exactly)", "advantages")
    backend: str = _f("auto", "advantage backend: auto, reference, torch, triton", "advantages",
                      choices=("auto", "reference", "torch", "triton"))
    trust_batches: int = _f(1, "on this many first batches, check the fast backend against the exact "
                            "reference and stop on a mismatch", "advantages")
    trust_groups: int = _f(4, "groups per checked batch recomputed by the reference (sampled; the cost "
                           "does not grow with the batch)", "advantages")
    trust_atol: float = _f(1e-5, "mismatch tolerance of the trust check, relative to max(1, |A|max)",
                           "advantages")

    # optimisation
    lr: float = _f(1e-4, "AdamW peak learning rate", "optimisation")
    lr_warmup_steps: int = _f(10, "linear warm-up of the learning rate, in optimizer updates", "optimisation")
    weight_decay: float = _f(0.0, "AdamW weight decay", "optimisation")
    ppo_epochs: int = _f(1, "passes over each rollout batch", "optimisation")
    mini_batches: int = _f(4, "optimizer updates per epoch (the rollout batch is split this many ways)",
                           "optimisation")
    grad_accum: int = _f(1, "micro-batches per mini-batch (gradient accumulation; same result, less memory)",
                         "optimisation")
    max_grad_norm: float = _f(1.0, "gradient clipping threshold (total L2 norm); 0 disables", "optimisation")
    clip_low: float = _f(0.2, "PPO clip below: ratio >= 1 - clip_low for negative advantages", "optimisation")
    clip_high: float = _f(0.28, "PPO clip above: ratio <= 1 + clip_high for positive advantages (DAPO's "
                          "clip-higher, as in the TEMPO runs)", "optimisation")
    aggregation: str = _f("token-mean", "loss aggregation: 'token-mean' (every token weighs the same) or "
                          "'sequence-mean' (mean per response, then over responses)", "optimisation",
                          choices=("token-mean", "sequence-mean"))
    kl_coef: float = _f(0.0, "weight of the k3 KL penalty to the frozen initial policy (0: no reference "
                        "model is kept)", "optimisation")
    fused_loss: bool = _f(True, "log-probs and loss through tempo_rl.fused_policy_loss, in chunks of tokens, "
                          "never forming the (B, T, V) logits; False: full logits (the reference path)",
                          "optimisation")

    # run
    steps: int = _f(80, "rollout batches (one rollout + its PPO updates = one step)", "run")
    seed: int = _f(0, "seed of prompts, sampling and mini-batch order", "run")
    output_dir: str = _f("runs/demo", "metrics.jsonl, rollouts.jsonl and checkpoints/ go here", "run")
    resume: str = _f("", "'latest' or a checkpoint directory to continue from, exactly", "run")
    save_every: int = _f(0, "checkpoint every N steps (0: only at the end)", "run")
    keep_checkpoints: int = _f(2, "checkpoints kept (oldest deleted)", "run")
    save_final: bool = _f(True, "checkpoint after the last step", "run")
    eval_every: int = _f(10, "accuracy on the held-out eval prompts every N steps (0: never)", "run")
    eval_prompts: int = _f(256, "number of eval prompts", "run")
    eval_greedy: bool = _f(False, "evaluate with greedy decoding instead of one sample at the training "
                           "temperature (on the demo task greedy decoding is right almost from the start)", "run")
    dump_rollouts_every: int = _f(0, "every N steps, append one group's rollouts to rollouts.jsonl "
                                  "(group_id, response ids, text, reward, step) for `tempo-rl inspect`", "run")
    device: str = _f("auto", "'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...", "run")
    dtype: str = _f("float32", "'float32', or 'bfloat16' autocast with float32 master weights (GPU)", "run",
                    choices=("float32", "bfloat16"))
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (large models)", "run")
    threads: int = _f(0, "torch CPU threads (0: leave torch's default)", "run")
    progress: bool = _f(True, "tqdm progress bar", "run")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed", "run")

    def validate(self) -> "TrainConfig":
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        rows = self.prompts_per_step * self.group_size
        if rows % self.mini_batches or (rows // self.mini_batches) % self.grad_accum:
            raise ValueError(f"prompts_per_step * group_size = {rows} must split into mini_batches="
                             f"{self.mini_batches} x grad_accum={self.grad_accum} equal parts")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (a group of one has zero advantage)")
        if self.rollout == "tree":
            self.tree_config()  # raises on inconsistent fork options
        return self

    def tree_config(self):
        """The `TreeConfig` of the tree rollout options (None for independent sampling)."""
        if self.rollout != "tree":
            return None
        from .tree_rollout import TreeConfig

        try:
            depths = tuple(int(d) for d in self.fork_depths.split(",") if d.strip())
        except ValueError:
            raise ValueError(f"fork_depths must be comma-separated integers, got {self.fork_depths!r}") from None
        return TreeConfig(n_roots=self.tree_roots, fork_at=self.fork_at, fork_depths=depths,
                          forks_per_point=self.forks_per_point,
                          points_per_parent=self.fork_points_per_parent or None,
                          min_fork_depth=self.min_fork_depth, max_fork_depth=self.max_fork_depth or None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_file(path: str | Path) -> dict[str, Any]:
    """Overrides from a YAML or JSON file; unknown keys are an error."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
    return data


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per field (--prompts-per-step ...), grouped by theme; defaults are SUPPRESSed so
    only flags actually given override the file."""
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        name = f.metadata["group"]
        group = groups.setdefault(name, parser.add_argument_group(name))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text,
                               choices=f.metadata.get("choices"))


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """defaults < --config file < flags."""
    cfg = base or TrainConfig()
    if getattr(args, "config", None):
        cfg = replace(cfg, **load_file(args.config))
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return replace(cfg, **given).validate()
