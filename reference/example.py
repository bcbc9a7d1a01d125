"""The worked example of proofs_notes/worked-example.md, printed from the reference itself.

`python -m tempo_rl example` (and `make demo`) prints this; a test checks that the markdown
holds exactly this output, so the note cannot drift from the code.
"""

from __future__ import annotations

from fractions import Fraction

from .advantage import GroupMoments, grpo_advantages, tempo_advantages
from .stats import group_tree_stats
from .trie import Node, PrefixTree

VOCAB = {"</s>": 0, "so": 1, "x": 2, "=": 3, "5": 4, "6": 5, "y": 6}
WORDS = {v: k for k, v in VOCAB.items()}

# One prompt ("so ... = 5" is right), four sampled responses, binary verifiable rewards.
RESPONSES = [
    ("so x = 5 </s>", 1.0),
    ("so x = 6 </s>", 0.0),
    ("so y = 5 </s>", 1.0),
    ("so </s>", 0.0),
]


def example_group() -> tuple[list[list[int]], list[float]]:
    """Token ids and rewards of the example group."""
    return [[VOCAB[w] for w in text.split()] for text, _ in RESPONSES], [r for _, r in RESPONSES]


def _q(x: Fraction) -> str:
    return f"{x.numerator}" if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _node_label(token: str, node: Node) -> str:
    mark = f"  <- branch ({node.n_continuations} ways)" if node.is_branch else ""
    return f"{token}  [n={node.count}, V={_q(node.value)}]{mark}"


def _push_children(stack: list, node: Node, indent: str) -> None:
    kids = sorted(node.children.items())
    for j, (token, child) in reversed(list(enumerate(kids))):  # reversed: pop in token order
        stack.append((child, token, indent, j == len(kids) - 1))


def draw_tree(tree: PrefixTree) -> list[str]:
    """ASCII drawing of the tree, one node a line, children in token order (iterative preorder)."""
    lines = [_node_label("(root)", tree.root)]
    stack: list = []
    _push_children(stack, tree.root, "")
    while stack:
        node, token, indent, last = stack.pop()
        lines.append(indent + ("`- " if last else "|- ") + _node_label(WORDS[token], node))
        _push_children(stack, node, indent + ("   " if last else "|  "))
    return lines


def render() -> str:
    """The whole worked example as text."""
    sequences, rewards = example_group()
    tree = PrefixTree(sequences, rewards)
    moments = GroupMoments.of(tree.rewards)
    ids = [0] * len(sequences)
    tempo = tempo_advantages(sequences, rewards, ids)
    grpo = grpo_advantages(sequences, rewards, ids)
    stats = group_tree_stats(tree)
    out = [
        "TEMPO worked example: one group of G = 4 responses",
        "",
        *(f"  y{k + 1} = {text:<16} R = {r:g}" for k, (text, r) in enumerate(RESPONSES)),
        "",
        f"mu = {_q(moments.mean)}, sigma (unbiased) = sqrt({_q(moments.var)}) = {moments.std:.6f}, eps = 1e-6",
        "",
        "Prefix tree (n = members, V = mean reward of the members):",
        *("  " + line for line in draw_tree(tree)),
        "",
        f"Tree: {stats.n_nodes} nodes, {stats.n_branch_nodes} branch nodes, "
        f"{stats.n_branch_tokens} of {stats.n_tokens} tokens are branch tokens, "
        f"first branch at depth {stats.first_branch_depth}.",
        "",
        "Per token: TD = V(child) - V(parent); A_grpo = (R - mu)/(sigma + eps); A_tempo = (R - mu + TD)/(sigma + eps)",
    ]
    header = (
        f"  {'resp':<4} {'t':>2} {'token':<5} {'V(parent)':>9} {'V(child)':>9} {'TD':>6} {'A_grpo':>9} {'A_tempo':>9}"
    )
    out.append(header)
    for k, seq in enumerate(sequences):
        path = tree.path(k)
        for t, token in enumerate(seq):
            parent, child = path[t], path[t + 1]
            td = child.value - parent.value
            out.append(
                f"  {'y' + str(k + 1):<4} {t:>2} {WORDS[token]:<5} {_q(parent.value):>9} {_q(child.value):>9}"
                f" {_q(td):>6} {grpo[k][t]:>9.4f} {tempo[k][t]:>9.4f}"
            )
    out += [
        "",
        "Non-branch tokens have TD = 0 exactly, so A_tempo equals A_grpo bitwise there. A branch",
        "token can also have TD = 0 (y1's 'x': 'so x' is worth what 'so' is). TEMPO moves the credit",
        "of y1 and y2 onto the one token that decides them ('5' vs '6'), and that of y3 and y4 onto",
        "the token where they leave the shared 'so'.",
    ]
    return "\n".join(out) + "\n"
