"""Every backend gives the contiguous result, bitwise, for the layouts and dtypes users pass.

Strided views (a rewards column of a wider score tensor, every other column of a wider id
tensor), row and column slices of bigger tensors, column-major tensors, stride-0 expanded
rewards, bool/uint8/int32/float masks, int32 ids, group ids as lists, tensors of int32/int64,
numpy arrays or strings. The layout is a hypothesis dimension, so a kernel that assumes one
fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_rl

from .strategies import Case, cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "torch", "triton"]
EXAMPLES = {"reference": 60, "torch": 200, "triton": 40 if DEVICE == "cpu" else 200}
LAYOUTS = ["contiguous", "column_major", "strided", "sliced", "expanded"]


def relayout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values in another memory layout ("expanded" only where the values allow it)."""
    fill = 7
    if how == "column_major" and t.dim() == 2:
        return t.t().contiguous().t()
    if how == "strided":
        if t.dim() == 1:  # e.g. rewards = scores[:, 1] of a (B, 3) score tensor
            wide = torch.full((t.shape[0], 3), fill, dtype=t.dtype, device=t.device)
            wide[:, 1] = t
            return wide[:, 1]
        wide = torch.full((t.shape[0], 2 * t.shape[1] + 1), fill, dtype=t.dtype, device=t.device)
        wide[:, 1::2] = t
        return wide[:, 1::2]
    if how == "sliced":
        big = torch.full(tuple(n + 3 for n in t.shape), fill, dtype=t.dtype, device=t.device)
        view = big[tuple(slice(2, 2 + n) for n in t.shape)]
        view.copy_(t)
        return view
    if how == "expanded" and t.numel() and bool((t == t.flatten()[0]).all()):
        return t.flatten()[:1].reshape((1,) * t.dim()).expand(t.shape)
    return t.contiguous()


MASK_DTYPES = [torch.bool, torch.uint8, torch.int32, torch.float32]


@st.composite
def layouts(draw):
    return {
        "responses": draw(st.sampled_from(LAYOUTS)),
        "ids": draw(st.sampled_from([torch.int64, torch.int32])),
        "mask": draw(st.sampled_from(LAYOUTS)),
        "mask_dtype": draw(st.sampled_from(MASK_DTYPES)),
        "rewards": draw(st.sampled_from(LAYOUTS)),
        "loss": draw(st.sampled_from(LAYOUTS)),
        "loss_dtype": draw(st.sampled_from(MASK_DTYPES)),
        "groups": draw(st.sampled_from(["list", "int64", "int32", "numpy", "str"])),
    }


def _group_ids(case: Case, kind: str):
    dense = {g: i for i, g in enumerate(dict.fromkeys(case.group_ids))}
    index = [dense[g] for g in case.group_ids]
    if kind == "list":
        return index
    if kind == "numpy":
        return np.asarray(index, dtype=np.int64)
    if kind == "str":
        return [f"uid-{i}" for i in index]
    return torch.tensor(index, dtype=getattr(torch, kind), device=DEVICE)


def _inputs(case: Case, lay: dict | None) -> tuple[tuple, dict]:
    lay = lay or {"responses": "contiguous", "ids": torch.int64, "mask": "contiguous", "mask_dtype": torch.bool,
                  "rewards": "contiguous", "loss": "contiguous", "loss_dtype": torch.bool, "groups": "list"}
    on = lambda t: t.to(DEVICE)  # noqa: E731
    responses = relayout(on(case.responses.to(lay["ids"])), lay["responses"])
    mask = relayout(on(case.response_mask.to(lay["mask_dtype"])), lay["mask"])
    rewards = relayout(on(case.rewards), lay["rewards"])
    loss = None if case.loss_mask is None else relayout(on(case.loss_mask.to(lay["loss_dtype"])), lay["loss"])
    return (responses, mask, rewards, _group_ids(case, lay["groups"])), {"loss_mask": loss}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_layout_gives_the_contiguous_result_bitwise(backend):
    @settings(max_examples=EXAMPLES[backend])
    @given(case=cases(max_batch=10, max_len=7), lay=layouts(), coef=st.sampled_from([0.0, 1.0]))
    def check(case, lay, coef):
        base_args, base_kw = _inputs(case, None)
        args, kw = _inputs(case, lay)
        if lay["ids"] == torch.int32:  # the contiguous baseline in the same id dtype
            base_args = (base_args[0].to(torch.int32), *base_args[1:])
        want, want_stats = tempo_rl.tempo_advantages_with_stats(*base_args, **base_kw, td_coef=coef, backend=backend)
        got, got_stats = tempo_rl.tempo_advantages_with_stats(*args, **kw, td_coef=coef, backend=backend)
        assert got.dtype == want.dtype and torch.equal(got, want), lay
        assert [*got_stats.groups.values()] == [*want_stats.groups.values()]

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rewards_column_of_a_score_tensor(backend):
    """The shape of the bug users hit: rewards = scores[:, 0] (stride 2), [1, -1, 0] is right."""
    responses = torch.tensor([[1, 2], [1, 3], [4, 4]], device=DEVICE)
    scores = torch.tensor([[2.0, 9.0], [0.0, 9.0], [1.0, 9.0]], device=DEVICE)
    adv = tempo_rl.grpo_advantages(responses, torch.ones_like(responses), scores[:, 0], [0, 0, 0],
                                   eps=0.0, backend=backend)
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
