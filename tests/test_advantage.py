"""Properties of the exact reference (spec "Properties that follow"; proofs_notes/tempo.md).

Each test names the proposition it checks. Exact properties are checked on `Fraction`s or as
bitwise equality of the float64 output; nothing here has a tolerance unless the spec allows one.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.reference import (
    GroupMoments,
    PrefixTree,
    group_rows,
    grpo_advantages,
    loop_tempo_advantages,
    td_values,
    tempo_advantages,
)
from tempo_rl.reference.example import example_group

from .strategies import Case, case_from, cases, concat, take, widen

# Pinned edge cases (STYLE.md): group of one, equal rewards, empty responses, one token,
# all responses identical, an empty batch, a response ending where another continues.
EDGE = [
    ([[3, 1]], [1.0], ["a"]),
    ([[1, 2], [1, 3], [2]], [0.5, 0.5, 0.5], [0, 0, 0]),
    ([[], [], [5]], [1.0, 0.0, 2.0], [0, 0, 0]),
    ([[4], [4]], [1.0, 0.0], [0, 0]),
    ([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [1.0, 0.0, 2.0], ["q"] * 3),
    ([], [], []),
    ([[1], [1, 2], [1, 2, 0]], [0.0, 1.0, 3.0], [7, 7, 7]),
]


def ragged(case: Case):
    return case.sequences, case.reward_list, case.group_ids


def _bits_equal(a: list[float], b: list[float]) -> bool:
    return [struct_bits(x) for x in a] == [struct_bits(x) for x in b]


def struct_bits(x: float) -> int:
    import struct

    return struct.unpack("<q", struct.pack("<d", x))[0]


EDGE_CASES = [case_from(*e) for e in EDGE]


def edge_examples(test):
    """Pin EDGE as explicit examples of a test whose argument is `case` (a Case)."""
    for c in EDGE_CASES:
        test = example(case=c)(test)
    return test


def edge_examples_ragged(test):
    """Pin EDGE as explicit examples of a test whose argument is `case` (ragged lists)."""
    for c in EDGE_CASES:
        test = example(case=ragged(c))(test)
    return test


ragged_batches = cases(max_batch=12, max_len=8, max_group=8).map(ragged)


# ---------------------------------------------------------------- Proposition 1: GRPO reduction


@given(case=ragged_batches)
@settings(max_examples=300)
@edge_examples_ragged
def test_prop1_non_branch_tokens_equal_grpo_bitwise(case):
    seqs, rews, ids = case
    for norm in (True, False):
        tempo = tempo_advantages(seqs, rews, ids, norm_by_std=norm)
        grpo = grpo_advantages(seqs, rews, ids, norm_by_std=norm)
        for rows in group_rows(ids).values():
            tree = PrefixTree([seqs[i] for i in rows], [rews[i] for i in rows])
            for k, i in enumerate(rows):
                for t, branch in enumerate(tree.is_branch_token(k)):
                    if not branch:
                        assert struct_bits(tempo[i][t]) == struct_bits(grpo[i][t])


@given(case=ragged_batches, norm=st.booleans())
@settings(max_examples=200)
def test_prop1_td_coef_zero_is_grpo_bitwise(case, norm):
    seqs, rews, ids = case
    tempo = tempo_advantages(seqs, rews, ids, norm_by_std=norm, td_coef=0.0)
    grpo = grpo_advantages(seqs, rews, ids, norm_by_std=norm)
    assert all(_bits_equal(a, b) for a, b in zip(tempo, grpo))


@given(
    seq=st.lists(st.integers(0, 5), max_size=6),
    rews=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=6),
)
def test_prop1_identical_responses_equal_grpo(seq, rews):
    seqs, ids = [seq] * len(rews), [0] * len(rews)
    assert tempo_advantages(seqs, rews, ids) == grpo_advantages(seqs, rews, ids)


# -------------------------------------------------------------------- Proposition 2: telescoping


@given(case=ragged_batches)
@settings(max_examples=300)
@edge_examples_ragged
def test_prop2_telescoping(case):
    seqs, rews, ids = case
    tds = td_values(seqs, rews, ids)
    for rows in group_rows(ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [rews[i] for i in rows])
        mu = GroupMoments.of(tree.rewards).mean
        for k, i in enumerate(rows):
            leaf = tree.node(seqs[i])  # V(y_i): every member whose response starts with y_i
            assert sum(tds[i], Fraction(0)) == leaf.value - mu
            if leaf.count == 1:
                assert sum(tds[i], Fraction(0)) == tree.rewards[k] - mu


# ------------------------------------------------------ Proposition 3: zero-mean TD at each node


@given(case=ragged_batches)
@settings(max_examples=300)
@edge_examples_ragged
def test_prop3_td_sums_to_zero_at_nodes_without_ends(case):
    seqs, rews, ids = case
    tds = td_values(seqs, rews, ids)
    for rows in group_rows(ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [rews[i] for i in rows])
        for node in tree.nodes():
            members = [i for i in rows if len(seqs[i]) >= node.depth and tree.node(seqs[i][: node.depth]) is node]
            assert len(members) == node.count
            if node.ends == 0:
                assert sum((tds[i][node.depth] for i in members), Fraction(0)) == 0


# ------------------------------------------------------------------------ Proposition 4: bounds


@given(case=ragged_batches)
@settings(max_examples=200)
def test_prop4_values_within_reward_range(case):
    seqs, rews, ids = case
    for rows in group_rows(ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [rews[i] for i in rows])
        lo, hi = min(tree.rewards), max(tree.rewards)
        assert all(lo <= node.value <= hi for node in tree.nodes())


# -------------------------------------------------------------------- Proposition 5: invariances


def _api(case: Case, **kw) -> torch.Tensor:
    return tempo_rl.tempo_advantages(*case.args(), **case.kwargs(), backend="reference", **kw)


@given(case=cases(max_batch=10, max_len=6), data=st.data())
@settings(max_examples=150)
def test_prop5_permuting_rows_permutes_output(case, data):
    perm = data.draw(st.permutations(range(len(case.group_ids))))
    p = torch.tensor(perm, dtype=torch.long)
    assert torch.equal(_api(take(case, p)), _api(case)[p])


@given(case=cases(max_batch=10, max_len=6), pad=st.integers(-(2**40), 2**40), extra=st.integers(0, 3))
@settings(max_examples=150)
def test_prop5_padding_values_and_columns_and_ids_change_nothing(case, pad, extra):
    B, L = case.responses.shape
    responses = torch.full((B, L + extra), pad, dtype=torch.int64)
    responses[:, :L] = torch.where(case.response_mask, case.responses, torch.full_like(case.responses, pad))
    mask = torch.zeros((B, L + extra), dtype=torch.bool)
    mask[:, :L] = case.response_mask
    loss = None
    if case.loss_mask is not None:
        loss = torch.zeros((B, L + extra), dtype=torch.bool)
        loss[:, :L] = case.loss_mask
    renamed = [("renamed", gid) for gid in case.group_ids]
    moved = Case(responses, mask, case.rewards, renamed, loss)
    out = _api(moved)
    assert torch.equal(out[:, :L], _api(case))
    assert not out[:, L:].any()


@given(case=ragged_batches, shift=st.fractions(-100, 100), scale=st.fractions(Fraction(1, 50), 50))
@settings(max_examples=200)
def test_prop5_reward_shift_and_scale_exact(case, shift, scale):
    seqs, rews, ids = case
    exact = [Fraction(r) for r in rews]
    base = tempo_advantages(seqs, exact, ids, norm_by_std=False)
    shifted = tempo_advantages(seqs, [r + shift for r in exact], ids, norm_by_std=False)
    assert base == shifted
    tds = td_values(seqs, exact, ids)
    scaled_tds = td_values(seqs, [r * scale for r in exact], ids)
    assert scaled_tds == [[scale * td for td in row] for row in tds]
    # Normalised output is scale-free up to eps: with eps = 0 only rounding separates them.
    norm = tempo_advantages(seqs, exact, ids, eps=0.0)
    norm_scaled = tempo_advantages(seqs, [r * scale for r in exact], ids, eps=0.0)
    for a, b in zip(norm, norm_scaled):
        assert all(math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12) for x, y in zip(a, b))


@given(case=cases(max_batch=8, max_len=6), other=cases(max_batch=8, max_len=6), data=st.data())
@settings(max_examples=100)
def test_prop5b_batch_invariance_bitwise(case, other, data):
    """A group's rows do not change when other groups join the batch at any positions."""
    L = max(case.responses.shape[1], other.responses.shape[1])
    if case.rewards.dtype != other.rewards.dtype:
        other = other.with_rewards(other.rewards.to(case.rewards.dtype))
    joined = concat([widen(case, L, "a"), widen(other, L, "b")])
    perm = data.draw(st.permutations(range(len(joined.group_ids))))
    p = torch.tensor(perm, dtype=torch.long)
    shuffled = take(joined, p)
    out = _api(shuffled)
    inverse = torch.argsort(p)
    alone = _api(widen(case, L, "a"))
    assert torch.equal(out[inverse][: len(case.group_ids)], alone)


