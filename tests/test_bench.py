"""The benchmark's inputs and baselines compute TEMPO too (timings live in benchmarks/, not here)."""

from __future__ import annotations

import torch

import tempo_rl
from tempo_rl.benchmarks.bench_advantage import KINDS, Shape, make_batch
from tempo_rl.benchmarks.loop_tensor import loop_tensor_advantages


def test_loop_tensor_baseline_equals_reference():
    for kind in KINDS:
        inputs = make_batch(Shape(24, 4, 40, kind), device="cpu", seed=3)
        ref = tempo_rl.tempo_advantages(**inputs, backend="reference")
        torch.testing.assert_close(loop_tensor_advantages(**inputs), ref, rtol=1e-6, atol=1e-6)


def test_bench_data_shapes():
    stats = {
        k: tempo_rl.tree_stats(
            *(make_batch(Shape(32, 8, 64, k), device="cpu")[n] for n in ("responses", "response_mask", "group_ids"))
        )
        for k in KINDS
    }
    assert stats["identical"].n_branch_tokens == 0
    assert stats["distinct"].mean_first_branch_depth == 0
    assert stats["branching"].mean_first_branch_depth > 0
