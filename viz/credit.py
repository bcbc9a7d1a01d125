"""What the inspect views show, computed once: the collapsed prefix tree and per-token credit.

Nothing here re-derives TEMPO. The tree, V(s) and TD come from the reference trie
(`tempo_rl.reference.trie.PrefixTree`, exact fractions); the advantages come from the public API
(`tempo_rl.tempo_advantages` / `tempo_rl.grpo_advantages`) on the whole batch, so the page shows
exactly what a trainer calling the API would get.

A run of tokens that every member of a node continues with (no branch, no response ending) is
drawn as one edge: the visible nodes are the root, the branch nodes and the leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Hashable

import torch

import tempo_rl
from tempo_rl.reference.advantage import GroupMoments
from tempo_rl.reference.trie import Node, PrefixTree

from .rollouts import ResponseRecord, group_rollouts


@dataclass(frozen=True)
class Settings:
    """The API's hyperparameters, passed through unchanged."""

    norm_by_std: bool = True
    eps: float = 1e-6
    td_coef: float = 1.0
    backend: str = "auto"


def fraction_text(x: Fraction, *, max_chars: int = 9) -> str:
    """An exact value as a short fraction ('1/2', '-2/3') when it has one, else as a decimal of six
    significant digits: a reward of 0.8 is the binary fraction 3602879701896397/4503599627370496,
    which says nothing to a reader and overflows the layout.

    >>> fraction_text(Fraction(1, 2)), fraction_text(Fraction(0.8)), fraction_text(Fraction(-7, 3))
    ('1/2', '0.8', '-7/3')
    """
    exact = f"{x.numerator}" if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
    return exact if len(exact) <= max_chars else f"{float(x):.6g}"


def batch_advantages(rollouts: list[ResponseRecord], settings: Settings) -> tuple[list[list[float]], list[list[float]]]:
    """TEMPO and GRPO advantages of every rollout from the public API, cut to each response."""
    lengths = [len(r.ids) for r in rollouts]
    width = max(lengths, default=0)
    responses = torch.zeros((len(rollouts), width), dtype=torch.int64)  # (B, L)
    for i, r in enumerate(rollouts):
        responses[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.int64)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    # float64 rewards give float64 advantages: the page shows the API's numbers unrounded.
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)  # (B,)
    keys = list(group_rollouts(rollouts))
    group_ids = [keys.index(r.group_key) for r in rollouts]
    common = dict(norm_by_std=settings.norm_by_std, eps=settings.eps, backend=settings.backend)
    tempo = tempo_rl.tempo_advantages(responses, mask, rewards, group_ids, td_coef=settings.td_coef, **common)
    grpo = tempo_rl.grpo_advantages(responses, mask, rewards, group_ids, **common)
    return _rows(tempo.cpu(), lengths), _rows(grpo.cpu(), lengths)


def _rows(padded: torch.Tensor, lengths: list[int]) -> list[list[float]]:
    """(B, L) -> B lists, each cut to its response's n_i tokens."""
    return [padded[i, :n].tolist() for i, n in enumerate(lengths)]


def edge_label(pieces: list[str], glue: str, width: int = 28) -> str:
    """An edge's tokens as one short line: long runs keep their two ends and their length."""
    text = glue.join(pieces).replace("\n", "\u21b5").strip()
    if len(text) <= width:
        return text
    half = (width - 8) // 2
    return f"{text[:half].rstrip()} \u2026 {text[-half:].lstrip()} [{len(pieces)}]"


def _visible(node: Node) -> bool:
    return not node.children or node.is_branch


