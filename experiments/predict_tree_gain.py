"""Predicted SNR(TEMPO) / SNR(GRPO) of the whole gradient in two tabular task models (a design tool).

`python -m experiments.predict_tree_gain` prints the table quoted in
proofs_notes/tree-rollouts.md, section 5. No training: each row simulates the gradient estimators
of one group at a fixed policy (numpy, seeded, a few seconds in all) in the Dr. GRPO token-sum
form at ratio 1, with TEMPO's TD taken from the realised group (V of parent and child, mu the
group mean), and compares with Proposition T2 at the node the model makes.

Models (every token outside the decisions is deterministic, so members that made the same choices
share their prefix):
- "policy": the policy makes an early choice D1 (correct w.p. p1, one logit per option) and a later
  binary choice D2 (correct w.p. p2); R = w1 [D1 right] + w2 [D2 right] (+ noise). Both logits
  carry signal; the D1 node holds the whole group, where TEMPO is exactly twice GRPO.
- "chance": the early event is drawn by the environment (a masked tool output: no score, no
  gradient), heads w.p. 1/2; R = w1 [heads] + w2 [D2 right] + noise. Only D2's logit carries signal.
"""

from __future__ import annotations

import argparse

import numpy as np

from tempo_rl.prefix_values import predicted_snr_ratio


def _values(groups: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """(n, G) mean reward over the members with the same label in `groups` (n, G)."""
    same = groups[:, :, None] == groups[:, None, :]  # (n, G, G)
    return (same * rewards[:, None, :]).sum(2) / same.sum(2)


def _snr(g: np.ndarray) -> float:
    """|E g|^2 / trace Cov g over the n draws (rows)."""
    return float((g.mean(0) ** 2).sum() / g.var(0).sum())


def simulate(
    model: str,
    *,
    G: int,
    p1: float,
    p2: float,
    w1: float,
    w2: float,
    noise: float = 0.0,
    n: int = 40_000,
    seed: int = 0,
) -> float:
    """SNR ratio of the whole gradient (all logits) for one model; see the module docstring."""
    rng = np.random.default_rng(seed)
    first = rng.random((n, G)) < (p1 if model == "policy" else 0.5)  # D1 right / heads
    second = rng.random((n, G)) < p2
    rewards = w1 * first + w2 * second + noise * rng.standard_normal((n, G))
    mu = rewards.mean(1, keepdims=True)
    v_first = _values(first, rewards)  # the child of the D1 token, parent of D2
    v_second = _values(2 * first + second, rewards)  # the child of the D2 token
    score2 = second - p2
    grpo = [((rewards - mu) * score2).sum(1)]
    tempo = [((rewards - mu + v_second - v_first) * score2).sum(1)]
    if model == "policy":
        score1 = first - p1  # binary D1 in its logit
        grpo.append(((rewards - mu) * score1).sum(1))
        tempo.append(((rewards - mu + v_first - mu) * score1).sum(1))  # D1's parent is the whole group
    return _snr(np.stack(tempo, 1)) / _snr(np.stack(grpo, 1))


ROWS = [
    ("policy", dict(G=16, p1=0.5, p2=0.5, w1=1.0, w2=1.0)),
    ("policy", dict(G=16, p1=0.5, p2=0.9, w1=1.0, w2=0.3)),
    ("policy", dict(G=16, p1=0.2, p2=0.8, w1=0.7, w2=0.3)),
    ("chance", dict(G=16, p1=0.5, p2=0.5, w1=1.0, w2=1.0)),
    ("chance", dict(G=16, p1=0.5, p2=0.5, w1=1.0, w2=0.5)),
    ("chance", dict(G=16, p1=0.5, p2=0.5, w1=1.0, w2=0.5, noise=0.5)),
    ("chance", dict(G=8, p1=0.5, p2=0.5, w1=1.0, w2=0.5, noise=0.5)),
    ("chance", dict(G=16, p1=0.5, p2=0.5, w1=1.0, w2=1.0, noise=1.0)),
    ("chance", dict(G=16, p1=0.5, p2=0.5, w1=0.0, w2=0.5, noise=0.5)),  # the control: no chance offset
]


def t2_at_second_node(model: str, *, G, p1, p2, w1, w2, noise=0.0) -> tuple[float, float, float, float]:
    """(m, r, rho, T2 ratio) at a D2 node, mu treated as fixed at E[R], m at its mean."""
    q = p1 if model == "policy" else 0.5
    m = G * q  # the D1-right (or heads) node; its offset is (1 - q) w1 from E[R]
    sigma2 = w2 * w2 * p2 * (1 - p2) + noise * noise
    r = ((1 - q) * w1) ** 2 / sigma2
    rho = (w2 * p2 * (1 - p2)) ** 2 / (sigma2 * p2 * (1 - p2))
    return m, r, rho, float(predicted_snr_ratio(m, r, rho))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40_000, help="simulated groups per row")
    args = parser.parse_args(argv)
    print("| model | G | p1 | p2 | w1 | w2 | noise | whole-gradient ratio (simulated) | D2 node: m, r, rho | T2 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, kw in ROWS:
        ratio = simulate(model, n=args.draws, **kw)
        m, r, rho, t2 = t2_at_second_node(model, **kw)
        print(
            f"| {model} | {kw['G']} | {kw['p1']} | {kw['p2']} | {kw['w1']} | {kw['w2']} | {kw.get('noise', 0.0)} "
            f"| {ratio:.2f} | {m:.0f}, {r:.2f}, {rho:.2f} | {t2:.2f} |"
        )


if __name__ == "__main__":
    main()