# ------------------------------------------------ Proposition 6: equal rewards, groups of one


@given(case=cases(max_batch=10, max_len=6), value=st.floats(-1e6, 1e6, allow_nan=False, width=32))
@settings(max_examples=150)
@example(
    case=Case(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool), torch.tensor([1.0]), [0], None),
    value=0.1,
)
def test_prop6_equal_rewards_and_singletons_give_zero(case, value):
    equal = case.with_rewards(torch.full_like(case.rewards, value))
    assert not _api(equal).any()
    singles = Case(case.responses, case.response_mask, case.rewards, list(range(len(case.group_ids))), case.loss_mask)
    assert not _api(singles).any()
    assert not tempo_rl.grpo_advantages(*singles.args(), backend="reference").any()


# --------------------------------------------------- the independent oracle and the public API


@given(case=cases(max_batch=12, max_len=10, max_group=8))
@settings(max_examples=3000)
@edge_examples
def test_reference_equals_independent_loop(case):
    """The trie and the per-token loop (no shared code) agree bitwise on random batches."""
    seqs, rews, ids = ragged(case)
    loss = None
    if case.loss_mask is not None:
        loss = [row[: len(s)] for row, s in zip(case.loss_mask.tolist(), seqs)]
    for norm in (True, False):
        for coef in (1.0, 0.5, 0.0):
            kw = dict(loss_masks=loss, norm_by_std=norm, td_coef=coef)
            assert tempo_advantages(seqs, rews, ids, **kw) == loop_tempo_advantages(seqs, rews, ids, **kw)


