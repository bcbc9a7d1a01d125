"""TrainConfig: every knob of `tempo-rl train`, with its help text, its allowed range, grouped by theme.

Defaults train the embedded demo (tiny model, built-in `add` task) on CPU. Values come from, in
increasing priority: these defaults, a YAML/JSON file (`--config`), command-line flags. Whatever the
source, `validate` coerces each value to its field's type with pydantic (YAML's `lr: 1e-4` is a string
to PyYAML and becomes the float 1e-4; `steps: 1.5` is refused) and checks its range, before anything
is loaded; an error names the field, its flag and the allowed range.
"""

from __future__ import annotations

import argparse
import json
import reprlib
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from tempo_rl.cli import UsageError  # a bad option, file or environment: the CLI prints one line, exit 2
from tempo_rl.extras import install_command, requires

INSTALL_TRAIN = install_command("train")
MAX_SEED = 2**32 - 1  # numpy's seed range
MIN_TEMPERATURE = 1e-6
MAX_REWARDS = 1024  # reward functions summed per sample
MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of options; anything larger is not one


def _f(default: Any, help: str, group: str, **extra: Any) -> Any:
    """A field with help text and theme; `extra` holds `choices` and bounds (`ge`, `gt`, `le`, `lt`)."""
    meta = {"help": help, "group": group, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # model and data
    model: str = _f(
        "tiny",
        "a local Hugging Face model directory (AutoModelForCausalLM.from_pretrained), "
        "or 'tiny' for the embedded demo policy, built and warmed up on first use",
        "model and data",
    )
    tiny_dir: str = _f("runs/tiny-base", "where the 'tiny' policy is built and cached", "model and data")
    tiny_warmup_steps: int = _f(
        1500, "supervised warm-up steps when building the 'tiny' policy", "model and data", ge=0
    )
    dataset: str = _f(
        "add",
        "built-in task name ('add', 'chain', 'luck'), a JSONL / JSON / CSV / Parquet file or a "
        "directory written by datasets' save_to_disk, with a prompt and an answer column (other "
        "columns reach batched reward functions as keyword arguments)",
        "model and data",
    )
    prompt_column: str = _f(
        "prompt", "the dataset column holding the prompt (text, or chat messages)", "model and data"
    )
    answer_column: str = _f(
        "answer", "the dataset column holding the answer (passed to rewards as `answer`)", "model and data"
    )
    eval_dataset: str = _f(
        "",
        "held-out prompts for evaluation; '' draws fresh prompts of a built-in task "
        "(seed+1), or, for a file, holds out eval_prompts rows (at most a tenth) of the "
        "training file, which training then never sees",
        "model and data",
    )
    chat_template: bool = _f(
        False,
        "wrap each prompt as a user turn with the tokenizer's chat template (for instruct models such as Qwen3)",
        "model and data",
    )
    reward: list[str] = _f(
        ["numeric"],
        "reward functions, summed with reward_weights: 'numeric' (exact "
        "rational match of the final answer; \\boxed{}, commas, fractions normalised), "
        "'choice' (multiple-choice letter), 'module:function' (the working directory is "
        "importable) or 'path/to/file.py:function'. A function may take TRL's batched form "
        "fn(prompts, completions, **columns) -> list[float | None] or be fn(completion, "
        "answer) -> float",
        "model and data",
    )
    reward_weights: list[float] = _f([], "one weight per reward function (default: all 1.0)", "model and data")
    reward_time_limit: float = _f(
        5.0,
        "seconds per sample a reward may take before it scores 0 with a warning "
        "(a batched call gets this times its batch size)",
        "model and data",
        gt=0,
    )

    # sampling
    prompts_per_step: int = _f(8, "prompts per rollout batch", "sampling", ge=1)
    group_size: int = _f(8, "G: responses sampled per prompt (one group, one prefix tree)", "sampling", ge=2)
    max_new_tokens: int = _f(24, "response length limit; generation also stops at EOS", "sampling", ge=1)
    temperature: float = _f(
        1.0,
        "sampling temperature (from 1e-6: logits / temperature and its gradients must stay finite in "
        "float32, which 1e-45 does not)",
        "sampling",
        ge=MIN_TEMPERATURE,
    )
    top_p: float = _f(1.0, "nucleus sampling threshold", "sampling", gt=0, le=1)
    rollout: str = _f(
        "independent",
        "'independent' (G samples per prompt with `generate`) or 'tree' (each group "
        "sampled as a prefix tree: roots, then branches forked inside sampled responses and "
        "continued from the policy; trainer/tree_rollout.py)",
        "sampling",
        choices=("independent", "tree"),
    )
    tree_roots: int = _f(2, "tree: responses sampled from the prompt alone before any fork", "sampling", ge=1)
    fork_at: str = _f(
        "entropy",
        "tree: fork depths are 'entropy' (the parent's highest-entropy positions, its "
        "decision tokens), 'random' (uniform), 'fixed' (fork_depths) or 'group_entropy' (the TEMPO "
        "authors' tree: each wave forks at the group's highest-entropy position so far; with "
        "--tree-roots 1, each of the G - 1 extra branches re-generates from there)",
        "sampling",
        choices=("entropy", "random", "fixed", "group_entropy"),
    )
    fork_depths: str = _f("", "tree: comma-separated response depths for fork_at='fixed', e.g. '8,16'", "sampling")
    forks_per_point: int = _f(1, "tree: children forked at one (parent, depth) point", "sampling", ge=1)
    fork_points_per_parent: int = _f(
        0,
        "tree: fork points one parent gives per wave (0: as many as needed; 1 "
        "nests forks, children forking from the previous wave)",
        "sampling",
        ge=0,
    )
    min_fork_depth: int = _f(
        1, "tree: forks share at least this many response tokens with their parent", "sampling", ge=0
    )
    max_fork_depth: int = _f(0, "tree: ... and at most this many (0: no limit)", "sampling", ge=0)
    generator: str = _f(
        "hf",
        "what samples the rollouts: 'hf' (the policy itself, transformers) or 'vllm' (a vLLM engine in "
        "this process, its weights synced after each update; trainer/vllm_rollout.py, `make "
        ".venv-vllm/.installed`). With 'vllm' the 'tiny' policy is built with head_dim 64 (vLLM's CPU "
        "attention refuses the demo's 24) in tiny_dir + '-vllm'; evaluation still samples with `generate`",
        "sampling",
        choices=("hf", "vllm"),
    )
    vllm_entropy_top_k: int = _f(
        100,
        "vllm: top-k log-probs per sampled token from which the entropy that places 'entropy' and "
        "'group_entropy' forks is estimated (the TEMPO authors use 100)",
        "sampling",
        ge=1,
    )
    vllm_kv_cache_gb: int = _f(
        1, "vllm: KV-cache memory of the engine, in GiB (VLLM_CPU_KVCACHE_SPACE)", "sampling", ge=1
    )

    # advantages
    estimator: str = _f(
        "tempo",
        "'tempo' (GRPO + TD over the group's prefix tree, arXiv 2509.18314), "
        "'grpo' ((R - mean) / std), or 'dr_grpo' (R - mean, no std; Liu et al. 2025)",
        "advantages",
        choices=("tempo", "grpo", "dr_grpo"),
    )
    td_coef: float = _f(1.0, "weight of TEMPO's TD term (0 gives GRPO exactly)", "advantages", ge=0)
    backend: str = _f(
        "auto",
        "advantage backend: auto, reference, torch, triton",
        "advantages",
        choices=("auto", "reference", "torch", "triton"),
    )
    trust_batches: int = _f(
        1,
        "on this many first batches, check the fast backend against the exact reference and stop on a mismatch",
        "advantages",
        ge=0,
    )
    trust_groups: int = _f(
        4,
        "groups per checked batch recomputed by the reference (sampled; the cost does not grow with the batch)",
        "advantages",
        ge=1,
    )
    trust_atol: float = _f(
        1e-5, "mismatch tolerance of the trust check, relative to max(1, |A|max)", "advantages", gt=0
    )

    # optimisation
    lr: float = _f(1e-4, "AdamW peak learning rate", "optimisation", gt=0, le=1)
    lr_warmup_steps: int = _f(10, "linear warm-up of the learning rate, in optimizer updates", "optimisation", ge=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", "optimisation", ge=0)
    ppo_epochs: int = _f(1, "passes over each rollout batch", "optimisation", ge=1)
    mini_batches: int = _f(
        4, "optimizer updates per epoch (the rollout batch is split this many ways)", "optimisation", ge=1
    )
    grad_accum: int = _f(
        1, "micro-batches per mini-batch (gradient accumulation; same result, less memory)", "optimisation", ge=1
    )
    max_grad_norm: float = _f(1.0, "gradient clipping threshold (total L2 norm); 0 disables", "optimisation", ge=0)
    clip_low: float = _f(
        0.2, "PPO clip below: ratio >= 1 - clip_low for negative advantages", "optimisation", gt=0, lt=1
    )
    clip_high: float = _f(
        0.28,
        "PPO clip above: ratio <= 1 + clip_high for positive advantages (DAPO's clip-higher, as in the TEMPO runs)",
        "optimisation",
        gt=0,
    )
    aggregation: str = _f(
        "token-mean",
        "loss aggregation: 'token-mean' (every token weighs the same) or "
        "'sequence-mean' (mean per response, then over responses)",
        "optimisation",
        choices=("token-mean", "sequence-mean"),
    )
    kl_coef: float = _f(
        0.0,
        "weight of the k3 KL penalty to the frozen initial policy (0: no reference model is kept)",
        "optimisation",
        ge=0,
    )
    tree_forward: bool = _f(
        True,
        "with rollout = 'tree', the policy's, old policy's and reference's log-probs are computed on "
        "the packed prefix tree (tempo_rl.tree_policy_loss), every shared prefix once; False: row by "
        "row (the same numbers to float32 rounding)",
        "optimisation",
    )
    fused_loss: bool = _f(
        True,
        "log-probs and loss through tempo_rl.fused_policy_loss, in chunks of tokens, "
        "never forming the (B, T, V) logits; False: full logits (the reference path)",
        "optimisation",
    )

    # run
    steps: int = _f(80, "rollout batches (one rollout + its PPO updates = one step)", "run", ge=1)
    seed: int = _f(0, "seed of prompts, sampling and mini-batch order", "run", ge=0, le=MAX_SEED)
    output_dir: str = _f(
        "runs/demo",
        "metrics.jsonl, rollouts.jsonl and checkpoints/ go here; a new run "
        "refuses a directory that already holds a run unless --resume or --overwrite",
        "run",
    )
    overwrite: bool = _f(
        False, "start a new run in an output_dir that holds one, deleting its metrics, rollouts and checkpoints", "run"
    )
    resume: str = _f(
        "", "'latest' (the checkpoint written last) or a checkpoint directory to continue from, exactly", "run"
    )
    force_resume: bool = _f(
        False,
        "resume even though the options that define the run (model, data, reward, "
        "seed, group size, learning rate, ...) differ from the checkpoint's",
        "run",
    )
    discard_later: bool = _f(
        False,
        "with --resume of an older checkpoint: delete the checkpoints of later steps (and their "
        "metrics rows) and continue from it; without it such a resume is refused",
        "run",
    )
    save_every: int = _f(0, "checkpoint every N steps (0: only at the end)", "run", ge=0)
    keep_checkpoints: int = _f(2, "checkpoints kept, newest by write order (0: all)", "run", ge=0)
    save_final: bool = _f(True, "checkpoint after the last step", "run")
    eval_every: int = _f(10, "accuracy on the held-out eval prompts every N steps (0: never)", "run", ge=0)
    eval_prompts: int = _f(256, "number of eval prompts", "run", ge=1)
    eval_greedy: bool = _f(
        False,
        "evaluate with greedy decoding; by default one response per prompt is sampled "
        "at the training temperature (on the demo task greedy decoding is right almost "
        "from the start)",
        "run",
    )
    accuracy_threshold: float = _f(
        1.0, "a response counts as correct (accuracy, eval_accuracy) when its total reward is at least this", "run"
    )
    eval_reward: list[str] = _f(
        [],
        "reward functions (same forms as reward, weights 1) that score evaluation; [] uses the training "
        "reward. E.g. 'numeric' on the 'luck' task, whose training reward also pays for a coin",
        "run",
    )
    max_zero_variance_steps: int = _f(
        20,
        "stop with an error after this many steps in a row in which every "
        "group's rewards were all equal, so every advantage was 0 (0: never)",
        "run",
        ge=0,
    )
    dump_rollouts_every: int = _f(
        0,
        "every N steps, append the step's groups (prompt, response ids, text, "
        "reward) to rollouts.jsonl for `tempo-rl inspect`",
        "run",
        ge=0,
    )
    device: str = _f("auto", "'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...", "run")
    dtype: str = _f(
        "float32",
        "'float32', or 'bfloat16' autocast with float32 master weights (GPU)",
        "run",
        choices=("float32", "bfloat16"),
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (large models)", "run")
    threads: int = _f(0, "torch CPU threads (0: leave torch's default)", "run", ge=0)
    progress: bool = _f(True, "tqdm progress bar", "run")
    report_to: list[str] = _f(
        [],
        "also log metrics to 'tensorboard' (output_dir/tb; pip install -e "
        "'.[tensorboard]') and/or 'wandb' (pip install -e '.[wandb]')",
        "run",
        choices=("tensorboard", "wandb", "none"),
    )
    tensorboard: bool = _f(False, "same as --report-to tensorboard (kept for old command lines)", "run")

    def __post_init__(self) -> None:
        for name in ("reward", "reward_weights", "report_to", "eval_reward"):  # one value where a list is expected
            setattr(self, name, _as_list(getattr(self, name)))

    def validate(self) -> "TrainConfig":
        """Coerce every field to its type and check its range (in place), then the cross-field rules;
        raises UsageError naming the field."""
        for name, value in _coerced(asdict(self)).items():
            setattr(self, name, value)
        if not self.output_dir.strip():
            raise UsageError("output_dir (--output-dir): empty; give the directory the run writes into")
        rows = self.prompts_per_step * self.group_size
        if rows % self.mini_batches or (rows // self.mini_batches) % self.grad_accum:
            raise UsageError(
                f"prompts_per_step * group_size = {rows} must split into mini_batches="
                f"{self.mini_batches} x grad_accum={self.grad_accum} equal parts"
            )
        for name in ("reward", "eval_reward"):
            if len(getattr(self, name)) > MAX_REWARDS:
                raise UsageError(
                    f"{name} (--{name.replace('_', '-')}): {len(getattr(self, name))} reward functions, more than "
                    f"{MAX_REWARDS}; each is called on every sample, so list each one once (reward_weights "
                    "weighs them)"
                )
        if self.reward_weights and len(self.reward_weights) != len(self.reward):
            raise UsageError(
                f"reward_weights: {len(self.reward_weights)} weights for {len(self.reward)} reward functions"
            )
        if self.rollout == "tree":
            try:
                self.tree_config()
            except ValueError as e:  # inconsistent fork options
                raise UsageError(str(e)) from None
        return self

    @property
    def loggers(self) -> list[str]:
        """The libraries metrics go to besides metrics.jsonl."""
        wanted = [r for r in self.report_to if r != "none"]
        if self.tensorboard and "tensorboard" not in wanted:
            wanted.append("tensorboard")
        return wanted

    def tree_config(self):
        """The `TreeConfig` of the tree rollout options (None for independent sampling)."""
        if self.rollout != "tree":
            return None
        from .tree_rollout import TreeConfig

        try:
            depths = tuple(int(d) for d in self.fork_depths.split(",") if d.strip())
        except ValueError:
            raise UsageError(f"fork_depths must be comma-separated integers, got {self.fork_depths!r}") from None
        return TreeConfig(
            n_roots=self.tree_roots,
            fork_at=self.fork_at,
            fork_depths=depths,
            forks_per_point=self.forks_per_point,
            points_per_parent=self.fork_points_per_parent or None,
            min_fork_depth=self.min_fork_depth,
            max_fork_depth=self.max_fork_depth or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_file(path: str | Path) -> dict[str, Any]:
    """Overrides from a YAML or JSON file; unknown keys are an error."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--config {path}: a directory; give a YAML or JSON file")
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"--config {path}: {size} bytes, more than a config file's {MAX_CONFIG_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {path}: not UTF-8 text (byte {e.start})") from None
    if path.suffix in (".yaml", ".yml"):
        data = _load_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        except ValueError as e:  # an integer of more digits than Python converts
            raise UsageError(f"--config {path}: {str(e).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"{path}: unknown config keys {sorted(unknown)}")
    return data


def _load_yaml(text: str, path: Path) -> Any:
    """YAML without aliases: `*name` repeats a node without copying it, so a few hundred bytes can
    stand for billions of values (an alias bomb); a config file never needs one."""
    with requires("train", f"--config {path}"):
        import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise UsageError(
                    f"--config {path}: line {mark.line + 1}, column {mark.column + 1}: a YAML alias "
                    "(*name); write the value out instead"
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliases) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"--config {path}: not valid YAML ({at}{problem})") from None
    except UsageError:
        raise
    except ValueError as e:  # an integer of more digits than Python converts
        raise UsageError(f"--config {path}: {str(e).split(';')[0]}") from None


def _as_list(value: Any) -> Any:
    """A single value where a list is expected (YAML `reward: numeric`, `--reward-weights 1`) as a list."""
    return value if isinstance(value, (list, tuple)) else [value]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


@lru_cache(maxsize=None)
def _validator():
    """A pydantic model with TrainConfig's fields, types, choices and bounds (built once)."""
    try:
        from pydantic import BeforeValidator, ConfigDict, Field, create_model
    except ImportError:
        raise UsageError(
            f"tempo-rl train needs the Python package 'pydantic', which is not installed: {INSTALL_TRAIN}"
        ) from None

    hints = get_type_hints(TrainConfig)
    spec = {}
    for f in fields(TrainConfig):
        kind, choices = hints[f.name], f.metadata.get("choices")
        bounds = {k: f.metadata[k] for k in ("ge", "gt", "le", "lt") if k in f.metadata}
        if kind is float:
            bounds["allow_inf_nan"] = False
        if kind in (int, float):  # YAML's `steps: true` is a mistake, not the number 1
            kind = Annotated[kind, BeforeValidator(_not_bool)]
        if choices:
            item = Literal[choices]  # type: ignore[valid-type]
            kind = list[item] if kind == list[str] else item
        elif kind == list[float]:
            kind = list[Annotated[float, Field(allow_inf_nan=False)]]
        spec[f.name] = (kind, Field(**bounds))
    config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    return create_model("TrainConfigValues", __config__=config, **spec)


# The value of a bad option as the error line shows it: a few items, a few levels, a short string.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 4, 4, 60, 60, 40


def _coerced(values: dict[str, Any]) -> dict[str, Any]:
    """Each value as its field's type, in range; UsageError naming every bad field otherwise."""
    model = _validator()  # UsageError naming the extra when pydantic is missing
    from pydantic import ValidationError

    for f in fields(TrainConfig):
        if f.name in values and get_type_hints(TrainConfig)[f.name] in (list[str], list[float]):
            values[f.name] = _as_list(values[f.name])
    try:
        return model(**values).model_dump()
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = str(err["loc"][0])
            where = ".".join(str(x) for x in err["loc"])
            given = _SHORT.repr(err.get("input"))
            problems.append(f"{where} (--{name.replace('_', '-')}): {err['msg']} (given: {given})")
        raise UsageError("invalid option: " + "; ".join(problems)) from None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per field (--prompts-per-step ...), grouped by theme; defaults are SUPPRESSed so
    only flags actually given override the file. Flags are parsed as text where a type is not plain;
    `validate` coerces and range-checks every value whatever its source."""
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        name = f.metadata["group"]
        group = groups.setdefault(name, parser.add_argument_group(name))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        bounds = ", ".join(
            f"{'>=' if k == 'ge' else '>' if k == 'gt' else '<=' if k == 'le' else '<'} {f.metadata[k]}"
            for k in ("ge", "gt", "le", "lt")
            if k in f.metadata
        )
        said = "(default:" in f.metadata["help"]  # the help text states the default in its own words
        shown = [] if said else [f"default: {default!r}"]
        shown += [bounds] if bounds else []
        help_text = f"{f.metadata['help']} ({'; '.join(shown)})" if shown else f.metadata["help"]
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind in (list[str], list[float]):
            group.add_argument(
                flag,
                nargs="+",
                default=argparse.SUPPRESS,
                help=help_text,
                choices=f.metadata.get("choices"),
                type=str if kind == list[str] else float,
            )
        else:
            group.add_argument(
                flag, type=kind, default=argparse.SUPPRESS, help=help_text, choices=f.metadata.get("choices")
            )


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """defaults < --config file < flags, validated."""
    values = asdict(base or TrainConfig())
    if getattr(args, "config", None):
        values.update(load_file(args.config))
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    return TrainConfig(**_coerced(values)).validate()
