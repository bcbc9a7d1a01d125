"""Environment tokens inside a response, the `luck` task, and the branch-node diagnostic in the trainer.

An environment token (`ChanceToken`) is drawn by the sampler, not the policy, in independent and tree
sampling; it stays in the response (so in the group's prefix tree) with loss_mask 0, so its advantage is
0 while TEMPO's TD still applies to the tokens after it.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import tempo_rl
from tempo_rl.trainer import train as train_mod
from tempo_rl.trainer.config import TrainConfig
from tempo_rl.trainer.data import CHANCE_TOKENS, LUCK_PREAMBLE, load_dataset
from tempo_rl.trainer.loading import chance_token, load_policy
from tempo_rl.trainer.rewards import luck_reward
from tempo_rl.trainer.rollout import ChanceToken, Rollout, sample_groups
from tempo_rl.trainer.tiny import _noisy_demo, build_tokenizer
from tempo_rl.trainer.tree_rollout import SamplingConfig, TreeConfig, sample_tree

HEADS, TAILS = 30, 31  # token ids the environment draws in the sampler tests


@pytest.fixture(scope="module")
def policy(tiny_path):
    return load_policy(tiny_path, torch.device("cpu"))


def digit_reward(completion: str, answer: str) -> float:
    return float(sum(c.isdigit() for c in completion))


# ----------------------------------------------------------------------------- the chance token
def test_chance_token_rejects_bad_arguments():
    with pytest.raises(ValueError, match="position"):
        ChanceToken(position=-1, token_ids=(1,))
    with pytest.raises(ValueError, match="token_ids"):
        ChanceToken(position=0, token_ids=())


@pytest.mark.parametrize("greedy", [False, True])
def test_independent_sampling_writes_the_environment_draw(policy, greedy):
    tokenizer, model = policy
    torch.manual_seed(0)
    chance = ChanceToken(position=2, token_ids=(HEADS, TAILS))
    tok = build_tokenizer()
    sampling = SamplingConfig(
        max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, chance=chance, greedy=greedy
    )
    roll = sample_groups(model, tok, ["12+34=", "5+6="], sampling, group_size=16, tree=None)
    reached = roll.response_mask[:, 2].bool()
    assert reached.any()
    drawn = roll.responses[reached, 2]
    assert set(drawn.tolist()) == {HEADS, TAILS}  # a uniform draw, even under greedy decoding
    assert (roll.loss_mask[:, 2] == 0).all()
    keep = roll.response_mask.clone()
    keep[:, 2] = 0
    assert torch.equal(roll.loss_mask, keep)  # only the chance position is masked
    assert torch.equal(roll.select(torch.tensor([1, 0])).loss_mask, roll.loss_mask[[1, 0]])


def test_tree_sampling_writes_the_draw_and_forks_after_it(policy):
    model = policy[1]
    chance = ChanceToken(position=3, token_ids=(HEADS, TAILS))
    sampling = SamplingConfig(max_new_tokens=10, eos_token_id=None, pad_token_id=0, chance=chance)
    tree = TreeConfig(n_roots=4, fork_at="entropy", min_fork_depth=1)  # the budget alone would allow depth 1
    out = sample_tree(
        model, [[5, 6, 7], [8, 9]], group_size=12, sampling=sampling, tree=tree,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert set(out.responses[:, 3].tolist()) == {HEADS, TAILS}
    children = out.parent >= 0
    assert children.any() and (out.fork_depth[children] > chance.position).all()
    for row in children.nonzero()[:, 0].tolist():  # a child shares its parent's draw
        assert out.responses[row, 3] == out.responses[out.parent[row], 3]
    assert torch.allclose(out.logprobs[:, 3], torch.full((len(out.logprobs),), -math.log(2)))


# ----------------------------------------------------------------------------- advantages around it
def test_chance_token_gets_zero_advantage_and_td_applies_after_it():
    """G = 4: the environment writes H (rows 0, 1) or T (rows 2, 3) at position 1; then each half
    branches at position 2. TEMPO's advantages are the unmasked ones except at position 1, and at
    the branch after the chance token they differ from GRPO's by the TD term."""
    h, t = HEADS, TAILS
    responses = torch.tensor([[7, h, 4, 9], [7, h, 5, 9], [7, t, 4, 9], [7, t, 5, 9]])
    mask = torch.ones_like(responses)
    rewards = torch.tensor([1.5, 1.0, 0.5, 0.0])
    chance = ChanceToken(position=1, token_ids=(h, t))
    roll = Rollout(responses[:, :1], torch.ones(4, 1, dtype=torch.long), responses, mask,
                   torch.zeros(4, dtype=torch.long), [""] * 4, {}, chance.loss_mask(mask))  # fmt: skip
    cfg = TrainConfig(estimator="tempo", backend="reference")
    adv = train_mod.compute_advantages(roll, rewards, cfg).advantages
    unmasked = tempo_rl.tempo_advantages(responses, mask, rewards, [0] * 4, backend="reference")
    grpo = train_mod.compute_advantages(roll, rewards, TrainConfig(estimator="grpo", backend="reference")).advantages
    assert (adv[:, 1] == 0).all() and (grpo[:, 1] == 0).all()
    keep = [0, 2, 3]
    assert torch.allclose(adv[:, keep], unmasked[:, keep])
    # position 2 under heads: V(H) = 1.25, V(H 4) = 1.5, so TD adds (1.5 - 1.25) / std to row 0
    std = float(rewards.std())
    assert adv[0, 2] - grpo[0, 2] == pytest.approx(0.25 / (std + 1e-6), rel=1e-5)
    assert adv[1, 2] - grpo[1, 2] == pytest.approx(-0.25 / (std + 1e-6), rel=1e-5)


