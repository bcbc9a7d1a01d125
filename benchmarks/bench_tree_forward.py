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

The lengths users train with (`measure_lengths`; `--tree-suite sweep|lengths|both`): tree rollouts (one
prompt of 512 tokens, 8 or 16 leaves, completions of 1k-8k tokens forking at 0, 1/4, 1/2 (and 3/4)
of their length), independent samples (a 2k prompt shared by 8 completions of 1k) and nothing shared
(8 prompts of 256, completions of 1k). Each method runs in its own process (`python -m
tempo_rl.benchmarks.bench_tree_forward`), so its peak resident memory (ru_maxrss) is its own; the
parent watches it and stops a method past `--tree-max-gib`, recorded as such. Beside the times, the
FLOP floor: the tree's FLOPs (dense layers per unique token, attention per (query, visible key)
pair, the LM head per scored node) over the rows' (`flops`). `--quick` divides every length by 64.
With the default model the lengths up to 4k take about 30 minutes on one thread of a quiet CPU;
results go to <out>/tree_forward_<device>_lengths.{md,json,png} (`_quick` with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
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


def plot(make, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = make(rows)
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


# ----------------------------------------------------------------------------- the users' lengths
KINDS = ("tree", "independent", "unshared")
LEAVES = (8, 16)
COMPLETIONS = (1024, 2048, 4096)
QUICK_DIVISOR = 64


def length_shapes(
    completions: tuple[int, ...], leaves: tuple[int, ...], divisor: int = 1, kinds: tuple[str, ...] = KINDS
) -> list[dict]:
    """The lengths users train with (module docstring), every length divided by `divisor`. A shape is
    prompts x prompt_len tokens, then completions of `completion` tokens that fork at `levels`
    ((depth, branching) pairs, outermost first); leaves = the product of the branchings."""
    c = 1024 // divisor
    shapes = []
    if "independent" in kinds:
        shapes.append(_shape("independent samples", 1, 2048 // divisor, c, [(0, 8)]))
    if "unshared" in kinds:
        shapes.append(_shape("nothing shared", 8, 256 // divisor, c, [(0, 1)]))
    for n in leaves if "tree" in kinds else ():
        for c in completions:
            c //= divisor
            depths = [round(i * c / 4) for i in range(int(math.log2(n)))]  # binary forks at 0, c/4, c/2 (, 3c/4)
            shapes.append(_shape("tree rollouts", 1, 512 // divisor, c, [(d, 2) for d in depths]))
    return shapes


def _shape(kind: str, prompts: int, prompt_len: int, completion: int, levels: list[tuple[int, int]]) -> dict:
    leaves = math.prod(b for _, b in levels) * prompts
    name = f"{kind}: {prompts} x {prompt_len} prompt, {leaves} rows, completions {completion}"
    if kind == "tree rollouts":
        name += " forking at " + ", ".join(str(d) for d, _ in levels)
    return dict(kind=kind, name=name, prompts=prompts, prompt_len=prompt_len, completion=completion, levels=levels)


def forked_batch(shape: dict, *, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The batch of a `length_shapes` shape: each prompt's rows share the prompt; the completion of
    leaf j shares its segment between two fork depths with every leaf of the same subtree."""
    g = torch.Generator().manual_seed(seed)
    levels, c = shape["levels"], shape["completion"]
    bounds = [d for d, _ in levels] + [c]
    branch = [b for _, b in levels]
    leaves = math.prod(branch)
    prompts, completions = [], []
    for _ in range(shape["prompts"]):
        prompt = torch.randint(3, vocab, (shape["prompt_len"],), generator=g)
        pieces: dict[tuple[int, int], torch.Tensor] = {}
        for j in range(leaves):
            parts, subtree = [], j
            for level in reversed(range(len(levels))):  # the leaf's subtree id at each level
                key = (level, subtree)
                if key not in pieces:
                    pieces[key] = torch.randint(3, vocab, (bounds[level + 1] - bounds[level],), generator=g)
                parts.append(pieces[key])
                subtree //= branch[level]
            completions.append(torch.cat(parts[::-1]))
            prompts.append(prompt)
    b = len(completions)
    return {
        "prompt_ids": torch.stack(prompts),
        "prompt_mask": torch.ones(b, shape["prompt_len"], dtype=torch.int64),
        "completion_ids": torch.stack(completions),
        "completion_mask": torch.ones(b, c, dtype=torch.int64),
    }


def flops(config, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Forward + backward FLOPs (3x the forward's multiply-adds x 2) of the tree and of the rows: the
    dense layers once per token (tree: per unique token), attention once per (query, visible key)
    pair (tree: each node and its ancestors), the LM head once per scored token (tree: per node)."""
    from tempo_rl.fast.tree_forward_torch import pack

    h, inter, v = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = h // heads
    layers = config.num_hidden_layers
    dense = layers * 2 * (2 * h * heads * d + 2 * h * kv * d + 3 * h * inter)  # q, o, k, v, MLP
    pair = layers * 2 * 2 * heads * d  # q.k and p.v
    head = 2 * h * v
    p = pack(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    lengths = (batch["prompt_mask"].sum(1) + batch["completion_mask"].sum(1)).double()
    scored_rows = float(batch["completion_mask"].sum())
    scored_nodes = float(torch.unique(p.completion_node[p.completion_node >= 0]).numel())
    tree = dense * p.num_nodes + pair * float((p.depth + 1).sum()) + head * scored_nodes
    rows = dense * float(lengths.sum()) + pair * float((lengths * (lengths + 1) / 2).sum()) + head * scored_rows
    return {"tree": 3 * tree, "rows": 3 * rows, "unique_fraction": p.num_nodes / float(lengths.sum())}


def child_main(spec: dict) -> dict:
    """One method at one shape in this process: `repeats` timed forward + backward steps, and the
    process's peak resident memory (ru_maxrss) and its resident memory before the first step."""
    torch.set_num_threads(spec["threads"])
    shape = spec["shape"]
    model = build_model(spec["layers"], spec["hidden"], spec["vocab"], shape["prompt_len"] + shape["completion"] + 1)
    batch = forked_batch(shape, vocab=spec["vocab"])
    weights = torch.randn(batch["completion_ids"].shape, generator=torch.Generator().manual_seed(1))
    before = _rss_bytes()
    walls, cpus = [], []
    for _ in range(spec["repeats"]):
        wall, used = step(spec["method"], model, batch, weights)
        walls.append(wall)
        cpus.append(used)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "rss_before": before, "peak": peak}


def _rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process now (VmRSS), 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(spec: dict, max_bytes: float) -> dict:
    """`child_main` in a fresh process; stopped (and recorded so) when its memory passes max_bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tempo_rl.benchmarks.bench_tree_forward", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None:
        if _rss_bytes(proc.pid) > max_bytes:
            proc.kill()
            proc.wait()
            return {"over": max_bytes}
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise RuntimeError(f"--op tree_forward: the {spec['method']} process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def measure_lengths(args: argparse.Namespace, write) -> list[dict]:
    """Every `length_shapes` shape, each method in its own process; `write(rows)` after each shape."""
    divisor = QUICK_DIVISOR if args.quick else 1
    rows = []
    for shape in length_shapes(args.tree_completions, args.tree_leaves, divisor, args.tree_kinds):
        model = build_model(args.tree_layers, args.tree_hidden, args.tree_vocab, 2)
        work = flops(model.config, forked_batch(shape, vocab=args.tree_vocab))
        spec = dict(
            shape=shape,
            layers=args.tree_layers,
            hidden=args.tree_hidden,
            vocab=args.tree_vocab,
            threads=args.threads or 1,
            repeats=args.tree_length_repeats,
        )
        row = {"shape": shape, "floor": work["tree"] / work["rows"], **work}
        for m in METHODS:
            row[m] = run_child(spec | {"method": m}, args.tree_max_gib * 2**30)
        rows.append(row | _verdict(row))
        print(_length_line(rows[-1]), flush=True)
        write(rows)
    return rows


def _verdict(row: dict) -> dict:
    """The issue's targets at one shape: time (thread CPU time) within the floor's bound of the faster
    other method, peak memory added by the step within the padded batch's."""
    out: dict = {}
    done = {m: r for m, r in ((m, row[m]) for m in METHODS) if "over" not in r}
    if "tree" in done and len(done) > 1:
        best = min(done[m]["cpu_s"] for m in done if m != "tree")
        shared = row["unique_fraction"] < 0.999
        bound = max(1.25 * row["floor"], row["floor"] + 0.1) if shared else 1.1
        out["ratio"] = done["tree"]["cpu_s"] / best
        out["bound"] = bound
        out["time_ok"] = out["ratio"] <= bound
    if "tree" in done and "padded" in done:
        out["memory_ok"] = _added(done["tree"]) <= _added(done["padded"])
    elif "tree" in done and "padded" in row:
        out["memory_ok"] = True  # the padded batch went past --tree-max-gib, the tree did not
    return out


def _added(r: dict) -> float:
    return max(r["peak"] - r["rss_before"], 0)


def _gib(r: dict) -> str:
    if "over" in r:
        return f"> {r['over'] / 2**30:.1f} (stopped)"
    return f"{r['peak'] / 2**30:.2f} ({_added(r) / 2**30:.2f})"


def _secs(r: dict, key: str) -> str:
    return "-" if "over" in r else f"{r[key]:.2f}"


def _length_line(r: dict) -> str:
    cells = ", ".join(f"{m} {_secs(r[m], 'cpu_s')} s / {_gib(r[m])} GiB" for m in METHODS)
    ratio = f"tree / best {r['ratio']:.2f} (bound {r['bound']:.2f})" if "ratio" in r else "no ratio"
    return f"{r['shape']['name']}: unique {r['unique_fraction']:.2f}, floor {r['floor']:.2f}; {cells}; {ratio}"


def growth(rows: list[dict], low: int, high: int) -> list[tuple[str, float]]:
    """Peak memory added by the tree's step at completions `high` over `low`, per tree-rollout shape."""
    by = {
        (len(r["shape"]["levels"]), r["shape"]["completion"]): r for r in rows if r["shape"]["kind"] == "tree rollouts"
    }
    out = []
    for (levels, c), r in sorted(by.items()):
        if c == high and (levels, low) in by and "over" not in r["tree"] and "over" not in by[levels, low]["tree"]:
            out.append((f"{2**levels} leaves", _added(r["tree"]) / _added(by[levels, low]["tree"])))
    return out


def lengths_markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# tree_forward at the lengths users train with: time, FLOP floor and peak memory",
        "",
        f"{env['date']}, {env['device']}, torch {env['torch']}, CPU, no GPU measured, {env['threads']} thread(s), "
        f"load average {env['load_average_before'][0]:.2f} before / {env.get('load_average_after', [math.nan])[0]:.2f} "
        f"after. Model: {env['model']}. Forward + backward of every completion token's log-prob; each method in "
        f"its own process, {env['repeats']} timed step(s) each (median), no warm-up step.",
        "",
        f"    {env['command']}",
        "",
        "Times are the calling thread's CPU time (other processes on a shared machine do not inflate it "
        "the way they inflate wall time; wall time is in the json). Memory: the process's peak resident "
        "memory, and in brackets what the step added to what the process held before it (model, batch, "
        "imports). floor: the tree's FLOPs over the rows'. bound: max(1.25 floor, floor + 0.1) with sharing, "
        "1.1 without; target: tree / min(rows, padded) <= bound.",
        "",
        "| shape | unique fraction | floor | tree s | rows s | padded s | tree / min(rows, padded) | bound | time target "
        "| peak GiB: tree | rows | padded | memory <= padded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = {m: _secs(r[m], "cpu_s") for m in METHODS}
        ratio = (
            f"{r['ratio']:.2f} | {r['bound']:.2f} | {'met' if r['time_ok'] else 'missed'}"
            if "ratio" in r
            else "- | - | -"
        )
        mem = "-" if "memory_ok" not in r else ("met" if r["memory_ok"] else "missed")
        lines.append(
            f"| {r['shape']['name']} | {r['unique_fraction']:.2f} | {r['floor']:.2f} | {t['tree']} | {t['rows']} | "
            f"{t['padded']} | {ratio} | {_gib(r['tree'])} | {_gib(r['rows'])} | {_gib(r['padded'])} | {mem} |"
        )
    g = growth(rows, 2048 // env["divisor"], 4096 // env["divisor"])
    if g:
        lines += [
            "",
            "Growth of the tree's added peak memory from completions 2k to 4k (target <= 2.3x): "
            + ", ".join(f"{name} {x:.2f}x" for name, x in g)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def length_figure(rows: list[dict]):
    """Thread CPU time and peak memory of each method against the completion length, tree rollouts."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"tree": "tab:blue", "rows": "tab:green", "padded": "tab:orange"}
    styles = {3: "o-", 4: "s--"}
    for levels in sorted({len(r["shape"]["levels"]) for r in rows if r["shape"]["kind"] == "tree rollouts"}):
        sel = [r for r in rows if r["shape"]["kind"] == "tree rollouts" and len(r["shape"]["levels"]) == levels]
        for m in METHODS:
            pts = [(r["shape"]["completion"], r[m]) for r in sel if "over" not in r[m]]
            label = f"{m}, {2**levels} leaves"
            x = [c for c, _ in pts]
            ax_t.plot(x, [p["cpu_s"] for _, p in pts], styles.get(levels, "^:"), color=colours[m], label=label)
            ax_m.plot(x, [p["peak"] / 2**30 for _, p in pts], styles.get(levels, "^:"), color=colours[m], label=label)
    ax_t.set_ylabel("forward + backward, thread CPU time (s)")
    ax_m.set_ylabel("peak resident memory (GiB)")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("completion length (tokens)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # the figure is redrawn after each shape: none may be a tree yet
            ax.legend(fontsize=7)
    ax_t.set_title("time, tree rollouts (prompt 512)")
    ax_m.set_title("peak memory, tree rollouts (prompt 512)")
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


def parse_kinds(text: str) -> tuple[str, ...]:
    """`--tree-kinds tree,unshared`: a comma-separated subset of KINDS."""
    values = tuple(text.split(","))
    if not set(values) <= set(KINDS):
        raise argparse.ArgumentTypeError(f"expected a subset of {','.join(KINDS)}, got {text!r}")
    return values


def parse_sizes(text: str) -> tuple[int, ...]:
    """`--tree-completions 1024,2048`: comma-separated positive whole numbers."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"each must be positive, got {text!r}")
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
    parser.add_argument("--tree-vocab", type=int_at_least(4), default=1000, help="tree_forward: model vocabulary")
    parser.add_argument(
        "--tree-completions",
        type=parse_sizes,
        default=COMPLETIONS,
        help="tree_forward: completion lengths of the tree-rollout shapes, comma-separated (default: 1024,2048,4096; "
        "8192 needs about 8 GiB for the padded batch)",
    )
    parser.add_argument(
        "--tree-leaves",
        type=parse_sizes,
        default=LEAVES,
        help="tree_forward: leaves of the tree-rollout shapes, powers of two up to 16 (default: 8,16)",
    )
    parser.add_argument(
        "--tree-length-repeats", type=size, default=1, help="tree_forward: timed steps per method at the long lengths"
    )
    parser.add_argument(
        "--tree-max-gib",
        type=float,
        default=8.0,
        help="tree_forward: a method's process past this resident memory is stopped and recorded so (default: 8)",
    )
    parser.add_argument(
        "--tree-suite",
        choices=("sweep", "lengths", "both"),
        default="both",
        help="tree_forward: the small shape's unique-fraction sweep, the users' lengths, or both (default)",
    )
    parser.add_argument(
        "--tree-kinds",
        type=parse_kinds,
        default=KINDS,
        help="tree_forward: which length shapes, comma-separated among tree,independent,unshared (default: all)",
    )


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
    if not set(args.tree_leaves) <= {2, 4, 8, 16}:
        raise UsageError(f"--tree-leaves: each must be 2, 4, 8 or 16, got {args.tree_leaves}")
    check_fits("--op tree_forward", need_bytes(args))
    extras.require(("transformers", "matplotlib"), "--op tree_forward", "train")  # the model, the plot
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tree_suite != "lengths":
        run_sweep(args, out)
    if args.tree_suite != "sweep":
        run_lengths(args, out)
    return 0


def run_sweep(args: argparse.Namespace, out: Path) -> None:
    """The small shape at several unique fractions, all methods in this process, taken in turn."""
    rows, env = measure(args)
    name = "tree_forward_cpu"
    (out / f"{name}.md").write_text(markdown(rows, env))
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    plot(figure, rows, out / f"{name}.png")
    print(markdown(rows, env))
    print(f"wrote {out}/{name}.{{md,json,png}}")


def run_lengths(args: argparse.Namespace, out: Path) -> None:
    """The users' lengths: table, json and plot rewritten after each shape (a long run keeps its rows)."""
    name = "tree_forward_cpu_lengths" + ("_quick" if args.quick else "")
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads or 1,
        "load_average_before": list(os.getloadavg()),
        "model": f"Qwen2, {args.tree_layers} layers, hidden {args.tree_hidden}, 4 heads, 2 key/value heads, "
        f"vocabulary {args.tree_vocab}, float32",
        "repeats": args.tree_length_repeats,
        "divisor": QUICK_DIVISOR if args.quick else 1,
        "command": f"tempo-rl bench --op tree_forward --tree-suite lengths --threads {args.threads or 1} "
        f"--tree-completions {','.join(map(str, args.tree_completions))} "
        f"--tree-leaves {','.join(map(str, args.tree_leaves))} --tree-kinds {','.join(args.tree_kinds)} "
        f"--tree-max-gib {args.tree_max_gib:g}" + (" --quick" if args.quick else ""),
    }

    def write(rows: list[dict]) -> None:
        env["load_average_after"] = list(os.getloadavg())
        (out / f"{name}.md").write_text(lengths_markdown(rows, env))
        (out / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
        plot(length_figure, rows, out / f"{name}.png")

    rows = measure_lengths(args, write)
    print(lengths_markdown(rows, env))
    print(f"wrote {out}/{name}.{{md,json,png}}")


if __name__ == "__main__":  # one method at one shape, in its own process (`run_child`)
    print(json.dumps(child_main(json.loads(sys.argv[1]))))
