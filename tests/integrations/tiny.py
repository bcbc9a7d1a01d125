"""A tiny random causal LM and a word-level tokenizer, built locally (no hub downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "b", "c", "d"]  # few words: sampled completions share prefixes, so trees branch late
PAD, EOS = 0, 1


def build_tokenizer(path: Path):
    """A word-level tokenizer saved with save_pretrained and loaded back from `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build_model(
    seed: int = 0,
    *,
    family: str = "qwen2",
    vocab_size: int = len(WORDS) + 2,
    hidden_size: int = 16,
    key_value_heads: int = 1,
    head_dim: int | None = None,
    max_positions: int = 64,
    init: float | None = None,
):
    """A one-layer causal LM with random weights (seed), two attention heads; by default a Qwen2 over
    the tokenizer's vocabulary. `family="llama"` for engines that expect a Llama; `head_dim` 64 for
    vLLM's CPU build; `init` the initializer range (wide draws give peaked next-token distributions)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    config_class, model_class = classes[family]
    extra = {} if head_dim is None else {"head_dim": head_dim}
    if init is not None:
        extra["initializer_range"] = init
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=key_value_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
        **extra,
    )
    model = model_class(config)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model


def save_model(path: Path, seed: int = 0) -> str:
    """`build_model` saved with save_pretrained; trainers that load a reference copy need a path."""
    build_model(seed).save_pretrained(path)
    return str(path)


def prompts_dataset(n: int = 6):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) for i in range(n)]})


def reward_a(completion_ids, **kwargs) -> list[float]:
    """Count of word "a" in the completion."""
    return [float(sum(1 for t in ids if t == 2)) for ids in completion_ids]


def reward_short(completion_ids, **kwargs) -> list[float]:
    """Shorter is better."""
    return [-float(len(ids)) for ids in completion_ids]


REWARD_FUNCS = [reward_a, reward_short]
REWARD_WEIGHTS = [1.0, 0.25]


def expected_rewards(completion_ids: list[list[int]]) -> torch.Tensor:
    """The weighted reward TRL sums (float32, same operation order as GRPOTrainer)."""
    per_func = torch.tensor([f(completion_ids=completion_ids) for f in REWARD_FUNCS], dtype=torch.float32).T
    return (per_func * torch.tensor(REWARD_WEIGHTS, dtype=torch.float32)[None, :]).nansum(dim=1)


def trl_config(output_dir: Path, *, group: int, per_device_batch: int, **overrides):
    """The TempoGRPOConfig every TRL test starts from: 2 short CPU steps, no saving or reporting."""
    from tempo_rl.integrations.trl import TempoGRPOConfig

    options = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device_batch,
        num_generations=group,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        reward_weights=REWARD_WEIGHTS,
    )
    return TempoGRPOConfig(**{**options, **overrides})
