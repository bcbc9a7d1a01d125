"""Tiny models vLLM's CPU build accepts (head_dim 64), built from a config and saved locally."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "b", "c", "d", "e", "f"]  # a small vocabulary: every conditional is seen many times
PAD, EOS = 0, 1


def build_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over WORDS (pad 0, EOS 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def save_small_vocab_model(path: Path, *, seed: int = 0, init: float = 0.25) -> Path:
    """A one-layer Llama over 8 tokens, head_dim 64, weights drawn wide (`init`) so the next-token
    distributions are far from uniform and differ between contexts; saved with its tokenizer."""
    from tests.integrations.tiny import build_model

    model = build_model(
        seed,
        family="llama",
        vocab_size=len(WORDS) + 2,
        hidden_size=128,
        key_value_heads=2,
        head_dim=64,
        max_positions=256,
        init=init,
    )
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path
