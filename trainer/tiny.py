"""The embedded default policy: a character tokenizer and a tiny Llama-style model, warmed up.

Everything is built locally (no hub access) and saved with `save_pretrained`, so the trainer loads
it through `from_pretrained(path)` exactly as it loads a real model. The supervised warm-up is
short and on imperfect demonstrations: half of them forget the carry (a systematic error, as a
student makes) and a few slip one digit of the ones sum, so RL starts from a policy that knows the
format and is right a bit under half of the time; the reward then has something to teach. For the
`chain` task (`task="chain"`) each of its steps forgets the carry with probability 0.3, so about
half of the warmed-up policy's chains are right; it is stored with a `tiny_task.txt` marker. For
`luck` the demonstrations write a fair coin after "coin toss:" and forget the carry half of the
time, with no slips: the carry is the one decision left to learn.
"""

from __future__ import annotations

import math
import random
import string
import time
from pathlib import Path

import torch

from .data import LUCK_COIN, LUCK_PREAMBLE, carry_pair, chain_solution, chain_terms

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


def build_model(
    vocab_size: int, *, hidden: int = 96, layers: int = 2, heads: int = 4, seed: int = 0, head_dim: int | None = None
):
    """A tiny LlamaForCausalLM from a config (random init, seeded). `head_dim` defaults to
    hidden / heads (24); vLLM's CPU attention needs 64 (trainer/vllm_rollout.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _noisy_solution(a: int, b: int, rng: random.Random, forget_carry: float, slip: float) -> str:
    """The worked response for a+b, forgetting the carry with probability `forget_carry` and
    misadding the ones column by +-1 with probability `slip`; the answer follows the working."""
    ones = a % 10 + b % 10 + (rng.choice([-1, 1]) if rng.random() < slip else 0)
    carry = ones // 10 if rng.random() >= forget_carry else 0
    tens = a // 10 + b // 10 + carry
    tens_expr = f"{a // 10}+{b // 10}+{carry}" if carry else f"{a // 10}+{b // 10}"
    return f"{a % 10}+{b % 10}={ones},{tens_expr}={tens};{tens * 10 + ones % 10}"


def _noisy_demo(task: str, rng: random.Random, forget_carry: float, slip: float) -> tuple[str, str]:
    """(prompt, response) of one noisy demonstration of a built-in task. `chain` forgets each
    step's carry independently (a chain of decisions); it has no ones-column slips."""
    if task == "chain":
        terms = chain_terms(rng)
        carries = [0 if rng.random() < forget_carry else 1 for _ in terms[1:]]
        return "+".join(map(str, terms)) + "=", chain_solution(terms, carries)
    a, b = carry_pair(rng)
    if task == "luck":  # the coin, then `add` working whose only uncertain decision is the carry
        coin = LUCK_COIN[rng.random() < 0.5]
        return f"{a}+{b}=", f"{LUCK_PREAMBLE}{coin} {_noisy_solution(a, b, rng, forget_carry, 0.0)}"
    return f"{a}+{b}=", _noisy_solution(a, b, rng, forget_carry, slip)


# Measured: 1500 warm-up steps of the default model took 2.5 minutes on one core of a 2-core machine.
WARMUP_SECONDS_PER_STEP = 0.1

# Carry-forgetting rate of the demonstrations: about half of the warmed-up policy's answers are right.
WARMUP_FORGET_CARRY = {"add": 0.5, "chain": 0.3, "luck": 0.5}


def warmup_batch(tokenizer, n: int, rng: random.Random, forget_carry: float, slip: float, task: str = "add"):
    """(input_ids, labels, attention_mask) of n demonstrations; loss only on response tokens."""
    rows, labels = [], []
    for _ in range(n):
        prompt_text, response_text = _noisy_demo(task, rng, forget_carry, slip)
        prompt = tokenizer(prompt_text)["input_ids"]
        response = tokenizer(response_text)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    width = max(map(len, rows))
    ids = torch.full((n, width), tokenizer.pad_token_id)
    lab = torch.full((n, width), -100)
    att = torch.zeros((n, width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(l)], att[i, : len(r)] = torch.tensor(r), torch.tensor(l), 1
    return ids, lab, att


def warm_up(
    model,
    tokenizer,
    *,
    steps: int,
    batch: int = 64,
    lr: float = 3e-3,
    forget_carry: float = 0.5,
    slip: float = 0.1,
    seed: int = 0,
    log_every: int = 100,
    task: str = "add",
) -> None:
    """Supervised next-token training on noisy demonstrations, cosine decay after a short warm-up
    (`steps = 0`: none; the policy stays at its random init)."""
    if steps == 0:
        model.eval()
        return
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        ids, lab, att = warmup_batch(tokenizer, batch, rng, forget_carry, slip, task)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log_every and (step + 1) % log_every == 0:
            print(
                f"warm-up step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)", flush=True
            )
    model.eval()


def make_base_model(
    path: str | Path,
    *,
    warmup_steps: int = 1500,
    seed: int = 0,
    hidden: int = 96,
    layers: int = 2,
    task: str = "add",
    head_dim: int | None = None,
) -> Path:
    """Build, warm up on `task` and `save_pretrained` the demo policy at `path` (skipped if already
    there; a policy warmed up on another task is an error, not a silent reuse)."""
    path = Path(path)
    marker = path / "tiny_task.txt"
    if (path / "config.json").is_file():
        built = marker.read_text().strip() if marker.is_file() else "add"
        if built != task:
            raise ValueError(
                f"{path} holds the tiny policy warmed up on {built!r}, not {task!r}; pass another --tiny-dir"
            )
        return path
    print(
        f"building the tiny policy in {path} (once; later runs reuse it): a {layers}-layer Llama-style model "
        f"(hidden {hidden}, character tokenizer), warmed up for {warmup_steps} supervised steps on noisy "
        f"{task!r} demonstrations; about {warmup_steps * WARMUP_SECONDS_PER_STEP / 60:.1f} minutes on a free CPU core at the default size",
        flush=True,
    )
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), hidden=hidden, layers=layers, seed=seed, head_dim=head_dim)
    warm_up(model, tokenizer, steps=warmup_steps, seed=seed, task=task, forget_carry=WARMUP_FORGET_CARRY[task])
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "tiny_task.txt").write_text(task + "\n")
    tmp.rename(path)
    return path
