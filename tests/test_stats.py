"""Tree statistics on every backend equal the reference trie's, group by group, exactly.

The fast backends compute every statistic from the lcp matrix (fast/stats_torch.py;
proofs_notes/fast-algorithm.md, "Tree statistics"); all are integers, so equality is exact.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.reference import tree_stats as ref_tree_stats

from .strategies import Case, case_from, cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = ["torch", "triton"]
EXAMPLES = {"torch": 300, "triton": 40 if DEVICE == "cpu" else 300}


def _on_device(case: Case) -> tuple:
    return case.responses.to(DEVICE), case.response_mask.to(DEVICE), case.group_ids


def _reference(case: Case) -> tempo_rl.TreeStats:
    """The trie's statistics, computed straight from the ragged lists (no tensor path)."""
    return ref_tree_stats(case.sequences, case.group_ids)


EDGE = [
    case_from([[3, 1]], [1.0], ["a"]),  # group of one
    case_from([[], [], [5]], [1.0, 0.0, 2.0], [0, 0, 0]),  # empty responses
    case_from([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [1.0, 0.0, 2.0], ["q"] * 3),  # identical: no branch
    case_from([[1], [1, 2], [1, 2, 0]], [0.0, 1.0, 3.0], [7, 7, 7]),  # ends where another continues
    case_from([[4, 5], [4, 5], [4, 6], [9]], [0.0, 1.0, 0.0, 1.0], [0, 0, 0, 0]),
    case_from([], [], []),
]


@pytest.mark.parametrize("backend", FAST)
def test_fast_tree_stats_equal_reference_per_group(backend):
    @settings(max_examples=EXAMPLES[backend])
    @given(case=cases(max_batch=16, max_len=9, max_group=8))
    def check(case):
        got = tempo_rl.tree_stats(*_on_device(case), backend=backend)
        want = _reference(case)
        assert got.groups == want.groups
        assert got.as_dict() == want.as_dict()

    for c in EDGE:
        check = example(case=c)(check)
    check()


@pytest.mark.parametrize("backend", FAST)
def test_large_groups_and_long_rows(backend):
    """Groups of up to 64 (BLOCK_G = 64) and rows longer than a column block."""
    g = torch.Generator().manual_seed(3)
    parts = []
    for size, L in ((64, 5), (7, 300), (33, 20)):
        base = torch.randint(0, 3, (1, L), generator=g).expand(size, L).clone()
        cut = torch.randint(0, L + 1, (size,), generator=g)
        noise = torch.randint(0, 3, (size, L), generator=g)
        tokens = torch.where(torch.arange(L)[None, :] >= cut[:, None], noise, base)
        lengths = torch.randint(0, L + 1, (size,), generator=g)
        parts.append(
            case_from([row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())], [0.0] * size, [L] * size, L=300)
        )
    case = Case(
        torch.cat([p.responses for p in parts]),
        torch.cat([p.response_mask for p in parts]),
        torch.cat([p.rewards for p in parts]),
        sum((p.group_ids for p in parts), []),
        None,
    )
    got = tempo_rl.tree_stats(*_on_device(case), backend=backend)
    assert got.groups == _reference(case).groups


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_one_call_gives_the_advantages_and_the_stats(backend):
    """tempo_advantages_with_stats == (tempo_advantages, tree_stats), bitwise and exactly."""

    @settings(max_examples=EXAMPLES.get(backend, 30) // 3)
    @given(case=cases(max_batch=10, max_len=6), coef=st.sampled_from([0.0, 1.0]))
    def check(case, coef):
        args = (case.responses.to(DEVICE), case.response_mask.to(DEVICE), case.rewards.to(DEVICE), case.group_ids)
        kw = dict(
            loss_mask=None if case.loss_mask is None else case.loss_mask.to(DEVICE), td_coef=coef, backend=backend
        )
        adv, stats = tempo_rl.tempo_advantages_with_stats(*args, **kw)
        assert torch.equal(adv, tempo_rl.tempo_advantages(*args, **kw))
        assert stats.groups == _reference(case).groups

    check()


def test_hand_counted_tree():
    """[[4,5],[4,5],[4,6],[9]]: root -> 4 -> {5 (two identical), 6}, root -> 9.
    Nodes: root, 4, 45, 46, 9 = 5. Branch nodes: root (4 vs 9), 4 (5 vs 6) = 2, depth sum 0 + 1.
    Branch tokens: row 0 tokens 0 and 1, row 1 the same, row 2 tokens 0 and 1, row 3 token 0 = 7."""
    case = EDGE[4]
    for backend in ["reference", *FAST]:
        s = tempo_rl.tree_stats(*_on_device(case), backend=backend).groups[0]
        assert (s.n_nodes, s.n_branch_nodes, s.branch_depth_sum, s.n_branch_tokens) == (5, 2, 1, 7)
        assert (s.first_branch_depth, s.max_depth, s.n_tokens) == (0, 2, 7)


def test_as_metrics_is_the_one_conversion():
    stats = tempo_rl.tree_stats(*_on_device(EDGE[4]))
    m = stats.as_metrics(prefix="tempo/")
    assert m == {
        "tempo/branch_token_fraction": 1.0,
        "tempo/nodes_per_group": 5.0,
        "tempo/branch_nodes_per_group": 2.0,
        "tempo/first_branch_depth": 0.0,
        "tempo/mean_branch_depth": 0.5,
        "tempo/max_depth": 2.0,
    }
    no_branch = tempo_rl.tree_stats(*_on_device(EDGE[2])).as_metrics(prefix="tempo/")
    assert no_branch.keys() == m.keys()  # the same keys every step: no gap in a dashboard's series
    assert no_branch["tempo/branch_nodes_per_group"] == 0.0 and no_branch["tempo/branch_token_fraction"] == 0.0
    assert no_branch["tempo/first_branch_depth"] == no_branch["tempo/mean_branch_depth"] == 0.0