def collapse(tree: PrefixTree) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Visible nodes of `tree` (root first, depth first, children in order of first appearance)
    and, for every trie node, the visible node whose incoming edge holds it (id(node) -> index).

    Each visible node records its parent, the token ids of its incoming edge, member count,
    exact and float V, whether it branches, and which members end there. Iterative, so responses
    thousands of tokens long are fine.
    """
    nodes: list[dict[str, Any]] = []
    owner: dict[int, int] = {}
    stack: list[tuple[Node, int | None, list[int]]] = [(tree.root, None, [])]
    while stack:
        node, parent, edge = stack.pop()
        run = [node]
        while parent is not None and not _visible(run[-1]):  # follow the single continuation to the next visible node
            token, child = next(iter(run[-1].children.items()))
            edge = edge + [token]
            run.append(child)
        end = run[-1]
        index = len(nodes)
        for n in run:
            owner[id(n)] = index
        nodes.append(
            {
                "id": index,
                "parent": parent,
                "edge": edge,
                "depth": end.depth,
                "count": end.count,
                "value": float(end.value),
                "value_exact": fraction_text(end.value),
                "branch": end.is_branch,
                "ways": end.n_continuations,
                "ends": [],
            }
        )
        for token, child in reversed(list(end.children.items())):
            stack.append((child, index, [token]))
    return nodes, owner


def layout(nodes: list[dict[str, Any]]) -> None:
    """Give each visible node a column (`level`, edges from the root) and a `row`: leaves take
    consecutive rows in drawing order; a parent sits on its middle child's row (odd number of
    children) or midway between the two middle ones (even), so no edge label meets a parent."""
    children: dict[int, list[int]] = {n["id"]: [] for n in nodes}
    for n in nodes:
        if n["parent"] is not None:
            children[n["parent"]].append(n["id"])
    for n in nodes:  # parents precede children in `nodes`
        n["level"] = 0 if n["parent"] is None else nodes[n["parent"]]["level"] + 1
    next_row = 0
    for n in nodes:  # depth-first order: leaves appear top to bottom
        if not children[n["id"]]:
            n["row"] = next_row
            next_row += 1
    for n in reversed(nodes):  # children before parents
        kids = children[n["id"]]
        if kids:
            mid = len(kids) // 2
            rows = [nodes[k]["row"] for k in kids]
            n["row"] = rows[mid] if len(kids) % 2 else (rows[mid - 1] + rows[mid]) / 2


def group_view(members: list[ResponseRecord], tempo: list[list[float]], grpo: list[list[float]]) -> dict[str, Any]:
    """Everything the page, the figure and the summary show about one group (JSON-ready)."""
    tree = PrefixTree([r.ids for r in members], [r.reward for r in members])
    moments = GroupMoments.of(tree.rewards)
    std = moments.std  # inf past float64, shown as None (JSON has no inf)
    nodes, owner = collapse(tree)
    layout(nodes)
    piece_of = {t: p for r in members for t, p in zip(r.ids, r.pieces)}
    # Subword pieces carry their own spaces; whole words need one between them.
    glue = "" if any(p[:1].isspace() for p in piece_of.values()) else " "
    for n in nodes:
        n["tokens"] = [piece_of[t] for t in n["edge"]]
        n["label"] = edge_label(n["tokens"], glue)
        n["full_label"] = glue.join(n["tokens"])  # the page's tooltip when the label is cut
    responses = []
    for k, r in enumerate(members):
        path = tree.path(k)
        nodes[owner[id(path[-1])]]["ends"].append(k)
        tds = tree.td(k)
        responses.append(
            {
                "index": k,
                "line": r.line,
                "reward": r.reward,
                "text": r.text,
                "prompt": r.prompt,
                "ids": r.ids,
                "tokens": r.pieces,
                "v_parent": [float(p.value) for p in path[:-1]],
                "v_child": [float(c.value) for c in path[1:]],
                "td": [float(td) for td in tds],
                "td_exact": [fraction_text(td) for td in tds],
                "branch": tree.is_branch_token(k),
                "node": [owner[id(c)] for c in path[1:]],
                "tempo": tempo[k],
                "grpo": grpo[k],
            }
        )
    step, group_id = members[0].group_key
    return {
        "step": step,
        "group_id": group_id,
        "size": len(members),
        "mean": float(moments.mean),
        "std": std if math.isfinite(std) else None,
        "rewards": [r.reward for r in members],
        "nodes": nodes,
        "responses": responses,
    }


def build_views(rollouts: list[ResponseRecord], settings: Settings) -> list[dict[str, Any]]:
    """One view per group, groups in order of first appearance in the file."""
    tempo, grpo = batch_advantages(rollouts, settings)
    row_of = {id(r): i for i, r in enumerate(rollouts)}
    views = []
    for members in group_rollouts(rollouts).values():
        rows = [row_of[id(r)] for r in members]
        views.append(group_view(members, [tempo[i] for i in rows], [grpo[i] for i in rows]))
    return views


def group_title(view: dict[str, Any]) -> str:
    step: Hashable = view["step"]
    head = f"group {view['group_id']}"
    return head if step is None else f"step {step}, {head}"