@given(case=cases(max_batch=10, max_len=8), norm=st.booleans(), coef=st.sampled_from([0.0, 0.5, 1.0]))
@settings(max_examples=200)
def test_api_pads_casts_and_masks(case, norm, coef):
    out = _api(case, norm_by_std=norm, td_coef=coef)
    assert out.shape == case.responses.shape
    assert out.dtype == case.rewards.dtype
    assert torch.isfinite(out).all()
    assert not out[~case.response_mask].any()
    if case.loss_mask is not None:
        assert not out[~case.loss_mask].any()
    seqs, rews, ids = ragged(case)
    loss = None
    if case.loss_mask is not None:
        loss = [row[: len(s)] for row, s in zip(case.loss_mask.tolist(), seqs)]
    rows = tempo_advantages(seqs, rews, ids, loss_masks=loss, norm_by_std=norm, td_coef=coef)
    for i, row in enumerate(rows):
        assert out[i, : len(row)].tolist() == torch.tensor(row, dtype=torch.float64).to(out.dtype).tolist()


# ------------------------------------------------------------------------- hand-worked cases


def test_worked_example_values():
    """Numbers worked by hand in proofs_notes/worked-example.md."""
    seqs, rews = example_group()
    ids = [0] * 4
    sigma = math.sqrt(1 / 3)  # rewards 1, 0, 1, 0: mean 1/2, unbiased variance 1/3
    tempo = tempo_advantages(seqs, rews, ids)
    grpo = grpo_advantages(seqs, rews, ids)
    g = 0.5 / (sigma + 1e-6)
    assert grpo == [[g] * 5, [-g] * 5, [g] * 5, [-g] * 2]
    # y1 decides at '5' (V 1/2 -> 1), y2 at '6' (1/2 -> 0), y3 at 'y' (1/2 -> 1), y4 at '</s>'.
    assert tempo == [
        [g, g, g, 1 / (sigma + 1e-6), g],
        [-g, -g, -g, -1 / (sigma + 1e-6), -g],
        [g, 1 / (sigma + 1e-6), g, g, g],
        [-g, -1 / (sigma + 1e-6)],
    ]
    assert td_values(seqs, rews, ids)[0] == [0, 0, 0, Fraction(1, 2), 0]


