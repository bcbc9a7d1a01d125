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


def test_tree_forward_floor_at_the_users_lengths():
    """The FLOP floor of the bench's shapes, against the values worked out by hand for the default
    model (issue 28's table: 0.67 and 0.74 for tree rollouts of 8 leaves at completions 2k and 4k,
    0.52 for independent samples, 1.00 with nothing shared); a tree's unique fraction from its forks."""
    from tempo_rl.benchmarks.bench_tree_forward import build_model, flops, forked_batch, length_shapes

    config = build_model(4, 256, 1000, 2).config
    shapes = length_shapes((2048, 4096), (8,))
    got = [flops(config, forked_batch(s, vocab=1000)) for s in shapes]
    assert [s["kind"] for s in shapes] == ["independent samples", "nothing shared", "tree rollouts", "tree rollouts"]
    assert [round(f["tree"] / f["rows"], 2) for f in got] == [0.52, 1.0, 0.67, 0.74]
    # prompt 512 + 2 x 512 + 4 x 512 + 8 x 1024 nodes over 8 rows of 2560 tokens
    assert got[2]["unique_fraction"] == (512 + 2 * 512 + 4 * 512 + 8 * 1024) / (8 * 2560)


def _length_rows():
    def method(cpu: float, gib: float) -> dict:
        return {"wall_s": cpu, "cpu_s": cpu, "rss_before": 2**29, "peak": gib * 2**30}

    rows = []
    for c in (2048, 4096):
        for levels in (3, 4):
            shape = {"kind": "tree rollouts", "name": f"t{c}", "completion": c, "levels": [(0, 2)] * levels}
            padded = {"over": 6 * 2**30} if c == 4096 else method(3.0, 2.0)
            row = {"shape": shape, "floor": 0.6, "unique_fraction": 0.5}
            row |= {"tree": method(1.0, 0.5 + c / 2048), "rows": method(2.0, 1.5), "padded": padded}
            rows.append(row)
    return rows


def test_tree_forward_length_plot_has_distinct_colours_a_legend_and_axis_units():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_rl.benchmarks.bench_tree_forward import length_figure

    fig = length_figure(_length_rows())
    try:
        for ax in fig.axes:
            labels = [line.get_label() for line in ax.get_lines()]
            assert len(labels) == 6 and len(set(labels)) == 6  # 3 methods x 2 leaf counts
            assert len({matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()}) == 3
            assert ax.get_legend() is not None and "(tokens)" in ax.get_xlabel()
        assert "(s)" in fig.axes[0].get_ylabel() and "(GiB)" in fig.axes[1].get_ylabel()
    finally:
        plt.close(fig)


def test_tree_forward_length_table_marks_targets_and_stopped_methods():
    from tempo_rl.benchmarks.bench_tree_forward import _verdict, lengths_markdown

    rows = [r | _verdict(r) for r in _length_rows()]
    assert rows[0]["ratio"] == 0.5 and rows[0]["bound"] == 0.75 and rows[0]["time_ok"] and rows[0]["memory_ok"]
    env = {
        "date": "d",
        "device": "x",
        "torch": "t",
        "threads": 1,
        "load_average_before": [1.0],
        "load_average_after": [1.0],
        "model": "m",
        "repeats": 1,
        "divisor": 1,
        "command": "c",
    }
    text = lengths_markdown(rows, env)
    assert "> 6.0 (stopped)" in text and "CPU, no GPU measured" in text
    assert "8 leaves 2.00x" in text and "16 leaves 2.00x" in text  # the tree's added memory, 2k to 4k
