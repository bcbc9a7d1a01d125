"""`tempo-rl bench`: time the TEMPO advantage backends on rollout-shaped batches.

Backends: the per-token loop written the way the authors' released code works, in two forms:
on Python lists (`reference/loop.py`, plain floats; "loop") and on torch tensors, one tensor scan
per token, as it runs inside a torch trainer (`benchmarks/loop_tensor.py`; "loop-tensor"); the
exact reference trie, vectorised torch, and on CUDA
torch and Triton. Data: branching groups (each response shares a random-length prefix with the
group's first response, then diverges), and the two extremes (all responses distinct from token
0; all identical). Every timing excludes input validation, which every backend shares.

Reported: median ms (CPU: perf_counter after a warm-up; CUDA: triton.testing.do_bench, with 20/80
percentiles), tokens/s over B*L, and GB/s against the floor that any implementation must move:
token ids and the mask read once, advantages written once. Results go to
<out>/advantage_<device>[_quick][_<n>thread].{md,csv,json,png}, `--out` defaulting to the current
directory (the repository's own tables live in benchmarks/results/: `--out benchmarks/results`).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from tempo_rl import extras
from tempo_rl.cli import UsageError

from . import bench_policy_loss, bench_tree_forward
from .limits import check_fits, check_out, int_at_least

KINDS = ("branching", "distinct", "identical")
BASELINES = ("loop", "loop-tensor")  # per-token loops: timed once, at the small shape only
VOCAB = 32000
BYTES_PER_TOKEN = 64  # int64 ids in a few copies while the batch is built, mask, advantages, temporaries


@dataclass(frozen=True)
class Shape:
    batch: int  # B responses
    group: int  # G responses per prompt
    length: int  # L padded columns
    kind: str


@dataclass
class Row:
    backend: str
    kind: str
    batch: int
    group: int
    length: int
    median_ms: float
    p20_ms: float
    p80_ms: float
    tokens_per_s: float
    floor_gb_per_s: float


def make_batch(shape: Shape, *, device: str, seed: int = 0) -> dict:
    """Padded rollout-like inputs: rows of a group are consecutive, lengths in [L/2, L]."""
    g = torch.Generator().manual_seed(seed)
    n_groups, G, L = shape.batch // shape.group, shape.group, shape.length
    B = n_groups * G
    first = torch.randint(0, VOCAB, (n_groups, 1, L), generator=g)  # (n, 1, L)
    if shape.kind == "identical":
        tokens = first.expand(n_groups, G, L)
    else:
        fresh = torch.randint(0, VOCAB, (n_groups, G, L), generator=g)  # (n, G, L)
        fresh[:, 0] = first[:, 0]
        if shape.kind == "branching":  # member k follows the first response up to d_k
            diverge = torch.randint(0, L, (n_groups, G, 1), generator=g)
            diverge[:, 0] = L
            fresh = torch.where(torch.arange(L) < diverge, first, fresh)
        tokens = fresh
    responses = tokens.reshape(B, L)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    if shape.kind == "identical":
        lengths = lengths.view(n_groups, G)[:, :1].expand(n_groups, G).reshape(B)
    mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    group_ids = torch.arange(B) // G
    return {
        "responses": responses.to(device),
        "response_mask": mask.to(device),
        "rewards": rewards.to(device),
        "group_ids": group_ids.to(device),
    }


def floor_bytes(inputs: dict) -> int:
    """Token ids and mask read once, float32 advantages written once."""
    r = inputs["responses"]
    return r.numel() * (r.element_size() + inputs["response_mask"].element_size() + 4)


def _fast_fn(name: str, inputs: dict) -> Callable[[], object]:
    from tempo_rl import get_backend, validate

    b = validate(**inputs)
    fn = get_backend(name).advantages_and_stats
    return lambda: fn(
        b.responses,
        b.lengths,
        b.rewards,
        b.group_index,
        b.loss_mask,
        norm_by_std=True,
        eps=1e-6,
        td_coef=1.0,
        with_stats=False,
    )


def _python_fn(name: str, inputs: dict) -> Callable[[], object]:
    from tempo_rl.reference import loop_tempo_advantages, tempo_advantages

    lengths = inputs["response_mask"].sum(1).tolist()
    seqs = [row[:n] for row, n in zip(inputs["responses"].tolist(), lengths)]
    rewards, ids = inputs["rewards"].tolist(), inputs["group_ids"].tolist()
    if name == "loop":
        return lambda: loop_tempo_advantages(seqs, rewards, ids, exact=False)
    if name == "loop-tensor":
        from .loop_tensor import loop_tensor_advantages

        return lambda: loop_tensor_advantages(**inputs)
    return lambda: tempo_advantages(seqs, rewards, ids)


def time_cpu(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
    return statistics.median(times), q[0], q[-1]


def time_cuda(fn: Callable[[], object]) -> tuple[float, float, float]:
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def shapes_for(device: str, quick: bool) -> list[tuple[str, Shape]]:
    """(backend, shape) pairs; the Python baselines only at the small shape."""
    small = [Shape(256, 8, 512, k) for k in KINDS]
    authors = [Shape(3584, 7, 8192, k) for k in KINDS]  # 512 prompts x 7 samples, L = 8192
    grid = [Shape(b, 8, l, "branching") for b in (256, 1024, 4096) for l in (512, 2048, 8192)]
    grid += [Shape(1024, g, 2048, "branching") for g in (4, 16)]
    grid += [Shape(4096, 8, 8192, k) for k in ("distinct", "identical")]
    if device == "cpu":
        pairs = [(b, s) for s in small for b in BASELINES + ("reference", "torch")]
        if quick:
            return pairs + [("torch", authors[0])]
        return pairs + [("torch", s) for s in authors + grid]
    fast = ("torch", "triton")
    if quick:
        return [(b, s) for s in small + authors[:1] for b in fast]
    return [(b, s) for s in small + authors + grid for b in fast]


def parse_shape(text: str) -> tuple[int, int, int]:
    """`--shape BxGxL`: B responses in groups of G (G <= B), L padded tokens, each at least 1."""
    try:
        b, g, l = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxGxL, e.g. 256x8x512, got {text!r}") from None
    if min(b, g, l) < 1 or g > b:
        raise argparse.ArgumentTypeError(f"B, G and L must be at least 1 and G at most B, got {text!r}")
    return b, g, l


def backends_for(device: str) -> tuple[str, ...]:
    return BASELINES + ("reference", "torch") if device == "cpu" else ("torch", "triton")


def pairs_for(args: argparse.Namespace) -> list[tuple[str, Shape]]:
    """(backend, shape) pairs to time: every backend at each `--shape`, else the built-in grid."""
    if not args.shape:
        return shapes_for(args.device, args.quick)
    return [(b, Shape(*s, kind)) for s in args.shape for kind in KINDS for b in backends_for(args.device)]


def run_one(backend: str, shape: Shape, *, device: str, repeats: int) -> Row:
    inputs = make_batch(shape, device=device)
    slow = backend in BASELINES + ("reference",)
    fn = _python_fn(backend, inputs) if slow else _fast_fn(backend, inputs)
    if device == "cuda":
        median, p20, p80 = time_cuda(fn)
    else:
        median, p20, p80 = time_cpu(fn, 1 if slow else repeats)
    tokens = inputs["responses"].numel()
    return Row(
        backend,
        shape.kind,
        inputs["responses"].shape[0],
        shape.group,
        shape.length,
        median,
        p20,
        p80,
        tokens / (median / 1e3),
        floor_bytes(inputs) / (median / 1e3) / 1e9,
    )


def environment(device: str) -> dict:
    import numpy

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        # Timings on a shared machine depend on what else runs: record how busy it was.
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    from tempo_rl import __version__

    env["tempo_rl"] = __version__
    return env


def markdown(rows: list[Row], env: dict) -> str:
    head = (
        f"# TEMPO advantage benchmark ({env['device']})\n\n" + ", ".join(f"{k}: {v}" for k, v in env.items()) + "\n\n"
        f"Every backend was timed in one process with the same {env['threads']} torch thread(s).\n\n"
        "| backend | data | B | G | L | median ms | p20-p80 ms | tokens/s | GB/s vs floor "
        "| speed-up vs loop (lists) | speed-up vs loop (tensors) |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    base = {(r.backend, r.kind, r.batch, r.group, r.length): r.median_ms for r in rows if r.backend in BASELINES}
    lines = []
    for r in rows:
        key = (r.kind, r.batch, r.group, r.length)
        ups = [base.get((b, *key)) for b in BASELINES]
        ups = [f"{t / r.median_ms:,.3g}x" if t else "" for t in ups]
        lines.append(
            f"| {r.backend} | {r.kind} | {r.batch} | {r.group} | {r.length} | {r.median_ms:,.2f} | "
            f"{r.p20_ms:,.2f}-{r.p80_ms:,.2f} | {r.tokens_per_s:,.3g} | {r.floor_gb_per_s:.3g} | "
            f"{ups[0]} | {ups[1]} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(rows, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(rows: list[Row], title: str):
    """Median time against batch size: one colour per backend, one marker and line style per data kind."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab10").colors
    for colour, backend in zip(colours, dict.fromkeys(r.backend for r in rows)):
        for kind, marker, style in zip(KINDS, "o^s", ("-", "--", ":")):
            pts = sorted((r.batch * r.length, r.median_ms) for r in rows if r.backend == backend and r.kind == kind)
            if pts:
                ax.plot(*zip(*pts), color=colour, marker=marker, linestyle=style, label=f"{backend} ({kind})")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size B x L (padded tokens)",
        ylabel="median time per call (ms)",
        title=title,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write(rows: list[Row], env: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / name
    stem.with_suffix(".md").write_text(markdown(rows, env))
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*asdict(rows[0]), *env])
        writer.writeheader()
        writer.writerows({**asdict(r), **env} for r in rows)
    plot(rows, stem.with_suffix(".png"), f"TEMPO advantages, {env.get('gpu', env['cpu'])}")