def test_two_groups_interleaved_by_hand():
    # Group "a": [1,2] R=1, [1,3] R=0 -> branch at t=1, TD = +-1/2; group "b" alone -> zeros.
    out = tempo_advantages([[1, 2], [9], [1, 3]], [1.0, 5.0, 0.0], ["a", "b", "a"], norm_by_std=False)
    assert out == [[0.5, 1.0], [0.0], [-0.5, -1.0]]


def test_response_ending_where_another_continues_is_a_branch():
    # [1] ends at node (1,), [1, 2] continues: the node is a branch, TD of token 2 is 1 - 1/2.
    tds = td_values([[1], [1, 2]], [0.0, 1.0], [0, 0])
    assert tds == [[0], [0, Fraction(1, 2)]]
    tree = PrefixTree([[1], [1, 2]], [0.0, 1.0])
    assert tree.node([1]).is_branch and not tree.root.is_branch


def test_float_rewards_convert_exactly():
    r = 0.1  # not a dyadic rational: the trie must keep the float's exact value
    tree = PrefixTree([[1], [2]], [r, 0.0])
    assert tree.root.reward_sum == Fraction(r)


@pytest.mark.parametrize("seed", range(3))
def test_long_responses_do_not_recurse(seed):
    rng = random.Random(seed)
    seqs = [[rng.randrange(2) for _ in range(5000)] for _ in range(4)]
    stats = tempo_rl.reference.tree_stats(seqs, [0] * 4)
    assert stats.max_depth == 5000
    assert len(tempo_advantages(seqs, [1.0, 0.0, 0.5, 0.25], [0] * 4)[0]) == 5000


# ------------------------------- Proposition T1 (proofs_notes/tree-rollouts.md): one branch node


@given(case=ragged_batches)
@settings(max_examples=300)
@edge_examples_ragged
def test_propT1_branch_node_decomposition(case):
    """Per child c of a branch node s with no ends: GRPO's coefficient of l_c is S_c + N_c and
    TEMPO's is 2 S_c + N_c, with S_c = m_c (V(c) - V(s)), N_c = m_c (V(s) - mu); exact."""
    seqs, rews, ids = case
    tds = td_values(seqs, rews, ids)
    for rows in group_rows(ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [rews[i] for i in rows])
        mu = GroupMoments.of(tree.rewards).mean
        prefixes = {tuple(seqs[i][:d]) for i in rows for d in range(len(seqs[i]))}
        for prefix in prefixes:
            node = tree.node(prefix)
            if node.ends or not node.is_branch:
                continue
            d = len(prefix)
            for token, child in node.children.items():
                members = [(k, i) for k, i in enumerate(rows) if tuple(seqs[i][: d + 1]) == prefix + (token,)]
                grpo = sum((tree.rewards[k] - mu for k, _ in members), Fraction(0))
                tempo = grpo + sum((tds[i][d] for _, i in members), Fraction(0))
                local = child.count * (child.value - node.value)
                offset = child.count * (node.value - mu)
                assert grpo == local + offset
                assert tempo == 2 * local + offset


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_loss_mask_zeros_inside_a_response_keep_td_after_them(backend):
    """Masked tool tokens in the middle of a response zero their own advantages only: the branch
    token after them still gets TD (tempo.md, section 4: a loop that stops at the first mask-0 would
    give it GRPO's 0.5). Dr. GRPO form, mu = 1/2, TD at token 3 = +-1/2."""
    y = torch.tensor([[1, 9, 9, 2], [1, 9, 9, 3]])
    loss = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 1]])
    out = tempo_rl.tempo_advantages(
        y,
        torch.ones_like(y),
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        [0, 0],
        loss_mask=loss,
        norm_by_std=False,
        backend=backend,
    )
    assert out.tolist() == [[0.5, 0.0, 0.0, 1.0], [-0.5, 0.0, 0.0, -1.0]]
