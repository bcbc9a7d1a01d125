"""Left padding (reference/padding.py; proofs_notes/tempo.md, Proposition 5c): a batch whose rows
are left or right padded, row by row, gives exactly the right-padded batch's result with each
left-padded row shifted to its response's columns, on every backend, in the tree statistics,
the prefix values, the trust check and the engine step. A row that is neither a prefix nor a
suffix of ones is refused with the row and the position.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.reference import padded_tempo_advantages, response_span, tempo_advantages
from tempo_rl.testing.strategies import left_pad

from .strategies import Case, case_from, cases

INTERPRETED = not torch.cuda.is_available()


def _shift(x: torch.Tensor, case: Case, rows: list[bool]) -> torch.Tensor:
    """The right-padded result x (B, L) with the rows marked True rolled as `left_pad` rolls them."""
    width = x.shape[1]
    out = x.clone()
    for i, (left, n) in enumerate(zip(rows, case.lengths)):
        if left:
            out[i] = torch.roll(x[i], width - n)
    return out


@st.composite
def mixed(draw, **kw) -> tuple[Case, Case, list[bool]]:
    """(right-padded case, the same batch with some rows left padded, which rows)."""
    case = draw(cases(**kw))
    rows = draw(st.lists(st.booleans(), min_size=len(case.lengths), max_size=len(case.lengths)))
    return case, left_pad(case, rows), rows


TWO = case_from([[7, 1, 3], [7, 2], [5]], [1.0, 0.0, 0.5], ["q", "q", "q"])


# ----------------------------------------------------------------------------- the definition
def test_response_span_prefix_suffix_and_empty():
    assert response_span([1, 1, 0, 0]) == (0, 2)
    assert response_span([0, 0, 1, 1]) == (2, 2)
    assert response_span([1, 1, 1]) == (0, 3)
    assert response_span([0, 0, 0]) == (0, 0)


@pytest.mark.parametrize(
    "row, pattern",
    [
        ([1, 1, 0, 1, 0], r"response_mask row 4 has a hole at position 2 .*pass the contiguous span as response_mask"),
        ([0, 1, 0, 1, 1], r"response_mask row 4 has a hole at position 2"),
        ([0, 1, 1, 0, 0], r"response_mask row 4 is padded on both sides \(ones at positions 1\.\.2\)"),
    ],
)
def test_response_span_refuses_holes_and_both_sides(row, pattern):
    with pytest.raises(ValueError, match=pattern):
        response_span(row, 4)


@settings(max_examples=60)
@given(drawn=mixed(max_batch=8, max_len=6))
def test_reference_left_padded_is_right_padded_shifted(drawn):
    case, left, rows = drawn
    kw = dict(norm_by_std=True, eps=1e-6, td_coef=0.5)
    loss = None if case.loss_mask is None else case.loss_mask.tolist()
    right_out = padded_tempo_advantages(
        case.responses.tolist(), case.response_mask.tolist(), case.reward_list, case.group_list, loss_mask=loss, **kw
    )
    left_loss = None if left.loss_mask is None else left.loss_mask.tolist()
    left_out = padded_tempo_advantages(
        left.responses.tolist(),
        left.response_mask.tolist(),
        case.reward_list,
        case.group_list,
        loss_mask=left_loss,
        **kw,
    )
    expected = _shift(torch.tensor(right_out, dtype=torch.float64).reshape(case.responses.shape), case, rows)
    assert torch.equal(torch.tensor(left_out, dtype=torch.float64).reshape(case.responses.shape), expected)
    # and the ragged responses are the same ones
    assert left.sequences == case.sequences
    ragged = tempo_advantages(case.sequences, case.reward_list, case.group_list, loss_masks=case.loss_lists, **kw)
    assert [row[s : s + n] for row, (s, n) in zip(left_out, left.spans)] == ragged


# ----------------------------------------------------------------------------- every backend
def _advantages(case: Case, backend: str, **kw) -> torch.Tensor:
    return tempo_rl.tempo_advantages(*case.args(), loss_mask=case.loss_mask, backend=backend, **kw)


@pytest.mark.parametrize(
    "backend, n",
    [("reference", 40), ("torch", 80), ("triton", 6 if INTERPRETED else 80)],
)
def test_backend_left_padded_is_right_padded_shifted(backend, n):
    @settings(max_examples=n)
    @given(drawn=mixed(max_batch=6 if backend == "triton" else 10, max_len=5 if backend == "triton" else 8))
    @example(drawn=(TWO, left_pad(TWO, [False, True, True]), [False, True, True]))
    def check(drawn):
        case, left, rows = drawn
        for kw in (dict(td_coef=1.0), dict(td_coef=0.0, norm_by_std=False)):
            expected = _shift(_advantages(case, backend, **kw), case, rows)
            assert torch.equal(_advantages(left, backend, **kw), expected)

    check()


def test_left_padded_worked_example():
    # Example 1 of proofs_notes/tempo.md: y = [7, 1] (R = 1) and [7, 2] (R = 0), unnormalised,
    # gives [[0.5, 1.0], [-0.5, -1.0]]; with one padding column, left padding the second row.
    y = torch.tensor([[7, 1, 9], [9, 7, 2]])
    m = torch.tensor([[1, 1, 0], [0, 1, 1]])
    for backend in ("reference", "torch"):
        out = tempo_rl.tempo_advantages(y, m, [1.0, 0.0], [0, 0], norm_by_std=False, backend=backend)
        assert out.tolist() == [[0.5, 1.0, 0.0], [0.0, -0.5, -1.0]]


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_loss_mask_moves_with_its_row(backend):
    y = torch.tensor([[7, 1, 9], [9, 7, 2]])
    m = torch.tensor([[1, 1, 0], [0, 1, 1]])
    loss = torch.tensor([[1, 0, 0], [0, 1, 0]])  # keep the first token of each response
    out = tempo_rl.tempo_advantages(y, m, [1.0, 0.0], [0, 0], loss_mask=loss, norm_by_std=False, backend=backend)
    assert out.tolist() == [[0.5, 0.0, 0.0], [0.0, -0.5, 0.0]]


# ----------------------------------------------------------------------------- statistics
@settings(max_examples=60)
@given(drawn=mixed(max_batch=10, max_len=6))
def test_tree_stats_ignore_the_padding_side(drawn):
    case, left, _ = drawn
    for backend in ("reference", "torch"):
        right_stats = tempo_rl.tree_stats(case.responses, case.response_mask, case.group_ids, backend=backend)
        assert tempo_rl.tree_stats(left.responses, left.response_mask, left.group_ids, backend=backend) == right_stats
        out, stats = tempo_rl.tempo_advantages_with_stats(*left.args(), backend=backend)
        assert stats == right_stats


@settings(max_examples=6 if INTERPRETED else 60)
@given(drawn=mixed(max_batch=6, max_len=5))
def test_triton_tree_stats_ignore_the_padding_side(drawn):
    case, left, _ = drawn
    right_stats = tempo_rl.tree_stats(case.responses, case.response_mask, case.group_ids, backend="triton")
    assert tempo_rl.tree_stats(left.responses, left.response_mask, left.group_ids, backend="triton") == right_stats


@settings(max_examples=40)
@given(drawn=mixed(max_batch=10, max_len=6))
def test_prefix_values_at_the_responses_columns(drawn):
    case, left, rows = drawn
    right = tempo_rl.prefix_values(*case.args(), backend="torch").dense()
    got = tempo_rl.prefix_values(*left.args(), backend="torch").dense()
    for name in ("v_parent", "v_child", "n_parent", "n_child", "branch"):
        assert torch.equal(getattr(got, name), _shift(getattr(right, name), case, rows)), name


# ----------------------------------------------------------------------------- trust check and step
@settings(max_examples=40)
@given(drawn=mixed(max_batch=10, max_len=6))
def test_trust_check_accepts_left_padded_advantages(drawn):
    _, left, _ = drawn
    adv = _advantages(left, "torch")
    report = tempo_rl.check_against_reference(adv, *left.args(), loss_mask=left.loss_mask, max_groups=100)
    assert report.tokens_checked == sum(left.lengths)


def test_trust_check_names_the_callers_column():
    y = torch.tensor([[7, 1, 9], [9, 7, 2]])
    m = torch.tensor([[1, 1, 0], [0, 1, 1]])
    adv = tempo_rl.tempo_advantages(y, m, [1.0, 0.0], [0, 0], backend="torch")
    wrong = adv.clone()
    wrong[1, 2] += 1.0  # the second token of the left-padded response
    with pytest.raises(tempo_rl.AdvantageMismatch, match=r"row 1, token 2"):
        tempo_rl.check_against_reference(wrong, y, m, [1.0, 0.0], [0, 0])
    padding = adv.clone()
    padding[1, 0] = 0.25  # a non-zero advantage on the left padding
    with pytest.raises(tempo_rl.AdvantageMismatch, match=r"row 1, token 0"):
        tempo_rl.check_against_reference(padding, y, m, [1.0, 0.0], [0, 0])


@settings(max_examples=25)
@given(drawn=mixed(max_batch=10, max_len=6))
def test_advantage_step_left_padded(drawn):
    case, left, rows = drawn
    options = tempo_rl.StepOptions(backend="torch", trust_check=True, trust_groups=100, log_branch_snr=True)
    right = tempo_rl.advantage_step(*case.args(), loss_mask=case.loss_mask, options=options)
    got = tempo_rl.advantage_step(*left.args(), loss_mask=left.loss_mask, options=options)
    assert torch.equal(got.advantages, _shift(right.advantages, case, rows))
    assert got.tree == right.tree and got.metrics == right.metrics


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_hole_refused_with_row_position_and_fix(backend):
    y = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0]])
    pattern = (
        r"response_mask row 1 has a hole at position 2 .*pass the contiguous span as response_mask "
        r"and the tokens to train as loss_mask"
    )
    with pytest.raises(ValueError, match=pattern):
        tempo_rl.tempo_advantages(y, m, [1.0, 0.0], [0, 0], backend=backend)
    with pytest.raises(ValueError, match=pattern):
        tempo_rl.tree_stats(y, m, [0, 0], backend=backend)


def test_both_sides_padding_refused():
    y = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"response_mask row 0 is padded on both sides \(ones at positions 1\.\.2\)"):
        tempo_rl.tempo_advantages(y, torch.tensor([[0, 1, 1, 0]]), [1.0], [0])
