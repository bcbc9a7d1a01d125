"""Tree attention (`fast/tree_attention.tree_attention_dfs`) against the same attention one row at a
time: torch SDPA, causal, on every root-to-leaf path (the rows a trainer would run).

    python -m tempo_rl.benchmarks.bench_tree_attention --out DIR      # CUDA: timings with do_bench

The tree is the shape of tree rollouts: one prompt of P tokens, then completions of C tokens that
fork in two at each of the given completion depths (forks at 0, C/4, C/2: 8 leaves). Both methods
run forward, and forward + backward of a random cotangent, on the same query, key and value
tensors: the tree over its N unique nodes, the rows over leaves x (P + C) gathered positions.
On CUDA each is timed with `triton.testing.do_bench` (median and 20/80 percentiles, ms); elsewhere
(Triton's interpreter, for the smoke test) with a plain timer, which measures nothing of interest.
Every run first checks the tree's output on each path against the rows' (the numbers compared
must be the same attention). Results: <out>/tree_attention_<device>.{json,md}. No GPU figure has
been recorded yet: this file has only run in the interpreter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from tempo_rl.fast.tree_attention import subtree_end, tree_attention_dfs
from tempo_rl.reference.tree_attention import leaf_paths, parents_from_depths


@dataclass(frozen=True)
class Shape:
    prompt: int
    completion: int
    forks: tuple[int, ...]  # completion depths where every path splits in two
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128


SHAPES = [
    Shape(512, c, (0, c // 4, c // 2)) for c in (1024, 2048, 4096, 8192)
]  # tree rollouts, 8 leaves; Qwen3-1.7B's attention heads


def rollout_depths(shape: Shape) -> list[int]:
    """Depths of the rollout tree's nodes in preorder (see the module docstring)."""
    out = list(range(shape.prompt))

    def segment(start: int, i: int) -> None:
        stop = shape.forks[i] if i < len(shape.forks) else shape.completion
        out.extend(shape.prompt + j for j in range(start, stop))
        if i < len(shape.forks):
            segment(stop, i + 1)
            segment(stop, i + 1)

    segment(0, 0)
    return out


@dataclass
class Result:
    method: str  # "tree" or "rows"
    nodes: int  # query positions computed: unique nodes, or leaves x path length
    forward_ms: float
    forward_backward_ms: float
    p20_ms: float  # forward + backward percentiles (CUDA), else the same as the median
    p80_ms: float


def _timer(device: torch.device) -> Callable[[Callable[[], object]], tuple[float, float, float]]:
    if device.type == "cuda":
        import triton

        return lambda fn: tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))  # type: ignore[return-value]

    def plain(fn: Callable[[], object], repeats: int = 3) -> tuple[float, float, float]:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        m = statistics.median(times)
        return m, m, m

    return plain


def measure(shape: Shape, *, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> list[Result]:
    """Times the tree and the rows at one shape (see the module docstring)."""
    dev = torch.device(device)
    parent = torch.tensor(parents_from_depths(rollout_depths(shape)), device=dev)
    end = subtree_end(parent)
    n = parent.numel()
    paths = torch.tensor(leaf_paths(parent.tolist()), device=dev)  # (R, L) every leaf is at full depth
    g = torch.Generator(device=dev).manual_seed(seed)
    h, hk, d = shape.heads, shape.kv_heads, shape.head_dim
    q, k, v = (torch.randn(x, n, d, generator=g, device=dev, dtype=dtype).requires_grad_() for x in (h, hk, hk))
    scale = d**-0.5

    def tree() -> torch.Tensor:
        return tree_attention_dfs(q, k, v, end, scale=scale)  # (N, H, D)

    def rows() -> torch.Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(
            q[:, paths].transpose(0, 1),
            k[:, paths].transpose(0, 1),
            v[:, paths].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=h != hk,
        )  # (R, H, L, D)
        return out

    _check_same(tree(), rows(), paths)
    timer = _timer(dev)
    results = []
    for name, fn, count in (("tree", tree, n), ("rows", rows, paths.numel())):
        cot = torch.randn_like(fn())
        fwd = timer(lambda: fn())[0]
        both = timer(lambda: torch.autograd.grad(fn(), (q, k, v), cot))
        results.append(Result(name, count, fwd, both[0], both[1], both[2]))
    return results


def _check_same(tree_out: torch.Tensor, rows_out: torch.Tensor, paths: torch.Tensor) -> None:
    """The tree's output at each path's nodes against that row's, within the dtype's rounding."""
    got = tree_out.detach()[paths].float()  # (R, L, H, D)
    want = rows_out.detach().transpose(1, 2).float()
    tol = 8 * torch.finfo(tree_out.dtype).eps * max(1.0, float(want.abs().max()))
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if err > tol:
        raise AssertionError(f"tree attention differs from the rows by {err:.3g} (> {tol:.3g})")


def write(results: dict[str, list[Result]], out: Path, device: str) -> Path:
    """<out>/tree_attention_<device>.{json,md}; returns the markdown path."""
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else device
    meta = {
        "device": name,
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"shape": s, **asdict(r)} for s, rs in results.items() for r in rs]
    (out / f"tree_attention_{device}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        f"# Tree attention vs rows ({name}, {meta['date']}, torch {meta['torch']}, triton {meta['triton']})",
        "",
        "| shape | method | query positions | forward ms | fwd+bwd ms (p20-p80) |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['shape']} | {r['method']} | {r['nodes']} | {r['forward_ms']:.3f} | "
        f"{r['forward_backward_ms']:.3f} ({r['p20_ms']:.3f}-{r['p80_ms']:.3f}) |"
        for r in rows
    ]
    md = out / f"tree_attention_{device}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the results (default: here)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_tree_attention times CUDA kernels: no CUDA device here", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    results = {}
    for s in SHAPES:
        key = f"prompt {s.prompt}, completions {s.completion}, forks {s.forks}"
        results[key] = measure(s, device="cuda", dtype=dtype)
        print(key, [asdict(r) for r in results[key]], flush=True)
    print(write(results, args.out, "cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