THREADS_HELP = (
    "torch CPU threads, the same for every method timed (default 1: the steady figure on a shared machine; "
    "with one thread per core, torch's default, a busy machine makes the torch paths wait for cores other "
    "processes hold while the one-thread Python loop does not, and the comparison misleads). 0: torch's default"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: loops, reference and torch; cuda: torch and Triton (do_bench)",
    )
    parser.add_argument("--quick", action="store_true", help="the small shape and the authors' batch only")
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="BxGxL",
        help="advantage: time every backend on this shape only, B responses in groups of G, L padded tokens "
        "(repeatable), e.g. 256x8x512",
    )
    parser.add_argument("--repeats", type=int_at_least(1), default=5, help="timed runs per CPU measurement")
    parser.add_argument("--threads", type=int_at_least(0), default=1, help=THREADS_HELP)
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="directory for the results (default: the current directory)"
    )
    parser.add_argument(
        "--op",
        choices=tuple(OPS),
        default="advantage",
        help="advantage: the TEMPO advantage backends; policy_loss: fused policy loss memory and time; "
        "tree_forward: log-probs on the prefix tree vs row by row",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the whole per-step TEMPO cost at the authors' batch (benchmarks/bench_scale.py)",
    )
    bench_policy_loss.add_arguments(parser.add_argument_group("--op policy_loss"))
    bench_tree_forward.add_arguments(parser.add_argument_group("--op tree_forward"))
    from .bench_scale import add_scale_arguments

    add_scale_arguments(parser.add_argument_group("--scale"))


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here")
    threads = torch.get_num_threads()  # the ops set --threads; a caller's process gets its own back
    try:
        if args.scale:
            from .bench_scale import run as run_scale

            return run_scale(args)
        return OPS[args.op](args)
    finally:
        torch.set_num_threads(threads)


