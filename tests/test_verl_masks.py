"""verl's masks as TEMPO takes them, tested without verl: the multi-turn `response_mask` has holes
(tool output), so the plug-in passes the response's span as the response mask and verl's mask as
the loss mask (`tempo_rl.integrations.verl.tree_and_loss_masks`). The plug-in module imports
verl's `core_algos` to register itself; a stub stands in for it here, and
tests/integrations/test_verl.py runs the same path inside an installed verl.
"""

from __future__ import annotations

import doctest
import importlib
import sys
import types

import numpy as np
import pytest
import torch

import tempo_rl
import tempo_rl.integrations

NAME = "tempo_rl.integrations.verl"


@pytest.fixture
def verl_plugin(monkeypatch):
    """The plug-in module, imported against a stub of verl's estimator registry."""
    core_algos = types.ModuleType("verl.trainer.ppo.core_algos")
    core_algos.register_adv_est = lambda name: lambda fn: fn  # type: ignore[attr-defined]
    for name in ("verl", "verl.trainer", "verl.trainer.ppo"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", core_algos)
    sys.modules["verl.trainer.ppo"].core_algos = core_algos  # type: ignore[attr-defined]
    saved = sys.modules.pop(NAME, None)
    had_attr = hasattr(tempo_rl.integrations, "verl")
    try:
        yield importlib.import_module(NAME)
    finally:
        sys.modules.pop(NAME, None)
        if saved is not None:
            sys.modules[NAME] = saved
        elif not had_attr and hasattr(tempo_rl.integrations, "verl"):
            delattr(tempo_rl.integrations, "verl")


# Response 0: two turns with tool output between them; response 1 ends in tool output, the token
# that response 2 continues with: verl's response_mask is 0 on tool output (and on padding).
RESPONSES = torch.tensor([[5, 6, 7, 8, 2, 0], [5, 3, 2, 0, 0, 0], [5, 3, 2, 9, 0, 0]])
VERL_MASK = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
SPAN = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
PROMPT = torch.tensor([[0, 4, 4], [0, 4, 4], [4, 4, 4]])  # left-padded prompts
ATTENTION = torch.cat([PROMPT, SPAN], dim=1)  # (B, P + L)
REWARDS = torch.tensor([1.0, 0.0, 0.5])
UIDS = np.array(["p0", "p0", "p0"], dtype=object)


def test_the_holey_mask_itself_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"row 0 has a hole at position 2 .*pass the contiguous span as response_mask"):
        tempo_rl.tempo_advantages(RESPONSES, VERL_MASK, REWARDS, list(UIDS))


def test_span_from_attention_mask_and_loss_from_verls_mask(verl_plugin):
    span, loss = verl_plugin.tree_and_loss_masks(VERL_MASK, attention_mask=ATTENTION)
    assert torch.equal(span, SPAN.bool()) and torch.equal(loss, VERL_MASK)
    span, _ = verl_plugin.tree_and_loss_masks(VERL_MASK, lengths=torch.tensor([5, 3, 4]))
    assert torch.equal(span, SPAN.bool())
    # Without either, the span runs to the last 1 of verl's mask: tool output in the middle stays
    # in the tree, tool output at the end (response 1) cannot be told from padding.
    span, _ = verl_plugin.tree_and_loss_masks(VERL_MASK)
    assert span.sum(1).tolist() == [5, 2, 4]


def test_a_loss_token_outside_the_span_is_refused(verl_plugin):
    attention = ATTENTION.clone()
    attention[0, -2] = 0  # response 0's last token no longer in its span
    with pytest.raises(ValueError, match=r"response_mask row 0 is 1 at position 4, outside the response's span"):
        verl_plugin.tree_and_loss_masks(VERL_MASK, attention_mask=attention)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 4\)"):
        verl_plugin.tree_and_loss_masks(VERL_MASK, attention_mask=ATTENTION[:, :4])


def _rewards_on_last_token() -> torch.Tensor:
    out = torch.zeros(RESPONSES.shape)
    out[torch.arange(3), SPAN.sum(1) - 1] = REWARDS
    return out


@pytest.mark.parametrize("how", ["keyword", "context"])
def test_estimator_trains_the_holey_mask_on_the_spans_tree(verl_plugin, how):
    expected = tempo_rl.tempo_advantages(RESPONSES, SPAN, REWARDS, list(UIDS), loss_mask=VERL_MASK)
    assert (expected[VERL_MASK == 0] == 0).all() and (expected[0, :2] != 0).all()
    # Response 1's tool token is in the tree: node [5, 3, 2] holds responses 1 and 2, so response
    # 2's token 2 does not branch (TD = 0), which a tree cut at verl's last 1 would miss.
    to_last_one = torch.arange(6)[None, :] < torch.tensor([[5], [2], [4]])
    cut = tempo_rl.tempo_advantages(RESPONSES, to_last_one, REWARDS, list(UIDS), loss_mask=VERL_MASK)
    assert expected[2, 2] == expected[2, 0] != cut[2, 2]
    if how == "keyword":
        adv, returns = verl_plugin.compute_tempo_outcome_advantage(
            _rewards_on_last_token(), VERL_MASK, UIDS, {}, responses=RESPONSES, attention_mask=ATTENTION
        )
    else:
        with verl_plugin.response_tokens(RESPONSES, attention_mask=ATTENTION):
            adv, returns = verl_plugin.compute_tempo_outcome_advantage(_rewards_on_last_token(), VERL_MASK, UIDS, {})
    assert torch.equal(adv, expected) and torch.equal(returns, expected)


def test_doctest(verl_plugin):
    result = doctest.testmod(verl_plugin, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
