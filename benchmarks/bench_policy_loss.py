"""`tempo-rl bench --op policy_loss`: peak memory and time of the policy loss's forward + backward,
full-logits reference vs the chunked torch path, on CPU.

Shape (the issue's): B x T = 4096 tokens (4 x 1024), H = 1024, V = 151,936 (Qwen3's vocabulary),
float32, KL on, token-mean. Each method runs in its own subprocess, so peak memory is the
process's own high-water mark: the peak resident set size (ru_maxrss) over the first forward +
backward minus the resident size just before it, with the inputs (hidden, weight, advantages...)
already allocated and touched. Both methods must produce d weight (V x H float32, 0.62 GB at
this shape), which the peak includes. Time: median wall time of `--repeats` forward + backward
runs after that first one. Results go to <out>/policy_loss_cpu.{md,json} (default: the
current directory).

The full-size reference holds several (N, V) float32 tensors (~2.5 GB each): the parent checks
MemAvailable before starting it and refuses below `--min-free-gib`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tempo_rl.cli import UsageError

from .limits import check_fits, int_at_least, mem_available_gib

METHODS = ("torch", "reference")  # the chunked path first: the reference's big allocation runs last
PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- one method, in a subprocess
def make_inputs(tokens: int, hidden: int, vocab: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Loss inputs at (B, T) = (4, tokens / 4): ragged mask, ratios around the clip range."""
    g = torch.Generator().manual_seed(seed)
    b, t = 4, tokens // 4
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    return {
        "hidden": torch.randn(b, t, hidden, generator=g).requires_grad_(True),
        "weight": (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True),
        "targets": torch.randint(0, vocab, (b, t), generator=g),
        "old_logp": -12.0 + 0.3 * torch.randn(b, t, generator=g),
        "advantages": torch.randn(b, t, generator=g),
        "mask": torch.arange(t)[None, :] < lengths[:, None],
        "ref_logp": -12.0 + 0.3 * torch.randn(b, t, generator=g),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(method: str, tokens: int, hidden: int, vocab: int, repeats: int) -> dict:
    """Peak memory of the first forward + backward and the median time of the next `repeats`."""
    from tempo_rl.policy_loss import fused_policy_loss

    x = make_inputs(tokens, hidden, vocab)

    def step() -> float:
        x["hidden"].grad = x["weight"].grad = None
        start = time.perf_counter()
        loss, _ = fused_policy_loss(
            x["hidden"],
            x["weight"],
            x["targets"],
            x["old_logp"],
            x["advantages"],
            x["mask"],
            ref_logp=x["ref_logp"],
            kl_coef=0.05,
            backend=method,
        )
        loss.backward()
        return time.perf_counter() - start

    before = _rss_bytes()
    first = step()
    peak = _peak_rss_bytes() - before
    times = [step() for _ in range(repeats)]
    grad_sum = float(x["weight"].grad.double().abs().sum())
    return {
        "method": method,
        "peak_bytes": peak,
        "first_s": first,
        "median_s": statistics.median(times),
        "times_s": times,
        "grad_weight_abs_sum": grad_sum,
    }


# ----------------------------------------------------------------------------- the parent


def run_method(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tempo_rl.benchmarks.bench_policy_loss",
        "--worker",
        method,
        "--tokens",
        str(args.tokens),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--repeats",
        str(args.repeats),
    ]
    env = {**os.environ}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # one line: the worker's last, its exception
        last = ([line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"])[-1]
        raise SystemExit(f"tempo-rl bench: error: the {method} worker failed: {last.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(["tempo-rl", *sys.argv[1:]]),
        "load_average_before": list(os.getloadavg()),
        "shape": {
            "B": 4,
            "T": args.tokens // 4,
            "H": args.hidden,
            "V": args.vocab,
            "dtype": "float32",
            "kl": True,
            "aggregation": "token-mean",
        },
    }


def markdown(rows: list[dict], env: dict) -> str:
    ref = next((r for r in rows if r["method"] == "reference"), None)
    lines = [
        "# Policy loss, forward + backward, CPU",
        "",
        f"{env['date']}, {env['cpu']}, {env['threads']} thread(s), torch {env['torch']}; load average before "
        f"{', '.join(f'{v:.2f}' for v in env['load_average_before'])}, after "
        f"{', '.join(f'{v:.2f}' for v in env['load_average_after'])}.",
        "",
        f"Shape: B x T = {env['shape']['B']} x {env['shape']['T']}, H = {env['shape']['H']}, V = {env['shape']['V']}, "
        "float32, k3 KL on, token-mean. Command: `" + env["command"] + "`.",
        "",
        "Peak = peak RSS of the method's own process over the first forward + backward, minus its RSS just "
        "before (inputs allocated); includes d weight. Time = median of the later runs.",
        "",
        "| method | peak memory (GiB) | vs reference | median time (s) | vs reference | first run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_bytes'] / ref['peak_bytes']:.1%}" if ref else "-"
        tim = f"{r['median_s'] / ref['median_s']:.2f}x" if ref else "-"
        lines.append(
            f"| {r['method']} | {r['peak_bytes'] / 2**30:.2f} | {mem} | {r['median_s']:.2f} | {tim} | "
            f"{r['first_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    """Options of `--op policy_loss` (added to `tempo-rl bench`'s parser)."""
    parser.add_argument("--tokens", type=int_at_least(4), default=4096, help="policy_loss: B x T tokens (B = 4)")
    parser.add_argument("--hidden", type=int_at_least(1), default=1024, help="policy_loss: H")
    parser.add_argument("--vocab", type=int_at_least(1), default=151_936, help="policy_loss: V (default: Qwen3's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="policy_loss: comma-separated, run in order")
    parser.add_argument(
        "--min-free-gib",
        type=float,
        default=14.0,
        help="policy_loss: refuse to start the reference with less MemAvailable (GiB)",
    )


def need_bytes(method: str, tokens: int, hidden: int, vocab: int) -> int:
    """About what one method holds at its peak: hidden, weight and their gradients, and for the
    reference a few (N, V) float32 tensors (the chunked path holds one chunk of them)."""
    inputs = 4 * 2 * (tokens * hidden + vocab * hidden)
    return inputs + (4 * 4 * tokens * vocab if method == "reference" else 0)


def usage_error(args: argparse.Namespace) -> str | None:
    """Why these flags cannot run (one line), or None: checked before any worker starts."""
    if args.device != "cpu":
        return "--op policy_loss: only --device cpu is measured here"
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        return f"--methods: unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})"
    return None


def run(args: argparse.Namespace) -> int:
    problem = usage_error(args)
    if problem:
        raise UsageError(problem)
    methods = args.methods.split(",")
    for method in methods:
        check_fits(f"--op policy_loss ({method})", need_bytes(method, args.tokens, args.hidden, args.vocab))
    out = Path(args.out) if args.out else Path.cwd()
    env = environment(args)
    rows = []
    for method in methods:
        if method == "reference" and mem_available_gib() < args.min_free_gib:
            raise UsageError(
                f"reference: MemAvailable {mem_available_gib():.1f} GiB < --min-free-gib "
                f"{args.min_free_gib}; not started"
            )
        rows.append(run_method(method, args))
        print(
            f"{method:>9}: peak {rows[-1]['peak_bytes'] / 2**30:.2f} GiB, median {rows[-1]['median_s']:.2f} s",
            flush=True,
        )
    env["load_average_after"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy_loss_cpu.md").write_text(markdown(rows, env))
    (out / "policy_loss_cpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print(markdown(rows, env))
    print(f"wrote {out}/policy_loss_cpu.{{md,json}}")
    return 0


def _worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=METHODS, required=True)
    for name in ("tokens", "hidden", "vocab", "repeats"):
        p.add_argument(f"--{name}", type=int, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    print(json.dumps(worker(a.worker, a.tokens, a.hidden, a.vocab, a.repeats)))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