# ----------------------------------------------------------------------------- the luck task
def test_luck_reward_pays_heads_and_half_for_the_answer():
    assert luck_reward(f"{LUCK_PREAMBLE}H 7+8=15,4+3+1=8;85", "85") == 1.5
    assert luck_reward(f"{LUCK_PREAMBLE}T 7+8=15,4+3+1=8;85", "85") == 0.5
    assert luck_reward(f"{LUCK_PREAMBLE}H 7+8=15,4+3=7;75", "85") == 1.0
    assert luck_reward(f"{LUCK_PREAMBLE}T 7+8=15,4+3=7;75", "85") == 0.0


def test_luck_demonstrations_and_chance_position():
    rng = random.Random(0)
    demos = [_noisy_demo("luck", rng, 0.5, 0.1) for _ in range(400)]
    coins = [r[len(LUCK_PREAMBLE)] for _, r in demos]
    assert set(coins) == {"H", "T"} and 150 < coins.count("H") < 250
    right = [luck_reward(r, str(eval(p[:-1]))) % 1 == 0.5 for p, r in demos]
    assert 150 < sum(right) < 250  # the carry forgotten half of the time, no other error
    tok = build_tokenizer()
    cfg = TrainConfig(dataset="luck")
    chance = chance_token(tok, cfg)
    assert chance is not None and chance.position == len(LUCK_PREAMBLE)
    assert chance.token_ids == tuple(tok.convert_tokens_to_ids(list(CHANCE_TOKENS["luck"][1])))
    assert chance_token(tok, TrainConfig(dataset="add")) is None
    assert load_dataset("luck", n=5, seed=3) == load_dataset("add", n=5, seed=3)


# ----------------------------------------------------------------------------- trainer end to end
@pytest.mark.parametrize("rollout", ["independent", "tree"])
def test_luck_trains_and_logs_the_branch_diagnostic(tiny_path, tmp_path, rollout):
    cfg = TrainConfig(
        model=tiny_path, output_dir=str(tmp_path), dataset="luck", reward=["luck"], eval_reward=["numeric"],
        steps=2, prompts_per_step=2, group_size=4, max_new_tokens=14, mini_batches=2, lr=1e-3,
        eval_every=2, eval_prompts=4, save_final=False, progress=False, threads=1, rollout=rollout,
        min_fork_depth=11, backend="reference",
    )  # fmt: skip
    history = train_mod.train(cfg)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert len(steps) == 2 and len(history) == 3
    for r in steps:
        assert r["branch_nodes"] >= 0 and "branch_inner_nodes" in r
        assert r["reward_mean"] >= 0 and r["loss"] == r["loss"]


def test_diagnostic_gives_zero_for_undefined_values_and_keeps_its_keys():
    y = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 5, 6], [1, 5, 7]])
    mask = torch.ones_like(y)
    flat = tempo_rl.branch_snr_stats(y, mask, [1.0, 1.0, 1.0, 1.0], [0] * 4).as_metrics(prefix="x/")
    assert flat["x/branch_nodes"] == 3.0 and flat["x/branch_inner_nodes"] == 2.0
    assert flat["x/branch_node_mean_m"] == pytest.approx(8 / 3)
    assert flat["x/branch_r_unbiased"] == 0.0  # no outcome variance: r is undefined, logged as 0
    alone = tempo_rl.branch_snr_stats(y[:1], mask[:1], [1.0], [0]).as_metrics()
    keys = {"branch_nodes", "branch_inner_nodes", "branch_node_mean_m", "branch_r_unbiased"}
    assert alone == dict.fromkeys(keys, 0.0)
    varied = tempo_rl.branch_snr_stats(y, mask, [2.0, 1.0, 0.0, 0.0], [0] * 4).as_metrics()
    # node "1 2": offset 1.5 - 0.75, sigma2 0.5, delta2 0.5625 - 0.25; node "1 5": offset -0.75, sigma2 0
    assert varied["branch_r_unbiased"] == pytest.approx((0.3125 + 0.5625) / 0.5)