def run_advantage(args: argparse.Namespace) -> int:
    """`--op advantage`: every backend on the shapes of `pairs_for`; tables and a plot to `--out`."""
    pairs = pairs_for(args)
    if pairs:
        check_fits("--op advantage", BYTES_PER_TOKEN * max(s.batch * s.length for _, s in pairs))
    extras.require(("matplotlib",), "the benchmark's plot")  # before the timings, not after them
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.device)
    rows = []
    for backend, shape in pairs:
        row = run_one(backend, shape, device=args.device, repeats=args.repeats)
        rows.append(row)
        print(
            f"{backend:>9} {shape.kind:>9} B={row.batch:<5} G={row.group:<3} L={row.length:<5} "
            f"{row.median_ms:10.2f} ms  {row.tokens_per_s:9.3g} tok/s  {row.floor_gb_per_s:6.3g} GB/s",
            flush=True,
        )
    name = (
        f"advantage_{args.device}"
        + ("_quick" if args.quick else "")
        + (f"_{args.threads}thread" if args.threads else "")
    )
    write(rows, env, args.out, name)
    print(markdown(rows, env))
    print(f"wrote {args.out}/{name}.{{md,csv,json,png}}")
    return 0


# --op NAME runs OPS[NAME](args); `--scale` runs bench_scale.run.
OPS: dict[str, Callable[[argparse.Namespace], int]] = {
    "advantage": run_advantage,
    "policy_loss": bench_policy_loss.run,
    "tree_forward": bench_tree_forward.run,
}
