"""`tempo-rl bench --op tree_forward`: forward + backward of the policy's log-probs on the prefix tree
(`tempo_rl.tree_logprobs`) against the same batch row by row, at several unique-token fractions.

The batch (the default shape): 2 prompts x 8 completions, prompts of ~100 tokens, completions of
128 to 256 tokens, drawn so that the trie's nodes are a chosen fraction of the rows' tokens
(`synthetic_batch`: the rows of a group share a prompt prefix, then completions fork from earlier
ones at random depths; one sharing knob, set by bisection). Model: a 4-layer Qwen2 from a config
(hidden 256, 4 heads, 2 key/value heads, vocabulary 4096), float32, random weights.

Three methods, each the log-probs of every completion token then `backward()` of their weighted sum:
- `tree`: `tree_logprobs` on the packed trie;
- `rows`: each row alone, unpadded (the cost floor of any per-row path);
- `padded`: the whole batch in one forward, prompts left-padded and completions right-padded (what
  trainers run today).
Times are medians of `--repeats` runs taken in turn (tree, rows, padded, tree, ...), so a drifting
machine shifts all three alike; the ratios tree/rows and tree/padded are what to read. Each run is
timed twice: wall clock, and the CPU time of the calling thread (with one torch thread every
forward and backward op runs on it), which other processes on a shared machine do not inflate. Results go to
<out>/tree_forward_<device>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from tempo_rl import extras
from tempo_rl.cli import UsageError

from .limits import check_fits, int_at_least

FRACTIONS = (0.3, 0.45, 0.6, 0.9, 1.0)
METHODS = ("tree", "rows", "padded")


def synthetic_batch(
    sharing: float, *, prompts: int, group: int, prompt_len: int, max_completion: int, vocab: int, seed: int
) -> dict[str, torch.Tensor]:
    """One batch of prompts x group rows. sharing in [0, 2]: up to 1 the rows of a group share the first
    sharing x prompt_len prompt tokens and nothing else; above 1 they share the whole prompt and each
    completion after the first copies an earlier one up to a depth q (q + (1 - q) u) x its length,
    q = sharing - 1 and u uniform in [0, 1]. Prompts are left-padded, completions right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows_p, rows_c = [], []
    for _ in range(prompts):
        base = torch.randint(3, vocab, (prompt_len,), generator=g)
        shared = round(min(sharing, 1.0) * prompt_len)
        comps: list[torch.Tensor] = []
        for j in range(group):
            p = torch.cat([base[:shared], torch.randint(3, vocab, (prompt_len - shared,), generator=g)])
            n = int(torch.randint(max_completion // 2, max_completion + 1, (1,), generator=g))
            c = torch.randint(3, vocab, (n,), generator=g)
            if sharing > 1 and j:
                src = comps[int(torch.randint(0, j, (1,), generator=g))]
                q = sharing - 1  # 0: no completion shared; 1: every completion copies its source whole
                d = int(min(n, len(src)) * q * (q + (1 - q) * float(torch.rand((), generator=g))))
                c[:d] = src[:d]
            comps.append(c)
            rows_p.append(p)
        rows_c.extend(comps)
    b, t = len(rows_c), max(len(c) for c in rows_c)
    completion_ids = torch.zeros(b, t, dtype=torch.int64)
    completion_mask = torch.zeros(b, t, dtype=torch.int64)
    for i, c in enumerate(rows_c):
        completion_ids[i, : len(c)] = c
        completion_mask[i, : len(c)] = 1
    return {
        "prompt_ids": torch.stack(rows_p),
        "prompt_mask": torch.ones(b, prompt_len, dtype=torch.int64),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }


def unique_fraction(batch: dict[str, torch.Tensor]) -> float:
    """Trie nodes / row tokens."""
    from tempo_rl.fast.tree_forward_torch import pack

    p = pack(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    return p.num_nodes / int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())


def batch_at(fraction: float, **shape) -> tuple[dict[str, torch.Tensor], float]:
    """The batch whose unique fraction is nearest `fraction` (bisection on the sharing knob)."""
    lo, hi = 0.0, 2.0
    best = synthetic_batch(0.0, **shape)
    best_f = unique_fraction(best)
    for _ in range(24):
        mid = (lo + hi) / 2
        batch = synthetic_batch(mid, **shape)
        f = unique_fraction(batch)
        if abs(f - fraction) < abs(best_f - fraction):
            best, best_f = batch, f
        lo, hi = (mid, hi) if f > fraction else (lo, mid)
    return best, best_f


def build_model(layers: int, hidden: int, vocab: int, max_len: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_len,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(config)


def row_logprobs(model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each row alone, unpadded: log-probs of its completion tokens (logits only where they are read)."""
    out = []
    for pi, pm, ci, cm in zip(
        batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
    ):
        n = int(cm.sum())
        ids = torch.cat([pi[pm.bool()], ci[:n]])[None]
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits[0, :-1]  # (n, V)
        out.append(torch.log_softmax(logits.float(), -1).gather(1, ci[:n, None])[:, 0])
    return out


def padded_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The whole batch in one forward: (B, T) log-probs of the completion tokens."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    t = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False, logits_to_keep=t + 1).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, batch["completion_ids"][..., None])[..., 0]
    return logp * batch["completion_mask"]


def step(method: str, model, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, calling thread's CPU seconds) for one forward + backward of sum(weights * logp)."""
    from tempo_rl import tree_logprobs

    model.zero_grad(set_to_none=True)
    start, start_cpu = time.perf_counter(), time.thread_time()
    if method == "tree":
        logp = tree_logprobs(
            model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]
        )
        loss = (weights * logp).sum()
    elif method == "rows":
        loss = sum((w[: len(lp)] * lp).sum() for w, lp in zip(weights, row_logprobs(model, batch)))
    else:
        loss = (weights * padded_logprobs(model, batch)).sum()
    loss.backward()
    return time.perf_counter() - start, time.thread_time() - start_cpu


def measure(args: argparse.Namespace) -> tuple[list[dict], dict]:
    shape = dict(
        prompts=args.tree_prompts,
        group=args.tree_group,
        prompt_len=args.tree_prompt_len,
        max_completion=args.tree_completion,
        vocab=args.tree_vocab,
        seed=0,
    )
    model = build_model(
        args.tree_layers, args.tree_hidden, args.tree_vocab, args.tree_prompt_len + args.tree_completion + 1
    )
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()),
        "shape": shape | {"layers": args.tree_layers, "hidden": args.tree_hidden},
    }
    rows = []
    for target in args.fractions:
        batch, fraction = batch_at(target, **shape)
        weights = torch.randn(batch["completion_ids"].shape, generator=torch.Generator().manual_seed(1))
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        for m in METHODS:  # warm-up
            step(m, model, batch, weights)
        for _ in range(args.repeats):
            for m in METHODS:
                wall, used = step(m, model, batch, weights)
                times[m].append(wall)
                cpu[m].append(used)
        med = {m: statistics.median(v) for m, v in times.items()}
        med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
        row = {
            "target_fraction": target,
            "unique_fraction": fraction,
            "row_tokens": int(batch["prompt_mask"].sum() + batch["completion_mask"].sum()),
            **{f"{m}_ms": 1e3 * med[m] for m in METHODS},
            "tree_over_rows": med["tree"] / med["rows"],
            "tree_over_padded": med["tree"] / med["padded"],
            **{f"{m}_cpu_ms": 1e3 * med_cpu[m] for m in METHODS},
            "cpu_tree_over_rows": med_cpu["tree"] / med_cpu["rows"],
            "cpu_tree_over_padded": med_cpu["tree"] / med_cpu["padded"],
        }
        rows.append(row)
        print(
            f"unique {fraction:.3f}: tree {row['tree_ms']:.0f} ms, rows {row['rows_ms']:.0f} ms, padded "
            f"{row['padded_ms']:.0f} ms; tree/rows {row['tree_over_rows']:.2f} (CPU time {row['cpu_tree_over_rows']:.2f}), "
            f"tree/padded {row['tree_over_padded']:.2f} (CPU time {row['cpu_tree_over_padded']:.2f})",
            flush=True,
        )
    env["load_average_after"] = list(os.getloadavg())
    return rows, env


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# tree_forward: log-probs forward + backward on the prefix tree vs row by row",
        "",
        f"{env['date']}, {env['device']}, torch {env['torch']}, {env['threads']} thread(s), load average "
        f"{env['load_average_before'][0]:.2f} before / {env['load_average_after'][0]:.2f} after. Shape: {env['shape']}.",
        "",
        "Wall-clock medians, and the calling thread's CPU time (what other processes on a shared machine do "
        "not inflate) in the last two columns.",
        "",
        "| unique fraction | row tokens | tree ms | rows ms | padded ms | tree / rows | tree / padded "
        "| tree / rows (CPU time) | tree / padded (CPU time) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['unique_fraction']:.3f} | {r['row_tokens']} | {r['tree_ms']:.0f} | {r['rows_ms']:.0f} | "
            f"{r['padded_ms']:.0f} | {r['tree_over_rows']:.2f} | {r['tree_over_padded']:.2f} | "
            f"{r['cpu_tree_over_rows']:.2f} | {r['cpu_tree_over_padded']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(rows: list[dict]):
    """Time ratios against the unique fraction, one colour per comparison, with the floor."""
    import matplotlib.pyplot as plt

    x = [r["unique_fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["tree_over_rows"] for r in rows], "o-", color="tab:blue", label="tree / rows (unpadded)")
    ax.plot(x, [r["tree_over_padded"] for r in rows], "s-", color="tab:orange", label="tree / padded batch")
    ax.plot(x, [r["cpu_tree_over_rows"] for r in rows], "^--", color="tab:green", label="tree / rows, thread CPU time")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="floor: the unique fraction")
    ax.set_xlabel("unique fraction (trie nodes / row tokens)")
    ax.set_ylabel("time ratio, forward + backward (tree ms / other ms)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, max(1.2, *(r["tree_over_padded"] for r in rows)) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def parse_fractions(text: str) -> tuple[float, ...]:
    """`--fractions 0.3,0.6`: comma-separated numbers in (0, 1]."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(0 < f <= 1 for f in values):
        raise argparse.ArgumentTypeError(f"each must lie in (0, 1], got {text!r}")
    return values


def add_arguments(parser) -> None:
    """Options of `--op tree_forward` (added to `tempo-rl bench`'s parser)."""
    parser.add_argument(
        "--fractions",
        type=parse_fractions,
        default=FRACTIONS,
        help="tree_forward: unique-token fractions to measure, comma-separated (default: 0.3,0.45,0.6,0.9,1.0)",
    )
    size = int_at_least(1)
    parser.add_argument("--tree-prompts", type=size, default=2, help="tree_forward: prompts per batch")
    parser.add_argument("--tree-group", type=size, default=8, help="tree_forward: completions per prompt")
    parser.add_argument("--tree-prompt-len", type=size, default=100, help="tree_forward: prompt tokens")
    parser.add_argument("--tree-completion", type=int_at_least(2), default=256, help="tree_forward: longest completion")
    parser.add_argument("--tree-layers", type=size, default=4, help="tree_forward: model layers")
    parser.add_argument(
        "--tree-hidden",
        type=int_at_least(4),
        default=256,
        help="tree_forward: model hidden size (a multiple of 4, the heads)",
    )
    parser.add_argument("--tree-vocab", type=int_at_least(4), default=4096, help="tree_forward: model vocabulary")


def need_bytes(args: argparse.Namespace) -> int:
    """About what the padded method holds at its peak: the model and its gradients, and per layer
    the activations of every row (a few hidden-size tensors and the attention scores) plus the logits."""
    h, layers, v = args.tree_hidden, args.tree_layers, args.tree_vocab
    params = 2 * v * h + layers * (4 * h * h + 3 * h * h * 11 // 4)
    rows, t = args.tree_prompts * args.tree_group, args.tree_prompt_len + args.tree_completion
    activations = rows * layers * (16 * t * h + 4 * t * t) + 2 * rows * t * v
    return 4 * (2 * params + activations)


def run(args: argparse.Namespace) -> int:
    if args.device != "cpu":
        raise UsageError("--op tree_forward: only --device cpu is measured here")
    if args.tree_hidden % 4:
        raise UsageError(f"--tree-hidden must be a multiple of 4 (the model's heads), got {args.tree_hidden}")
    check_fits("--op tree_forward", need_bytes(args))
    extras.require(("transformers", "matplotlib"), "--op tree_forward", "train")  # the model, the plot
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, env = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "tree_forward_cpu"
    (out / f"{name}.md").write_text(markdown(rows, env))
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    plot(rows, out / f"{name}.png")
    print(markdown(rows, env))
    print(f"wrote {out}/{name}.{{md,json,png}}")
    return 0
