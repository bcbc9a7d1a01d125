"""Proposition T2 (finite m) and the unbiased node estimators, checked by simulation.

proofs_notes/tree-rollouts.md, section 1. Every simulation is numpy, seeded, a second or less;
each tolerance is 4 standard errors of the simulated quantity, estimated from the simulation
itself (25 independent blocks), and each test also shows it can fail: the formula or estimator it
replaces lies outside the same band.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import tempo_rl

from .strategies import cases

BLOCKS = 25


def _node_samples(rng, n: int, m: int, *, q: float, s: float, delta: float, td_coef: float = 1.0):
    """n independent draws of one branch node with m members (the model of Proposition T2).

    Each member draws a token a ~ Bernoulli(1/2) from the node, score l = a - 1/2 (the gradient of
    log pi(a) in the logit; |l|^2 = 1/4 = F exactly), then R = mu + delta + q (2a - 1) + s * N(0, 1),
    mu = 0 fixed. So sigma^2 = q^2 + s^2, g = E[(R - E R) l] = q / 2, rho = q^2 / sigma^2.
    Returns the GRPO and TEMPO node gradients (n,), TEMPO computed from V(child) as the trie does.
    """
    a = rng.integers(0, 2, size=(n, m))  # (n, m)
    score = a - 0.5
    rewards = delta + q * (2 * a - 1) + s * rng.standard_normal((n, m))
    v_node = rewards.mean(1, keepdims=True)  # V(s)
    ones, zeros = a.sum(1, keepdims=True), m - a.sum(1, keepdims=True)
    v_one = (rewards * a).sum(1, keepdims=True) / np.maximum(ones, 1)
    v_zero = (rewards * (1 - a)).sum(1, keepdims=True) / np.maximum(zeros, 1)
    v_child = np.where(a == 1, v_one, v_zero)  # members that took the same token share a child
    grpo = (rewards * score).sum(1)
    tempo = ((rewards + td_coef * (v_child - v_node)) * score).sum(1)
    return grpo, tempo


def _snr(x: np.ndarray) -> float:
    return float(x.mean() ** 2 / x.var())


def _ratio_and_se(grpo: np.ndarray, tempo: np.ndarray) -> tuple[float, float]:
    blocks = [_snr(t) / _snr(g) for g, t in zip(np.array_split(grpo, BLOCKS), np.array_split(tempo, BLOCKS))]
    return _snr(tempo) / _snr(grpo), float(np.std(blocks, ddof=1) / np.sqrt(BLOCKS))


@pytest.mark.parametrize(
    "m,q,s,delta,rejected",
    [
        (2, 0.5, 0.5, 0.0, "m_infinity"),  # r = 0: TEMPO below GRPO
        (2, 0.3, 1.0, 0.4, "m_infinity"),
        (4, 0.5, 0.5, 1.0, "small_signal"),  # r = 2, rho = 1/2: the rho term matters
        (8, 0.4, 1.0, 0.5, "m_infinity"),
        (3, 0.1, 1.0, 0.45, "m_infinity"),  # small signal, r ~ 0.2: the regime measured on the chain task
    ],
)
def test_T2_finite_m_snr_ratio_matches_simulation(m, q, s, delta, rejected):
    rng = np.random.default_rng(1000 * m + int(100 * delta))
    grpo, tempo = _node_samples(rng, 1_000_000, m, q=q, s=s, delta=delta)
    sigma2 = q * q + s * s
    r, rho = delta * delta / sigma2, q * q / sigma2
    measured, se = _ratio_and_se(grpo, tempo)
    predicted = float(tempo_rl.predicted_snr_ratio(m, r, rho))
    assert abs(measured - predicted) <= 4 * se, (measured, predicted, se)
    # The means are exact in m: TEMPO (2m - 1) g, GRPO m g.
    assert abs(tempo.mean() / grpo.mean() - (2 - 1 / m)) <= 4 * se * (2 - 1 / m)
    # Power: the formula this replaces, (1 + r) / (1 + r / 4) (m -> infinity, rho -> 0), or the
    # rho -> 0 form at finite m where rho is large, lies outside the band.
    alternative = (1 + r) / (1 + r / 4) if rejected == "m_infinity" else float(tempo_rl.predicted_snr_ratio(m, r))
    assert abs(measured - alternative) > 4 * se


def test_T2_other_td_coef_matches_simulation():
    """td_coef = 1/2: a = 1 + (1 - 1/m)/2, b = (m - 1)/(4 m^2) in the same formula."""
    m, q, s, delta = 3, 0.4, 0.8, 0.6
    grpo, tempo = _node_samples(np.random.default_rng(5), 1_000_000, m, q=q, s=s, delta=delta, td_coef=0.5)
    sigma2 = q * q + s * s
    measured, se = _ratio_and_se(grpo, tempo)
    predicted = float(tempo_rl.predicted_snr_ratio(m, delta**2 / sigma2, q * q / sigma2, td_coef=0.5))
    assert abs(measured - predicted) <= 4 * se
    assert abs(measured - float(tempo_rl.predicted_snr_ratio(m, delta**2 / sigma2, q * q / sigma2))) > 4 * se


def test_T2_small_signal_limit_values():
    """The rho = 0 form quoted in the note: 0.90 at m = 2, r = 0; break-even at r = 1/(3m - 1);
    the cap (2 - 1/m)^2 as r grows; 1.00-1.11 at r = 0.2, m = 2..8."""
    f = tempo_rl.predicted_snr_ratio
    assert f(2, 0.0) == pytest.approx(0.9, abs=1e-12)
    for m in (2, 3, 8, 64):
        assert f(m, 1 / (3 * m - 1)) == pytest.approx(1.0, abs=1e-12)
        assert f(m, 1e9) == pytest.approx((2 - 1 / m) ** 2, rel=1e-6)
    assert f(2, 0.2) == pytest.approx(1.0, abs=1e-12) and f(8, 0.2) == pytest.approx(1.1029, abs=1e-4)
    assert f(1, 0.7, 0.3) == pytest.approx(1.0)  # a node of one member: both estimators are GRPO


def test_T1_identity_in_simulation():
    """TEMPO at the node is sum_k (2 R_k - mu - V(s)) l_k whatever the children (Proposition T1)."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 3, size=(1000, 5))
    rewards = rng.standard_normal((1000, 5))
    score = a - 1.0
    same = a[:, :, None] == a[:, None, :]  # (n, m, m)
    v_child = (same * rewards[:, None, :]).sum(2) / same.sum(2)
    v_node = rewards.mean(1, keepdims=True)
    direct = ((rewards + v_child - v_node) * score).sum(1)
    assert np.allclose(direct, ((2 * rewards - v_node) * score).sum(1), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ unbiased delta^2, sigma^2


def _mirrored_batch(rng, n_groups: int, m: int, p: float, v_offset: float):
    """Groups of 2m whose mean is exactly mu = 0.5: m members under prefix [1] with rewards
    R ~ Bernoulli(p) + v_offset, and m under [0] with rewards 1 - R (so mu is fixed, T2's assumption).
    Each member then takes its own next token, so [1] is a branch node with m members."""
    rewards = rng.binomial(1, p, size=(n_groups, m)).astype(np.float64) + v_offset
    rows, r, ids = [], [], []
    for g in range(n_groups):
        for k in range(m):
            rows += [[1, 2 + k], [0, 2 + k]]
            r += [rewards[g, k], 1.0 - rewards[g, k]]
            ids += [g, g]
    responses = torch.tensor(rows)
    return responses, torch.ones_like(responses, dtype=torch.bool), torch.tensor(r, dtype=torch.float64), ids


@pytest.mark.parametrize("m,p,v_offset", [(2, 0.5, 0.0), (4, 0.3, 0.0), (3, 0.8, 0.25)])
def test_branch_node_estimators_are_unbiased(m, p, v_offset):
    """E[sigma2] = p (1 - p) and E[delta2] = (p + v_offset - 1/2)^2 at the nodes [1] and [0]."""
    rng = np.random.default_rng(m)
    n_groups = 6000
    stats = tempo_rl.branch_snr_stats(*_mirrored_batch(rng, n_groups, m, p, v_offset), backend="torch")
    inner = (stats.depth == 1).numpy()
    assert inner.sum() == 2 * n_groups and (stats.m.numpy()[inner] == m).all()
    sigma2, delta2 = stats.sigma2.numpy()[inner], stats.delta2.numpy()[inner]
    offset2 = stats.offset.numpy()[inner] ** 2
    truth_sigma2, truth_delta2 = p * (1 - p), (p + v_offset - 0.5) ** 2
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x)) * np.sqrt(2)  # noqa: E731 (the two sides are paired)
    assert abs(sigma2.mean() - truth_sigma2) <= 4 * se(sigma2)
    assert abs(delta2.mean() - truth_delta2) <= 4 * se(delta2)
    # Power: the realised offset^2 and the population variance (divisor m) are biased.
    assert abs(offset2.mean() - truth_delta2) > 4 * se(offset2)
    assert abs(sigma2.mean() * (m - 1) / m - truth_sigma2) > 4 * se(sigma2)


