"""The trust check: a sample of whole groups against the reference, cost bounded by its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tempo_rl


def _batch(n_groups: int, size: int = 3, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    responses = torch.randint(0, 2, (n_groups * size, length), generator=g)
    mask = torch.ones_like(responses, dtype=torch.bool)
    rewards = torch.randint(0, 2, (n_groups * size,), generator=g).float()
    ids = [f"uid-{i // size}" for i in range(n_groups * size)]
    return responses, mask, rewards, ids


def test_agreeing_backends_pass_and_the_sample_is_bounded():
    args = _batch(200)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    report = tempo_rl.check_against_reference(adv, *args, max_groups=3)
    assert report.groups_checked == 3 and report.rows_checked == 9 and report.tokens_checked == 54
    tight = tempo_rl.check_against_reference(adv, *args, max_groups=50, max_tokens=20)
    assert tight.groups_checked == 1  # one group always, then only what fits the token budget


def test_a_difference_names_group_row_and_token():
    args = _batch(2)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    adv[4, 2] += 1e-3  # second group, row 4, token 2
    with pytest.raises(tempo_rl.AdvantageMismatch, match=r"group 'uid-1', row 4, token 2"):
        tempo_rl.check_against_reference(adv, *args, max_groups=2)


def test_the_sampled_groups_are_what_the_reference_gives_for_them_alone():
    """Batch invariance: the check runs the reference on the sampled groups only, and an error in a
    group it did not sample is not seen (so a seed varies the sample from step to step)."""
    args = _batch(10)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    seen = {tempo_rl.check_against_reference(adv, *args, max_groups=1, seed=s).groups_checked for s in range(3)}
    assert seen == {1}
    bad = adv.clone()
    bad[:, :] += 1.0  # every group wrong: any sample catches it
    for s in range(3):
        with pytest.raises(tempo_rl.AdvantageMismatch):
            tempo_rl.check_against_reference(bad, *args, max_groups=1, seed=s)


def test_nan_and_inf_advantages_are_mismatches():
    args = _batch(2)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    for value in (float("nan"), float("inf")):
        bad = adv.clone()
        bad[4, 2] = value
        with pytest.raises(tempo_rl.AdvantageMismatch, match=r"row 4, token 2"):
            tempo_rl.check_against_reference(bad, *args, max_groups=2)


@pytest.mark.parametrize("atol", [float("nan"), float("inf"), -1e-5])
def test_a_tolerance_that_cannot_compare_is_refused(atol):
    args = _batch(2)
    adv = tempo_rl.tempo_advantages(*args, backend="torch") + 1.0  # wrong everywhere
    with pytest.raises(ValueError, match="atol"):
        tempo_rl.check_against_reference(adv, *args, atol=atol)


@pytest.mark.parametrize("name", ["max_groups", "max_tokens"])
def test_a_check_of_nothing_is_refused(name):
    args = _batch(2)
    adv = tempo_rl.tempo_advantages(*args, backend="torch") + 1.0
    with pytest.raises(ValueError, match=name):
        tempo_rl.check_against_reference(adv, *args, **{name: 0})


def test_advantages_of_another_shape_are_named():
    args = _batch(2)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    with pytest.raises(ValueError, match=r"advantages has shape \(6, 5\), expected \(6, 6\)"):
        tempo_rl.check_against_reference(adv[:, :5], *args)
    with pytest.raises(TypeError, match="advantages must be a"):
        tempo_rl.check_against_reference(adv.tolist(), *args)


def test_nan_outside_the_sampled_groups_is_still_a_mismatch():
    """NaN advantages in 6 of 10 groups: whatever 4 groups the sample holds, the whole tensor's
    finiteness is checked (the probe's case gave a clean report for some seeds)."""
    args = _batch(10)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    adv[12:, 1] = float("nan")  # groups uid-4 ... uid-9
    for s in range(8):
        with pytest.raises(
            tempo_rl.AdvantageMismatch, match=r"18 NaN or inf values; the first in group 'uid-4', row 12"
        ):
            tempo_rl.check_against_reference(adv, *args, max_groups=4, seed=s)


@pytest.mark.parametrize("atol", [np.float32(1e-5), np.float64(1e-5), np.int64(1)])
def test_numpy_scalars_are_real_numbers(atol):
    args = _batch(3)
    adv = tempo_rl.tempo_advantages(*args, backend="torch")
    assert tempo_rl.check_against_reference(adv, *args, atol=atol, max_groups=np.int64(2)).groups_checked == 2
    with pytest.raises(TypeError, match="atol must be a real number"):
        tempo_rl.check_against_reference(adv, *args, atol=np.bool_(True))
