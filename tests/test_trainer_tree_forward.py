"""`tempo-rl train` on the tree (`tree_forward`, on by default for tree rollouts): the micro-batch losses
equal the row-by-row ones, and a run with and without it gives the same curve (float32 rounding)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tempo_rl.trainer import update
from tempo_rl.trainer.config import TrainConfig
from tempo_rl.trainer.loading import load_policy
from tempo_rl.trainer.rollout import SamplingConfig, sample_groups
from tempo_rl.trainer.scoring import score_logprobs
from tempo_rl.trainer.tiny import build_tokenizer


def _tree_rollout(model, tok, cfg):
    torch.manual_seed(0)
    sampling = SamplingConfig(max_new_tokens=8, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return sample_groups(model, tok, ["1+2=", "34+5="], sampling, group_size=4, tree=cfg.tree_config())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean"])
@pytest.mark.parametrize("with_old", [False, True])
def test_micro_loss_on_the_tree_equals_row_by_row(tiny_path, fused, aggregation, with_old):
    """One micro-batch of a tree rollout: loss, metrics and every parameter's gradient agree with and
    without tree_forward, KL on; old and reference scores agree too."""
    model, tok = load_policy(tiny_path, torch.device("cpu"))[1], build_tokenizer()
    on = TrainConfig(model=tiny_path, kl_coef=0.1, aggregation=aggregation, rollout="tree", fused_loss=fused)
    off = dataclasses.replace(on, tree_forward=False)
    roll = _tree_rollout(model, tok, on)
    mask = roll.loss_mask.bool()
    scores = [score_logprobs(model, roll, c, None) for c in (on, off)]
    torch.testing.assert_close(scores[0][mask], scores[1][mask], rtol=1e-5, atol=1e-5)
    adv = torch.randn(roll.responses.shape) * mask  # (B, Lr) token advantages
    ref = scores[1] + 0.1 * torch.randn(roll.responses.shape)
    old = scores[0] - 0.3 * torch.randn(roll.responses.shape) if with_old else None
    if old is not None:  # a tree forward gives rows through one node one old value
        old = score_logprobs(model, roll, on, None) - 0.3
    denom = 2.0 * (roll.n_loss_tokens if aggregation == "token-mean" else roll.responses.shape[0])
    results = []
    for cfg in (on, off):
        fn = update.micro_loss_fused if fused else update.micro_loss_unfused
        model.zero_grad(set_to_none=True)
        loss, metrics = fn(model, roll, update.MicroTargets(adv, old, ref, denom), cfg, None)
        loss.backward()
        results.append((loss.detach(), metrics, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, m0, g0), (l1, m1, g1) = results
    torch.testing.assert_close(l0, l1, rtol=1e-5, atol=1e-6)
    for key in m1:
        torch.testing.assert_close(
            torch.as_tensor(m0[key]).float(), torch.as_tensor(m1[key]).float(), rtol=1e-4, atol=1e-5
        )
    for name in g1:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_tree_run_gives_the_same_curve_with_and_without_tree_forward(tiny_path, tmp_path):
    """Three steps of a tree-rollout run (two PPO epochs, two mini-batches, KL on): the metric rows
    agree to float32 rounding with and without the tree forward."""
    from tempo_rl.trainer.train import train

    def run(name: str, tree_forward: bool):
        cfg = TrainConfig(
            model=tiny_path,
            rollout="tree",
            tree_forward=tree_forward,
            prompts_per_step=2,
            group_size=4,
            max_new_tokens=8,
            mini_batches=2,
            ppo_epochs=2,
            kl_coef=0.05,
            steps=3,
            lr=1e-3,
            lr_warmup_steps=1,
            eval_every=0,
            save_final=False,
            progress=False,
            tensorboard=False,
            threads=1,
            output_dir=str(tmp_path / name),
            reward="tests.test_trainer:digit_reward",
        )
        return train(cfg)

    on, off = run("on", True), run("off", False)
    keys = ("reward_mean", "loss", "kl_ref", "clip_fraction", "approx_kl", "grad_norm", "entropy")
    for a, b in zip(on, off):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (a["step"], key, a[key], b[key])
        assert a["tokens_generated"] == b["tokens_generated"]


def test_tree_rollouts_keep_whole_groups_in_a_mini_batch():
    """With tree rollouts each epoch's row order is a permutation that keeps every group contiguous
    (so a mini-batch holds whole trees), different across epochs and steps, and a pure function of
    (seed, step, epoch); independent rollouts keep the free shuffle."""
    groups = torch.arange(8).repeat_interleave(4)[torch.randperm(32, generator=torch.Generator().manual_seed(3))]
    tree = TrainConfig(rollout="tree", prompts_per_step=8, group_size=4)
    order = update.minibatch_order(groups, tree, step=5, epoch=0)
    assert sorted(order.tolist()) == list(range(32))
    runs = groups[order]
    assert (runs[1:] != runs[:-1]).sum() == 7  # eight groups, each one contiguous run
    assert torch.equal(order, update.minibatch_order(groups, tree, step=5, epoch=0))
    assert not torch.equal(order, update.minibatch_order(groups, tree, step=5, epoch=1))
    assert not torch.equal(order, update.minibatch_order(groups, tree, step=6, epoch=0))
    free = update.minibatch_order(groups, dataclasses.replace(tree, rollout="independent"), step=5, epoch=0)
    expected = torch.randperm(32, generator=torch.Generator().manual_seed(tree.seed * 1_000_003 + 5 * 101))
    assert torch.equal(free, expected)
