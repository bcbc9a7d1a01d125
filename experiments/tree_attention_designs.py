"""Three ways to run the tree attention on CPU, measured on the attention alone (forward + backward)
at a tree-rollout shape of the tree_forward bench: the design note behind `fast/tree_forward_torch
.tree_attention` (proofs_notes/tree-forward.md, "Cost").

- `blocks`: every block of 64 queries gathers its row's path up to its last query and runs SDPA
  with a boolean mask (the implementation before this one): key rows ~ L^2 / 128 per row.
- `path_mask`: one gathered path per segment (ancestors and the segment), SDPA with an explicit
  bottom-right causal boolean mask (segment x path); torch's `is_causal` is top-left aligned when
  queries and keys differ in length, so the mask has to be built.
- `split_lse`: `tree_attention`: per segment the ancestors without a mask and the segment itself
  causal (square), both through torch's CPU flash kernel, merged by log-sum-exp, with a backward
  that recomputes the ancestors' gathers.

Reported: the calling thread's CPU time (median of --repeats) and the bytes autograd keeps for the
backward (`saved_tensors_hooks`), which is what grows with the length.

    python -m experiments.tree_attention_designs --completion 2048 --leaves 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tempo_rl.benchmarks.bench_tree_forward import forked_batch, length_shapes
from tempo_rl.fast.tree_forward_torch import Packing, attention_plan, pack, tree_attention


def blocks(q, k, v, p: Packing, scale: float, block: int = 64):
    """Per block of queries, its row's path up to the block's last query, masked by depth."""
    own, lcp, start = (p.length - p.lcp).tolist(), p.lcp.tolist(), p.start.tolist()
    sorted_nodes = p.row_nodes[p.order]
    out = q.new_zeros(q.shape[1], q.shape[0], v.shape[-1])
    outs, slots = [], []
    for i, n in enumerate(own):
        for q0 in range(0, n, block):
            m = min(block, n - q0)
            keys = sorted_nodes[i, : lcp[i] + q0 + m]
            depth = torch.arange(lcp[i] + q0, lcp[i] + q0 + m)
            mask = torch.arange(keys.numel())[None, :] <= depth[:, None]  # (m, K)
            rows = slice(start[i] + q0, start[i] + q0 + m)
            o = torch.nn.functional.scaled_dot_product_attention(
                q[None, :, rows], k[None][:, :, keys], v[None][:, :, keys], attn_mask=mask, scale=scale, enable_gqa=True
            )
            outs.append(o[0].transpose(0, 1))
            slots.append(rows)
    return out.index_put((torch.cat([torch.arange(s.start, s.stop) for s in slots]),), torch.cat(outs))


def path_mask(q, k, v, p: Packing, scale: float):
    """Per segment, its whole path as keys with a bottom-right causal mask."""
    plan = attention_plan(p)
    outs, idx = [], []
    for s0, n, anc in zip(plan.segment_start, plan.segment_length, plan.ancestors):
        keys = torch.cat([anc, torch.arange(s0, s0 + n)])
        m = anc.numel()
        mask = torch.arange(m + n)[None, :] <= (m + torch.arange(n))[:, None]  # (n, m + n) bottom-right
        o = torch.nn.functional.scaled_dot_product_attention(
            q[None, :, s0 : s0 + n],
            k[None][:, :, keys],
            v[None][:, :, keys],
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        outs.append(o[0].transpose(0, 1))
        idx.append(torch.arange(s0, s0 + n))
    out = q.new_zeros(q.shape[1], q.shape[0], v.shape[-1])
    return out.index_put((torch.cat(idx),), torch.cat(outs))


def split_lse(q, k, v, p: Packing, scale: float):
    return tree_attention(q, k, v, attention_plan(p), scale=scale)


DESIGNS = {"blocks": blocks, "path_mask": path_mask, "split_lse": split_lse}


def measure(design, q, k, v, p, repeats: int) -> tuple[float, int]:
    saved = 0

    def keep(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    times = []
    for r in range(repeats):
        saved = 0
        start = time.thread_time()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = design(q, k, v, p, 0.125)
        out.sum().backward()
        times.append(time.thread_time() - start)
        q.grad = k.grad = v.grad = None
    return statistics.median(times), saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completion", type=int, default=2048)
    parser.add_argument("--leaves", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = [s for s in length_shapes((args.completion,), (args.leaves,), kinds=("tree",))][0]
    p = pack(*forked_batch(shape, vocab=1000).values())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h, p.num_nodes, 64, generator=g, requires_grad=True) for h in (4, 2, 2))
    ref = split_lse(q, k, v, p, 0.125).detach()
    print(f"{shape['name']}: {p.num_nodes} nodes; attention alone, heads 4 (2 key/value), head size 64, float32")
    print("| design | thread CPU s | saved for backward (MiB) | max diff to split_lse |")
    print("| --- | --- | --- | --- |")
    for name, design in DESIGNS.items():
        diff = (design(q, k, v, p, 0.125).detach() - ref).abs().max().item()
        cpu, saved = measure(design, q, k, v, p, args.repeats)
        print(f"| {name} | {cpu:.2f} | {saved / 2**20:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
