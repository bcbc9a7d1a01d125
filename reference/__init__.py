"""Exact TEMPO semantics: the pure-Python P2T trie every fast path is checked against.

Imports nothing from torch, `fast/` or `trainer/` (proofs_notes/tempo.md has the mathematics).
"""

from .advantage import GroupMoments, group_rows, grpo_advantages, td_values, tempo_advantages
from .loop import loop_tempo_advantages
from .padding import padded_tempo_advantages, response_span, response_spans
from .stats import GroupTreeStats, TreeStats, tree_stats
from .trie import Node, PrefixTree

__all__ = [
    "GroupMoments",
    "GroupTreeStats",
    "Node",
    "PrefixTree",
    "TreeStats",
    "group_rows",
    "grpo_advantages",
    "loop_tempo_advantages",
    "padded_tempo_advantages",
    "response_span",
    "response_spans",
    "td_values",
    "tempo_advantages",
    "tree_stats",
]
