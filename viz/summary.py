"""The plain-text summary printed to the terminal: per group, the collapsed tree with n and V at
each node, and the tokens where TEMPO moves the most credit away from GRPO."""

from __future__ import annotations

from typing import Any

from .credit import group_title


def _tree_lines(view: dict[str, Any]) -> list[str]:
    nodes = view["nodes"]
    kids: dict[int, list[int]] = {n["id"]: [] for n in nodes}
    for n in nodes:
        if n["parent"] is not None:
            kids[n["parent"]].append(n["id"])
    lines = []
    stack: list[tuple[int, str, str]] = [(0, "", "")]
    while stack:  # iterative preorder
        index, lead, indent = stack.pop()
        n = nodes[index]
        name = "(root)" if n["parent"] is None else repr(n["label"])
        mark = f"  <- branch ({n['ways']} ways)" if n["branch"] else ""
        ends = "  ends: " + ",".join(f"y{k + 1}" for k in n["ends"]) if n["ends"] else ""
        lines.append(f"{lead}{name}  [n={n['count']}, V={n['value_exact']}]{mark}{ends}")
        children = kids[index]
        for j in reversed(range(len(children))):
            last = j == len(children) - 1
            stack.append((children[j], indent + ("`- " if last else "|- "), indent + ("   " if last else "|  ")))
    return lines


def _top_tokens(view: dict[str, Any], k: int) -> list[str]:
    moves = [
        (abs(r["tempo"][t] - r["grpo"][t]), r, t)
        for r in view["responses"]
        for t in range(len(r["tokens"]))
        if r["tempo"][t] != r["grpo"][t]
    ]
    moves.sort(key=lambda m: -m[0])
    out = []
    for _, r, t in moves[:k]:
        out.append(
            f"    y{r['index'] + 1} t={t:<3} {r['tokens'][t]!r:<12} TD={r['td_exact'][t]:>7}"
            f"  A_tempo={r['tempo'][t]:+.4f}  A_grpo={r['grpo'][t]:+.4f}"
        )
    return out


def _std(std: float | None) -> str:
    return "past float64" if std is None else f"{std:.4f}"


def summarize(views: list[dict[str, Any]], *, top: int = 5) -> str:
    out = []
    for view in views:
        tokens = sum(len(r["tokens"]) for r in view["responses"])
        branch = sum(sum(r["branch"]) for r in view["responses"])
        rewards = " ".join(f"{r:g}" for r in view["rewards"])
        out += [
            f"{group_title(view)}: G={view['size']}, rewards [{rewards}], mean {view['mean']:.4f}, std {_std(view['std'])}",
            f"  {branch} of {tokens} tokens are branch tokens; {sum(n['branch'] for n in view['nodes'])} branch nodes",
            *("  " + line for line in _tree_lines(view)),
        ]
        moved = _top_tokens(view, top)
        if moved:
            out += ["  tokens where TEMPO differs most from GRPO:", *moved]
        out.append("")
    return "\n".join(out)
