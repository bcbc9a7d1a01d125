"""The embedded default policy: a character tokenizer and a tiny Llama-style model, warmed up.

Everything is built locally (no hub access) and saved with `save_pretrained`, so the trainer loads
it through `from_pretrained(path)` exactly as it loads a real model. The supervised warm-up is
short and on imperfect demonstrations (a fraction have one wrong digit in the working), so RL
starts from a policy that knows the format and is right about half of the time.
"""

from __future__ import annotations

import math
import random
import string
import time
from pathlib import Path

import torch

from .data import add_solution

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Characters enough for arithmetic, \boxed{...}, and short words; anything else maps to <unk>.
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/=.,;:()[]{}\\$?!'\"_\n"


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast`: one token per character, decode concatenates."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def build_model(vocab_size: int, *, hidden: int = 96, layers: int = 2, heads: int = 4, seed: int = 0):
    """A tiny LlamaForCausalLM from a config (random init, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _noisy_solution(a: int, b: int, rng: random.Random, noise: float) -> str:
    """The worked response, with probability `noise` one digit of the working perturbed by +-1 and
    everything after it computed from the wrong value (a consistent but wrong chain)."""
    if rng.random() >= noise:
        return add_solution(a, b)
    ones_err = rng.choice([-1, 1]) if rng.random() < 0.5 else 0
    tens_err = 0 if ones_err else rng.choice([-1, 1])
    ones = max(0, a % 10 + b % 10 + ones_err)
    carry = ones // 10
    tens = max(0, a // 10 + b // 10 + carry + tens_err)
    tens_expr = f"{a // 10}+{b // 10}+{carry}" if carry else f"{a // 10}+{b // 10}"
    return f"{a % 10}+{b % 10}={ones},{tens_expr}={tens};{tens * 10 + ones % 10}"


def warmup_batch(tokenizer, n: int, rng: random.Random, noise: float):
    """(input_ids, labels, attention_mask) of n demonstrations; loss only on response tokens."""
    rows, labels = [], []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompt = tokenizer(f"{a}+{b}=")["input_ids"]
        response = tokenizer(_noisy_solution(a, b, rng, noise))["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    width = max(map(len, rows))
    ids = torch.full((n, width), tokenizer.pad_token_id)
    lab = torch.full((n, width), -100)
    att = torch.zeros((n, width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(l)], att[i, : len(r)] = torch.tensor(r), torch.tensor(l), 1
    return ids, lab, att


def warm_up(model, tokenizer, *, steps: int, batch: int = 64, lr: float = 3e-3, noise: float = 0.5,
            seed: int = 0, log_every: int = 100) -> None:
    """Supervised next-token training on noisy demonstrations, cosine decay after a short warm-up."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        ids, lab, att = warmup_batch(tokenizer, batch, rng, noise)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log_every and (step + 1) % log_every == 0:
            print(f"warm-up step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()


def make_base_model(path: str | Path, *, warmup_steps: int = 600, noise: float = 0.5, seed: int = 0,
                    hidden: int = 96, layers: int = 2) -> Path:
    """Build, warm up and `save_pretrained` the demo policy at `path` (skipped if already there)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), hidden=hidden, layers=layers, seed=seed)
    warm_up(model, tokenizer, steps=warmup_steps, noise=noise, seed=seed)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)
    return path
