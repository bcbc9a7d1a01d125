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


def test_plot_has_one_colour_per_backend_a_legend_and_axis_units():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_rl.benchmarks.bench_advantage import BASELINES, Row, figure

    backends = (*BASELINES, "reference", "torch")
    rows = [
        Row(b, k, batch, 8, 64, 1.0 + i, 1.0, 1.0, 1.0, 1.0)
        for i, b in enumerate(backends)
        for k in KINDS
        for batch in (16, 32)
    ]
    fig = figure(rows, "title")
    try:
        ax = fig.axes[0]
        colour = {}
        for line in ax.get_lines():
            colour.setdefault(line.get_label().split(" (")[0], set()).add(matplotlib.colors.to_hex(line.get_color()))
        assert set(colour) == set(backends) and all(len(c) == 1 for c in colour.values())  # one colour per backend
        assert len(set().union(*colour.values())) == len(backends)  # ... and no two backends share one
        assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == len(backends) * len(KINDS)
        assert "(padded tokens)" in ax.get_xlabel() and "(ms)" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_tree_forward_plot_has_distinct_colours_a_legend_and_axis_units():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_rl.benchmarks.bench_tree_forward import figure

    rows = [
        {"unique_fraction": f, "tree_over_rows": 1.2 * f, "tree_over_padded": f, "cpu_tree_over_rows": 1.1 * f}
        for f in (0.3, 0.6, 1.0)
    ]
    fig = figure(rows)
    try:
        ax = fig.axes[0]
        lines = ax.get_lines()
        assert len({matplotlib.colors.to_hex(line.get_color()) for line in lines}) == len(lines)
        assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == len(lines)
        assert "(trie nodes / row tokens)" in ax.get_xlabel() and "(tree ms / other ms)" in ax.get_ylabel()
    finally:
        plt.close(fig)
