"""Numerics at the float limits: finite rewards of any magnitude give finite, correct advantages on
every backend, or a ValueError naming the argument (never zeros, NaN or inf).

Group moments are computed on R / s_g with s_g a power of two near max|R_g| (exact; see
proofs_notes/fast-algorithm.md, "Scale"), so rewards near 1e308, stds that underflow with eps = 0
and huge td_coef all stay in range. The advantage itself can leave the output dtype's range only
in the Dr. GRPO form (no division by sigma) or through td_coef; then the error names which.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tempo_rl

from .strategies import case_from
from .test_advantage_fast import assert_matches_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "torch", "triton"]
FAST = ["torch", "triton"]
TREE = [[1, 2], [1, 3], [4], [1, 2]]  # branches at the root and after token 1


def _run(rewards: list[float], backend: str, *, dtype=torch.float64, **kw) -> torch.Tensor:
    case = case_from(TREE[: len(rewards)], rewards, [0] * len(rewards))
    return tempo_rl.tempo_advantages(
        case.responses.to(DEVICE),
        case.response_mask.to(DEVICE),
        torch.tensor(rewards, dtype=dtype, device=DEVICE),
        case.group_ids,
        backend=backend,
        **kw,
    ).cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "rewards",
    [[1e200, -1e200, 0.0], [1e308, -1e308], [1.7e308, 1.7e308, -1.7e308], [0.0, 1e-320], [5e-324, 0.0, 1e-323]],
)
def test_rewards_near_the_float64_limits_give_finite_correct_advantages(backend, rewards):
    """Unscaled float64 gave zeros (1e200: sigma^2 overflows), NaN/-inf ([1e308, -1e308]) or
    inf/NaN (subnormal rewards, eps = 0); the reference raised OverflowError."""
    for eps in (1e-6, 0.0):
        out = _run(rewards, backend, eps=eps)
        assert torch.isfinite(out).all()
        grpo = _run(rewards, backend, eps=eps, td_coef=0.0)
        if eps == 0.0 or max(map(abs, rewards)) > 1.0:  # sigma >> eps: |A| ~ 1, not silently zero
            assert grpo.abs().max() > 0.1
        ref = _run(rewards, "reference", eps=eps)
        case = case_from(TREE[: len(rewards)], rewards, [0] * len(rewards))
        assert_matches_reference(out, ref, case, norm_by_std=True, eps=eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaled_moments_are_bitwise_the_unscaled_ones_in_range(backend):
    """Dividing by a power of two commutes with every rounding: ordinary rewards keep their bits
    (the worked example's exact values)."""
    out = _run([1.0, 0.0], backend, norm_by_std=False)
    assert out.tolist() == [[0.5, 1.0], [-0.5, -1.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dr_grpo_past_the_output_range_names_rewards(backend):
    with pytest.raises(ValueError, match="rewards"):
        _run([1.7e308, -1.7e308, -1.7e308], backend, norm_by_std=False, td_coef=0.0)
    with pytest.raises(ValueError, match="rewards"):
        _run([3e38, -3e38, -3e38], backend, dtype=torch.float32, norm_by_std=False, td_coef=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_td_coef_is_finite_or_names_td_coef(backend):
    out = _run([1.0, 0.0, 0.5], backend, td_coef=1e308)  # |TD| / sigma < 1: still in float64's range
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="td_coef"):  # TD = 5 at token 1: 5e308
        _run([10.0, 0.0, 5.0], backend, td_coef=1e308, norm_by_std=False)
    with pytest.raises(ValueError, match="td_coef"):
        _run([1.0, 0.0, 0.5], backend, dtype=torch.float32, td_coef=1e300)


@pytest.mark.parametrize("backend", FAST)
def test_any_magnitude_matches_the_reference(backend):
    @settings(max_examples=60 if backend == "torch" or DEVICE == "cuda" else 15)
    @given(
        exponent=st.integers(-323, 307),
        mantissas=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=2, max_size=4),
        norm=st.booleans(),
        eps=st.sampled_from([0.0, 1e-6]),
    )
    @example(exponent=200, mantissas=[1.0, -1.0, 0.0], norm=True, eps=1e-6)
    @example(exponent=308, mantissas=[1.0, -1.0], norm=True, eps=1e-6)
    @example(exponent=-320, mantissas=[0.0, 1.0], norm=True, eps=0.0)
    @example(exponent=242, mantissas=[-0.5, -0.5625], norm=True, eps=0.0)  # sigma^2 of R overflows
    @example(exponent=296, mantissas=[0.0, 0.25, 1.0], norm=True, eps=0.0)
    def check(exponent, mantissas, norm, eps):
        rewards = [m * 10.0**exponent if math.isfinite(m * 10.0**exponent) else m for m in mantissas]
        try:
            ref = _run(rewards, "reference", norm_by_std=norm, eps=eps)
        except ValueError as e:
            with pytest.raises(ValueError, match=str(e).split()[0]):
                _run(rewards, backend, norm_by_std=norm, eps=eps)
            return
        out = _run(rewards, backend, norm_by_std=norm, eps=eps)
        case = case_from(TREE[: len(rewards)], rewards, [0] * len(rewards))
        assert_matches_reference(out, ref, case, norm_by_std=norm, eps=eps)

    check()
