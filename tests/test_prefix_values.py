"""Prefix values: the torch path equals the exact reference (proofs_notes/prefix-values.md).

The oracle is `backend="reference"`: the P2T trie in `Fraction`s, each V rounded once to float64.

Tolerance for V (derived, and measured below it): the torch path sums centred rewards in float64,
V = fl(mu + fl(sum_{k in s} fl(R_k - mu)) / n). mu's own rounding cancels to first order (mu plus the
mean of R_k - mu is the mean of R_k whatever mu is), so the error is one rounding of V (2^-53 |V|),
the n-term sequential sum and the centring ((n - 1) + 1 roundings of at most max|R_k - mu|, each
2^-53), and the division. The reference adds its own rounding, 2^-53 |V|. With n <= G, both stay
below 2^-52 (|V| + (G + 1) * spread), spread = max R - min R of the group: twice the first-order
bound. Counts, branch tokens and member ids are integers and must be equal exactly.
"""

from __future__ import annotations

import doctest
import importlib
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.reference import PrefixTree, group_rows, td_values
from tempo_rl.tolerances import snippet_tolerance, value_tolerance

from .strategies import Case, case_from, cases, concat, interleave, take, widen

EDGE = [
    case_from([[3, 1]], [1.0], ["a"]),  # group of one
    case_from([[1, 2], [1, 3], [2]], [0.5, 0.5, 0.5], [0, 0, 0]),  # equal rewards
    case_from([[], [], [5]], [1.0, 0.0, 2.0], [0, 0, 0]),  # empty responses
    case_from([[4], [4]], [1.0, 0.0], [0, 0]),  # one token, identical
    case_from([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [1.0, 0.0, 2.0], ["q"] * 3),  # all identical
    case_from([], [], []),  # empty batch
    case_from([[1], [1, 2], [1, 2, 0]], [0.0, 1.0, 3.0], [7, 7, 7]),  # ends where others continue
    case_from([[1, 2], [1, 3], [1, 3]], [1e8, 1e8 + 0.5, 1e8 + 1.0], [0, 0, 0]),  # |R| >> spread
]


def _pv(case: Case, backend: str) -> tempo_rl.PrefixValues:
    return tempo_rl.prefix_values(*case.args(), backend=backend)


def _branch_tokens(case: Case) -> torch.Tensor:
    """(B, L) bool: where TEMPO applies its TD term, from the reference trie (Definition 4)."""
    out = torch.zeros(case.responses.shape, dtype=torch.bool)
    seqs = case.sequences
    for rows in group_rows(case.group_ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [0] * len(rows))
        for k, i in enumerate(rows):
            flags = tree.is_branch_token(k)
            out[i, : len(flags)] = torch.tensor(flags, dtype=torch.bool)
    return out


def _check_equal(fast: tempo_rl.PrefixValues, ref: tempo_rl.PrefixValues, case: Case) -> None:
    for name in ("lengths", "branch_offsets", "branch_t", "run_count", "run_first"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    d_fast, d_ref = fast.dense(), ref.dense()
    for name in ("n_parent", "n_child", "branch"):
        assert torch.equal(getattr(d_fast, name), getattr(d_ref, name)), name
    for name in ("v_parent", "v_child"):
        a, b = getattr(d_fast, name), getattr(d_ref, name)
        assert a.dtype == b.dtype == torch.float64 and torch.isfinite(a).all()
        err = (a - b).abs()
        assert (err <= value_tolerance(case, b)).all(), f"{name}: max error {err.max().item()}"


# ------------------------------------------------------------------ torch == reference


def _edges(test):
    for c in EDGE:
        test = example(case=c)(test)
    return test


@settings(max_examples=300)
@given(case=cases(max_batch=12, max_len=9, max_group=6))
@_edges
def test_torch_equals_reference(case):
    """Ragged lengths, interleaved groups, tiny and 2^31 vocabularies, colliding padding, every reward kind."""
    _check_equal(_pv(case, "torch"), _pv(case, "reference"), case)


@settings(max_examples=25)
@given(case=cases(max_batch=70, max_len=4, max_group=64, max_vocab=2))
def test_torch_equals_reference_large_groups(case):
    _check_equal(_pv(case, "torch"), _pv(case, "reference"), case)


def test_torch_accepts_strided_and_int32_inputs():
    """A column slice of a wider tensor, a column-major copy, int32 ids: the same result."""
    case = case_from([[1, 2, 5], [1, 3], [1, 3, 4], [2], [1, 2, 5, 5]], [0.0, 1.0, 0.5, 2.0, 1.0], [0, 0, 0, 1, 0])
    ref = _pv(case, "reference")
    wide = torch.zeros(5, 8, dtype=torch.int64)
    wide[:, 2:6] = case.responses
    mask = torch.zeros(5, 8, dtype=torch.bool)
    mask[:, 2:6] = case.response_mask
    for responses, m in (
        (wide[:, 2:6], mask[:, 2:6]),
        (case.responses.t().contiguous().t(), case.response_mask),
        (case.responses.to(torch.int32), case.response_mask),
    ):
        got = tempo_rl.prefix_values(responses, m, case.rewards, case.group_ids, backend="torch")
        _check_equal(got, ref, case)


# ------------------------------------------------------------------ laws


@pytest.mark.parametrize("backend", ["reference", "torch"])
@settings(max_examples=150)
@given(case=cases(max_batch=10, max_len=8, max_group=6))
@_edges
def test_branch_flags_are_the_advantages_branch_tokens(backend, case):
    """`branch` is exactly where TEMPO applies TD (n_child < n_parent); elsewhere V(child) == V(parent)
    bitwise and the counts are equal; zero past each response."""
    d = _pv(case, backend).dense()
    assert torch.equal(d.branch, _branch_tokens(case))
    assert torch.equal(d.branch, d.n_child < d.n_parent)
    same = case.response_mask & ~d.branch
    assert torch.equal(d.v_child[same], d.v_parent[same]) and torch.equal(d.n_child[same], d.n_parent[same])
    past = ~case.response_mask
    assert not d.v_parent[past].any() and not d.v_child[past].any()
    assert not d.n_parent[past].any() and not d.n_child[past].any() and not d.branch[past].any()


@settings(max_examples=150)
@given(case=cases(max_batch=10, max_len=8, max_group=6, float64=True))
@_edges
def test_reference_values_are_the_trie_rounded_once(case):
    """v_child - v_parent is the exact TD (td_values) up to the rounding of the two values and the
    subtraction: 2^-53 (|v_child| + |v_parent|) + 2^-53 |TD|."""
    d = _pv(case, "reference").dense()
    for i, tds in enumerate(td_values(case.sequences, case.reward_list, case.group_ids)):
        for t, td in enumerate(tds):
            got = d.v_child[i, t].item() - d.v_parent[i, t].item()
            bound = 2.0**-53 * (abs(d.v_child[i, t].item()) + abs(d.v_parent[i, t].item()) + abs(float(td)))
            assert abs(got - float(td)) <= bound


def test_hand_worked_group():
    """The group of proofs_notes/worked-example.md: y4 = "so </s>" ends where the others continue.

    Tokens: so=1, x=2, y=3, '='=4, 5=5, 6=6, </s>=0. Values from the tree printed there.
    """
    case = case_from([[1, 2, 4, 5, 0], [1, 2, 4, 6, 0], [1, 3, 4, 5, 0], [1, 0]], [1.0, 0.0, 1.0, 0.0], [0] * 4)
    for backend in ("reference", "torch"):
        d = _pv(case, backend).dense()
        assert d.v_child[0].tolist() == [0.5, 0.5, 0.5, 1.0, 1.0]
        assert d.n_child[0].tolist() == [4, 2, 2, 1, 1]
        assert d.branch[0].tolist() == [False, True, False, True, False]
        assert d.v_child[3, :2].tolist() == [0.5, 0.0] and d.branch[3, :2].tolist() == [False, True]


# ------------------------------------------------------------------ bad input


def test_triton_runs_the_torch_path_and_unknown_backends_are_refused():
    case = EDGE[3]
    a = tempo_rl.prefix_values(*case.args(), backend="triton").dense()
    b = tempo_rl.prefix_values(*case.args(), backend="torch").dense()
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("v_parent", "v_child", "n_parent", "branch"))
    with pytest.raises(ValueError, match="backend"):
        tempo_rl.prefix_values(*case.args(), backend="cuda")


def test_bad_arguments_name_the_argument():
    case = EDGE[3]
    with pytest.raises(ValueError, match="rewards"):
        tempo_rl.prefix_values(case.responses, case.response_mask, [1.0, float("nan")], case.group_ids)
    with pytest.raises(ValueError, match="response_mask"):
        tempo_rl.prefix_values(case.responses, torch.ones(2, 3), case.rewards, case.group_ids)
    with pytest.raises(ValueError, match="group_ids"):
        tempo_rl.prefix_values(case.responses, case.response_mask, case.rewards, [0])


# ------------------------------------------------------------------ the note's snippets

NOTE = Path(__file__).resolve().parents[1] / "proofs_notes" / "prefix-values.md"


def _note_functions() -> dict:
    """Every ```python block of proofs_notes/prefix-values.md, run in order in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", NOTE.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(NOTE), "exec"), namespace)  # noqa: S102 (our own note)
    return namespace


SNIPPETS = _note_functions()


def _paths(case: Case):
    """(row, prefix tree, member index, path nodes) of every row, from the reference trie."""
    seqs, rewards = case.sequences, case.reward_list
    for rows in group_rows(case.group_ids).values():
        tree = PrefixTree([seqs[i] for i in rows], [rewards[i] for i in rows])
        for k, i in enumerate(rows):
            yield i, tree, k, tree.path(k)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@settings(max_examples=150)
@given(case=cases(max_batch=10, max_len=8, max_group=6, float64=True, with_loss_mask=False))
@_edges
def test_note_snippets_tempo_equals_tempo_advantages(backend, case):
    """TEMPO from prefix values == tempo_advantages(backend="reference"), within float64 rounding
    (2^-49 (max|R| + (G + 2) spread) / (sigma + eps): the V's, TD's and centring's roundings, each
    at most 2^-52 of those sizes, times (1 + td_coef); plus 2^-50 |A| for sigma's rounding)."""
    for coef in (1.0, 0.5):
        got = SNIPPETS["tempo_via_prefix_values"](*case.args(), td_coef=coef, backend=backend)
        want = tempo_rl.tempo_advantages(*case.args(), td_coef=coef, backend="reference")
        r = case.rewards.double()
        sigma = torch.zeros(len(r), 1, dtype=torch.float64)
        for rows in group_rows(case.group_ids).values():
            sigma[rows] = r[rows].std().item() if len(rows) > 1 else 0.0
        bound = snippet_tolerance(case, sigma + 1e-6) + 2.0**-50 * want.abs()
        assert ((got - want).abs() <= bound).all(), (got - want).abs().max()
        assert not got[~case.response_mask].any()
        for rows in group_rows(case.group_ids).values():  # degenerate groups: exactly 0, as the contract says
            if len(rows) < 2 or len(set(r[rows].tolist())) == 1:
                assert not got[rows].any()


@pytest.mark.parametrize("backend", ["reference", "torch"])
@settings(max_examples=100)
@given(case=cases(max_batch=10, max_len=8, max_group=6, float64=True, with_loss_mask=False))
@_edges
def test_note_snippets_tree_estimators_match_their_definitions(backend, case):
    """Local + global and subgroup-mean advantages against their definitions, evaluated exactly on
    the trie (Fractions, one rounding, then the square root in float64)."""
    local_global = SNIPPETS["tree_local_global_advantages"](*case.args(), backend=backend)
    subgroup = SNIPPETS["subgroup_mean_advantages"](*case.args(), backend=backend)
    want_lg = torch.zeros_like(local_global)
    want_sub = torch.zeros_like(subgroup)
    for i, tree, k, path in _paths(case):
        root = path[0].value
        gaps = [tree.rewards[k] - p.value for p, c in zip(path, path[1:]) if c.count != p.count]
        for t, (parent, child) in enumerate(zip(path, path[1:])):
            exact = (child.value - root) + (child.value - parent.value)
            want_lg[i, t] = float(exact) / math.sqrt(child.count)
            want_sub[i, t] = float(sum(gaps, Fraction(0)) / len(gaps)) if gaps else 0.0
    one = torch.ones(len(case.group_ids), 1, dtype=torch.float64)
    assert ((local_global - want_lg).abs() <= snippet_tolerance(case, one) + 2.0**-50 * want_lg.abs()).all()
    assert ((subgroup - want_sub).abs() <= snippet_tolerance(case, one) + 2.0**-50 * want_sub.abs()).all()


def test_note_snippets_hand_worked():
    """Example 1 of proofs_notes/tempo.md: y1 = (7, 1) with R = 1, y2 = (7, 2) with R = 0.

    Local + global at token 1 of y1: (1 - 1/2) + (1 - 1/2) = 1, over sqrt(1). Subgroup mean: the one
    branch node (7) gives R - V = 1/2 and -1/2. TEMPO (eps = 0): (1/2 + 1/2) / sigma, sigma = sqrt(1/2).
    """
    case = case_from([[7, 1], [7, 2]], [1.0, 0.0], ["q", "q"])
    assert SNIPPETS["tree_local_global_advantages"](*case.args()).tolist() == [[0.0, 1.0], [0.0, -1.0]]
    assert SNIPPETS["subgroup_mean_advantages"](*case.args()).tolist() == [[0.5, 0.5], [-0.5, -0.5]]
    got = SNIPPETS["tempo_via_prefix_values"](*case.args(), eps=0.0)
    assert got[0, 1].item() == pytest.approx(1 / math.sqrt(0.5), rel=1e-15)


@pytest.mark.parametrize("module", ["tempo_rl.prefix_values", "tempo_rl.reference.prefix_values"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=60)
@given(
    case=cases(max_batch=8, max_len=6, max_group=5, float64=True),
    other=cases(max_batch=12, max_len=6, max_group=7, float64=True),
    seed=st.integers(0, 2**16),
)
def test_torch_batch_invariance_bitwise(case, other, seed):
    """A group's dense values do not depend on the other groups nor on where its rows sit (members
    keep their relative order): every sum runs over the group's own members in member order."""
    width = max(case.responses.shape[1], other.responses.shape[1])
    a, b = widen(case, width, "a"), widen(other, width, "b")
    both = concat([a, b])
    shuffled = torch.randperm(len(both.group_ids), generator=torch.Generator().manual_seed(seed)).tolist()
    order = interleave(both.group_ids, shuffled)
    mixed = take(both, order)
    alone = _pv(a, "torch").dense()
    together = _pv(mixed, "torch").dense()
    back = torch.argsort(order)[: len(a.group_ids)]  # where each row of `a` went
    for name in ("v_parent", "v_child", "n_parent", "n_child", "branch"):
        assert torch.equal(getattr(together, name)[back], getattr(alone, name)), name


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_rewards_whose_squares_overflow_are_refused_naming_rewards(backend):
    """The branch SNR squares each reward's offset from its group's mean: offsets of 1e300 would give
    inf and NaN statistics, so they are refused in one line naming `rewards` (the advantages alone
    still work: they only divide by the spread)."""
    responses = torch.tensor([[5, 7, 2], [5, 8, 3]])
    mask = torch.ones_like(responses)
    rewards = torch.tensor([1e300, -1e300], dtype=torch.float64)
    with pytest.raises(ValueError, match="^rewards: .*rescale"):
        tempo_rl.branch_snr_stats(responses, mask, rewards, [0, 0], backend=backend)
    with pytest.raises(ValueError, match="^rewards: "):
        tempo_rl.advantage_step(
            responses, mask, rewards, [0, 0], options=tempo_rl.StepOptions(backend=backend, log_branch_snr=True)
        )
    assert torch.isfinite(tempo_rl.tempo_advantages(responses, mask, rewards, [0, 0])).all()
    assert torch.isfinite(tempo_rl.branch_snr_stats(responses, mask, rewards * 1e-160, [0, 0]).sigma2).all()
