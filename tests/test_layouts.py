"""Every backend gives the contiguous result, bitwise, for the layouts and dtypes users pass.

Strided views (a rewards column of a wider score tensor, every other column of a wider id
tensor), row and column slices of bigger tensors, column-major tensors, stride-0 expanded
tensors, bool/uint8/int32/float masks, int32 ids, group ids as lists of ints or strings, numpy
uid arrays, int32/int64 tensors: `tempo_rl.testing.strategies.layouts_of`, whose views sit in
memory poisoned with NaN / True / int max. The layout is a hypothesis dimension, so a kernel that
assumes one fails here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.testing.strategies import Case, cases, layouts_of

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "torch", "triton"]
EXAMPLES = {"reference": 60, "torch": 200, "triton": 40 if DEVICE == "cpu" else 200}


def _on_device(case: Case) -> tuple[tuple, dict]:
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    ids = case.group_ids.to(DEVICE) if isinstance(case.group_ids, torch.Tensor) else case.group_ids
    return (on(case.responses), on(case.response_mask), on(case.rewards), ids), {"loss_mask": on(case.loss_mask)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_layout_gives_the_contiguous_result_bitwise(backend):
    @settings(max_examples=EXAMPLES[backend])
    @given(case=cases(max_batch=10, max_len=7), data=st.data(), coef=st.sampled_from([0.0, 1.0]))
    def check(case, data, coef):
        how = data.draw(layouts_of(case))
        # The baseline: the same dtypes and group ids, contiguous.
        plain = replace(
            how,
            responses=(how.responses[0], "contiguous"),
            response_mask=(how.response_mask[0], "contiguous"),
            rewards="contiguous",
            loss_mask=(how.loss_mask[0], "contiguous"),
        )
        base_args, base_kw = _on_device(plain.apply(case))
        args, kw = _on_device(how.apply(case))
        want, want_stats = tempo_rl.tempo_advantages_with_stats(*base_args, **base_kw, td_coef=coef, backend=backend)
        got, got_stats = tempo_rl.tempo_advantages_with_stats(*args, **kw, td_coef=coef, backend=backend)
        assert got.dtype == want.dtype and torch.equal(got, want), how.describe()
        assert [*got_stats.groups.values()] == [*want_stats.groups.values()]

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rewards_column_of_a_score_tensor(backend):
    """The shape of the bug users hit: rewards = scores[:, 0] (stride 2), [1, -1, 0] is right."""
    responses = torch.tensor([[1, 2], [1, 3], [4, 4]], device=DEVICE)
    scores = torch.tensor([[2.0, 9.0], [0.0, 9.0], [1.0, 9.0]], device=DEVICE)
    adv = tempo_rl.grpo_advantages(
        responses, torch.ones_like(responses), scores[:, 0], [0, 0, 0], eps=0.0, backend=backend
    )
    assert adv[:, 0].tolist() == [1.0, -1.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stride_zero_rewards(backend):
    """r[:1].expand(B): equal rewards, every advantage exactly 0, nothing read past the storage."""
    responses = torch.tensor([[1, 2], [1, 3], [4, 4]], device=DEVICE)
    r = torch.tensor([0.5], device=DEVICE)[:1].expand(3)
    adv = tempo_rl.tempo_advantages(responses, torch.ones_like(responses), r, [0, 0, 0], backend=backend)
    assert torch.equal(adv, torch.zeros(3, 2, device=DEVICE))


@pytest.mark.parametrize("ids", [{0, 1}, {"a": 0, "b": 1}, frozenset({0, 1})])
def test_unordered_group_ids_are_rejected(ids):
    y = torch.tensor([[1], [2]])
    with pytest.raises(TypeError, match="group_ids must be an ordered sequence"):
        tempo_rl.tempo_advantages(y, torch.ones_like(y), [1.0, 0.0], ids)
