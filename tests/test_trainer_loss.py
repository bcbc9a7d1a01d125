"""Loss pieces of the trainer against values worked by hand."""

import math

import pytest
import torch

from tempo_rl.fast.policy_loss_torch import k3
from tempo_rl.trainer.loss import aggregate, policy_loss, token_logprobs


def _lp(ratios):
    return torch.log(torch.tensor([ratios], dtype=torch.float64))


def test_clip_upper_side_only_binds_positive_advantages():
    # ratios 1.5 (> 1 + 0.28) and 0.5 (< 1 - 0.2); A = +1 then -1 on each.
    logp, old = _lp([1.5, 0.5, 1.5, 0.5]), torch.zeros(1, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    out = policy_loss(logp, old, adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.28, aggregation="token-mean")
    # per token -min(r A, clip(r) A):
    #   r=1.5, A=+1: -min(1.5, 1.28) = -1.28   (clipped above, no gradient)
    #   r=0.5, A=+1: -min(0.5, 0.8)  = -0.5    (unclipped: pessimistic side)
    #   r=1.5, A=-1: -min(-1.5, -1.28) = 1.5   (unclipped)
    #   r=0.5, A=-1: -min(-0.5, -0.8)  = 0.8   (clipped below, no gradient)
    assert out.loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 0.8) / 4)
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_clip_gradient_is_zero_on_clipped_tokens():
    logp = _lp([1.5, 0.5, 1.5, 0.5]).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    policy_loss(logp, torch.zeros(1, 4, dtype=torch.float64), adv, torch.ones(1, 4)).loss.backward()
    # d/dlogp of -r*A = -r*A/4 on the unclipped tokens, 0 on the clipped ones
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 4, 1.5 / 4, 0.0])


def test_ratio_one_gives_minus_mean_advantage():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    tok = policy_loss(logp, logp, adv, mask, aggregation="token-mean").loss
    seq = policy_loss(logp, logp, adv, mask, aggregation="sequence-mean").loss
    assert tok.item() == pytest.approx(-(1 + 2 + 3 + 4) / 4)  # every token weighs 1/4
    assert seq.item() == pytest.approx(-((1 + 2 + 3) / 3 + 4 / 1) / 2)  # each response weighs 1/2


def test_aggregate_denominator_override_sums_micro_batches():
    values = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    for mode, denom in (("token-mean", 5.0), ("sequence-mean", 2.0)):
        whole = aggregate(values, mask, mode)
        parts = aggregate(values[:1], mask[:1], mode, denom) + aggregate(values[1:], mask[1:], mode, denom)
        assert parts.item() == pytest.approx(whole.item())
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(values, mask, "sum")


def test_k3_kl_hand_values():
    # r = pi_ref / pi; k3 = r - log r - 1
    logp = torch.log(torch.tensor([0.5, 0.2, 0.3]))
    ref = torch.log(torch.tensor([0.5, 0.4, 0.1]))
    expected = [0.0, 2 - math.log(2) - 1, 1 / 3 - math.log(1 / 3) - 1]
    assert k3(logp, ref)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert (k3(torch.randn(100), torch.randn(100))[0] >= 0).all()


def test_kl_term_added_with_coefficient():
    logp = torch.log(torch.tensor([[0.2, 0.3]]))
    ref = torch.log(torch.tensor([[0.4, 0.1]]))
    adv = torch.zeros(1, 2)
    out = policy_loss(logp, logp, adv, torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    kl = ((2 - math.log(2) - 1) + (1 / 3 - math.log(1 / 3) - 1)) / 2
    assert out.kl.item() == pytest.approx(kl, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.1 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, adv, torch.ones(1, 2), kl_coef=0.1)


def test_token_logprobs_matches_log_softmax():
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets), expected, atol=1e-6)
