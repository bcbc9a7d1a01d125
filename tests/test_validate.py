"""Bad input (spec, "Bad input"): each error has its type and names the argument (and row)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tempo_rl

Y = torch.tensor([[1, 2, 3], [1, 2, 0], [4, 0, 0]])
M = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
R = torch.tensor([1.0, 0.0, 0.5])
G = ["a", "a", "b"]

FNS = [tempo_rl.tempo_advantages, tempo_rl.grpo_advantages]


def call(fn, responses=Y, mask=M, rewards=R, groups=G, **kw):
    kw.setdefault("backend", "reference")
    return fn(responses, mask, rewards, groups, **kw)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards(fn, bad):
    with pytest.raises(ValueError, match=r"rewards row 1 is not finite"):
        call(fn, rewards=torch.tensor([1.0, bad, 0.0]))


@pytest.mark.parametrize("fn", FNS)
def test_mask_neither_prefix_nor_suffix(fn):
    with pytest.raises(ValueError, match=r"response_mask row 2 is padded on both sides"):
        call(fn, mask=torch.tensor([[1, 1, 1], [1, 1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match=r"response_mask row 1 has a hole at position 1"):
        call(fn, mask=torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0]]))


@pytest.mark.parametrize("fn", FNS)
def test_mask_not_binary(fn):
    with pytest.raises(ValueError, match=r"response_mask row 0 holds values other than 0 and 1"):
        call(fn, mask=torch.tensor([[2, 1, 1], [1, 1, 0], [1, 0, 0]]))


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize(
    "arg, value, pattern",
    [
        ("mask", torch.ones(3, 2), r"response_mask has shape \(3, 2\), expected \(3, 3\)"),
        ("rewards", torch.ones(2), r"rewards must have shape \(3,\)"),
        ("rewards", torch.ones(3, 1), r"rewards must have shape \(3,\)"),
        ("groups", [0, 0], r"group_ids has 2 entries, expected 3"),
        ("responses", torch.ones(3, dtype=torch.long), r"responses must be 2-D"),
        ("groups", torch.zeros(3, 1, dtype=torch.long), r"group_ids must be 1-D"),
    ],
)
def test_shape_mismatch(fn, arg, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(fn, **{arg: value})


@pytest.mark.parametrize("fn", FNS)
def test_loss_mask_of_another_shape(fn):
    with pytest.raises(ValueError, match=r"loss_mask has shape \(3, 4\)"):
        call(fn, loss_mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"loss_mask row 1 holds values other than 0 and 1"):
        call(fn, loss_mask=torch.tensor([[1, 1, 1], [1, 0.5, 1], [1, 1, 1]]))


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize(
    "arg, value, pattern",
    [
        ("responses", Y.float(), r"responses must hold integer token ids"),
        ("rewards", ["x", "y", "z"], r"rewards must be numeric"),
        ("rewards", [1.0, None, 2.0], r"rewards must be numeric"),
        ("rewards", torch.tensor([1, 0, 1], dtype=torch.complex64), r"rewards must be a float tensor"),
        ("groups", torch.tensor([0.0, 0.0, 1.0]), r"group_ids as a tensor must be integer"),
        ("groups", [[0], [0], [1]], r"group_ids row 0 is not hashable"),
        ("groups", "aab", r"group_ids must be a sequence"),
        ("mask", torch.ones(3, 3, dtype=torch.complex64), r"response_mask must be bool or 0/1"),
    ],
)
def test_wrong_types(fn, arg, value, pattern):
    with pytest.raises(TypeError, match=pattern):
        call(fn, **{arg: value})


def test_nan_group_id():
    with pytest.raises(ValueError, match=r"group_ids row 1 is NaN"):
        call(tempo_rl.tempo_advantages, groups=[0.0, math.nan, 1.0])


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        ({"eps": -1.0}, ValueError, r"eps must be >= 0"),
        ({"eps": math.nan}, ValueError, r"eps must be finite"),
        ({"td_coef": math.inf}, ValueError, r"td_coef must be finite"),
        ({"td_coef": "1"}, TypeError, r"td_coef must be a real number"),
        ({"norm_by_std": 1}, TypeError, r"norm_by_std must be a bool"),
        ({"backend": "cuda"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_options(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(tempo_rl.tempo_advantages, **kw)


@pytest.mark.parametrize("fn", FNS)
def test_empty_batch_gives_empty_output(fn):
    out = call(
        fn, responses=torch.zeros(0, 5, dtype=torch.long), mask=torch.zeros(0, 5), rewards=torch.zeros(0), groups=[]
    )
    assert out.shape == (0, 5) and out.dtype == torch.float32


def test_accepted_input_forms_agree():
    """Lists, numpy arrays and tensors of every accepted kind give the same numbers."""
    base = call(tempo_rl.tempo_advantages)
    same = [
        call(tempo_rl.tempo_advantages, responses=Y.int(), mask=M.bool(), rewards=R.tolist()),
        call(tempo_rl.tempo_advantages, responses=Y.numpy(), mask=M.numpy(), groups=np.array(G)),
        call(tempo_rl.tempo_advantages, responses=Y.tolist(), mask=M.float(), groups=("a", "a", "b")),
        call(tempo_rl.tempo_advantages, groups=torch.tensor([5, 5, 9])),
        call(tempo_rl.tempo_advantages, groups=np.array([5, 5, 9])),
    ]
    for out in same:
        assert torch.equal(out, base)
    f64 = call(tempo_rl.tempo_advantages, rewards=R.double())
    assert f64.dtype == torch.float64
    assert call(tempo_rl.tempo_advantages, rewards=np.array([1.0, 0.0, 0.5])).dtype == torch.float64
    assert call(tempo_rl.tempo_advantages, rewards=torch.tensor([1, 0, 1])).dtype == torch.float32


def test_zero_eps_with_equal_rewards_is_not_nan():
    out = call(tempo_rl.tempo_advantages, rewards=torch.tensor([0.5, 0.5, 0.5]), eps=0.0)
    assert not out.any()


def test_tree_stats_validates_too():
    with pytest.raises(ValueError, match=r"response_mask row 0 has a hole at position 1"):
        tempo_rl.tree_stats(Y, torch.tensor([[1, 0, 1], [1, 1, 0], [1, 0, 0]]), G)
    stats = tempo_rl.tree_stats(Y, M, G)
    assert set(stats.groups) == {"a", "b"}
    assert stats.groups["a"].n_branch_tokens == 1  # token 3 vs end of response at depth 2
    assert stats.groups["a"].first_branch_depth == 2
    assert stats.n_tokens == 6 and stats.n_nodes == 4 + 2
