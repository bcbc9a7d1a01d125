"""The prefix tree as a PNG (matplotlib), for papers and notes.

The same collapsed tree and layout as the HTML page: one column per visible level, one row per
leaf, node colour V(s) on the group's reward range, branch nodes ringed, `n` and V under each
node, each collapsed run of tokens written on its edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .credit import group_title

BRANCH = "#e08214"


def _columns(nodes: list[dict[str, Any]]) -> list[float]:
    """x of each level, in character widths: each column as wide as its longest edge label."""
    levels = max(n["level"] for n in nodes) + 1
    width = [0.0] * levels
    for n in nodes:
        width[n["level"]] = max(width[n["level"]], len(n["label"]) + 5.0, 13.0)
    xs = [0.0]
    for level in range(1, levels):
        xs.append(xs[-1] + width[level])
    return xs


def _node_text(view: dict[str, Any], node: dict[str, Any], leaf: bool) -> str:
    stat = f"n={node['count']} V={node['value_exact']}"
    if not leaf:
        return stat
    who = ",".join(f"y{k + 1}" for k in node["ends"])
    rewards = "/".join(f"{r:.6g}" for r in dict.fromkeys(view["rewards"][k] for k in node["ends"]))
    return f"{who}  R={rewards}  {stat}"


def draw_tree_png(view: dict[str, Any], path: str | Path, *, dpi: int = 160) -> Path:
    """Write the group's tree to `path` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    nodes = view["nodes"]
    xs = _columns(nodes)
    rows = max(n["row"] for n in nodes) + 1
    has_kids = {n["parent"] for n in nodes}
    lo, hi = min(view["rewards"]), max(view["rewards"])
    mid = (lo + hi) / 2
    norm = TwoSlopeNorm(vcenter=mid, vmin=min(lo, mid - 1e-9), vmax=max(hi, mid + 1e-9))
    cmap = plt.get_cmap("RdBu")
    char = 0.085  # inches per character of 9 pt monospace, roughly
    fig_w = max(4.0, (xs[-1] + 30) * char)
    fig_h = max(1.6, 0.62 * rows + 0.9)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    for n in nodes:
        x, y = xs[n["level"]], -n["row"]
        if n["parent"] is not None:
            p = nodes[n["parent"]]
            px, py = xs[p["level"]], -p["row"]
            xm = px + 1.2
            ax.plot([px, xm, xm, x], [py, py, y, y], color="#8c959f", lw=1.1, zorder=1)
            ax.text(
                xm + 1.0, y + 0.12, n["label"], family="monospace", fontsize=9, va="bottom", ha="left", parse_math=False
            )  # token text is text: '$x$' must not become mathtext
        ax.scatter(
            [x],
            [y],
            s=110 if n["branch"] else 70,
            c=[cmap(norm(n["value"]))],
            edgecolors=BRANCH if n["branch"] else "#57606a",
            linewidths=2.4 if n["branch"] else 0.8,
            zorder=3,
        )
        leaf = n["id"] not in has_kids
        text = _node_text(view, n, leaf)
        if leaf:
            ax.text(x + 1.2, y, text, fontsize=8, va="center", ha="left", color="#444c56", parse_math=False)
        else:
            # Under the incoming edge, clear of the outgoing ones (they leave to the right).
            ax.text(x + 0.5, y - 0.2, text, fontsize=7.5, va="top", ha="right", color="#444c56", parse_math=False)
    ax.set_xlim(-9, xs[-1] + 30)
    ax.set_ylim(-(rows - 1) - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(
        f"TEMPO prefix tree, {group_title(view)} (G={view['size']}; ringed = branch node)",
        fontsize=10,
        loc="left",
        parse_math=False,
    )
    path = Path(path)
    # "tight" grows the canvas to every label and the title, so nothing is clipped at the edges.
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path