@settings(max_examples=60)
@given(case=cases(max_batch=12, max_len=6, max_group=6, float64=True))
def test_branch_snr_stats_torch_equals_reference(case):
    """Same nodes in the same order (both list them by member set and depth); values within float64
    rounding of mu and of the squares: 2^-44 (1 + max|R|)(1 + spread), about 2^8 G times the
    first-order error 2 spread * G 2^-53 max|R|."""
    fast = tempo_rl.branch_snr_stats(*case.args(), backend="torch")
    ref = tempo_rl.branch_snr_stats(*case.args(), backend="reference")
    for name in ("m", "depth", "group_size"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    if case.rewards.numel():
        r = case.rewards.double()
        atol = 2.0**-44 * (1 + r.abs().max().item()) * (1 + (r.max() - r.min()).item())
        for name in ("offset", "sigma2", "delta2"):
            assert torch.allclose(getattr(fast, name), getattr(ref, name), rtol=0, atol=atol), name


def test_branch_snr_stats_hand_worked():
    """proofs_notes/worked-example.md: nodes "so" (m = 4, the whole group) and "so x =" (m = 2).

    At "so x =" the members are y1 (R = 1) and y2 (R = 0): offset 1/2 - 1/2 = 0, sigma2 = 1/2,
    delta2 = 0 - (1/2)/2 = -1/4. At "so": offset 0, sigma2 = 1/3, delta2 = -1/12.
    """
    y = torch.tensor([[1, 2, 4, 5, 0], [1, 2, 4, 6, 0], [1, 3, 4, 5, 0], [1, 0, 9, 9, 9]])
    mask = torch.tensor([[1] * 5, [1] * 5, [1] * 5, [1, 1, 0, 0, 0]])
    for backend in ("reference", "torch"):
        s = tempo_rl.branch_snr_stats(y, mask, [1.0, 0.0, 1.0, 0.0], [0] * 4, backend=backend)
        got = sorted(zip(s.depth.tolist(), s.m.tolist(), s.sigma2.tolist(), s.delta2.tolist()))
        assert [g[:2] for g in got] == [(1, 4), (3, 2)]
        assert [g[2:] for g in got] == [pytest.approx((1 / 3, -1 / 12)), pytest.approx((0.5, -0.25))]
        assert s.by_size()[2]["nodes"] == 1 and s.as_metrics()["branch_nodes"] == 2.0
