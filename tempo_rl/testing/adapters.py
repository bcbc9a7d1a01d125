"""Adapters: call a TEMPO implementation the way its own signature wants.

`check_implementation` speaks one language, a `Case` (padded tensors, group ids, optional loss
mask) and the options norm_by_std / eps / td_coef; an `Implementation` turns that into a call of
the function under test and hands back what it returned. Three signatures are covered:

- `plain(fn)`: `fn(responses, response_mask, rewards, group_ids, **options) -> (B, L)`, the
  signature of `tempo_rl.tempo_advantages`; it receives every memory layout and dtype drawn.
- `verl_estimator(fn)`: verl's advantage estimator,
  `fn(token_level_rewards, response_mask, index, config, responses=..., response_lengths=...)
  -> (advantages, returns)`, called as `tempo_rl.integrations.verl` is.
- `per_row(fn)`: a loop over Python lists, `fn(sequences, rewards, group_ids, **options) ->
  list of rows`, the shape of the reference (`tempo_rl.reference.tempo_advantages`) and of the
  authors' released per-token loop.

Options a function does not take are declared with `supports=` (a subset of OPTIONS), never
guessed from its signature: an undeclared option is passed, and a function that rejects it fails
with a message saying to declare it. An option left out is not passed; the check then assumes the
function behaves as the value given to `check_implementation` (e.g. a function hard-wired to
norm_by_std=True is checked with norm_by_std=True), and a function without "loss_mask" is never
given one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .strategies import Case

__all__ = ["OPTIONS", "Implementation", "per_row", "plain", "verl_estimator"]

OPTIONS = ("loss_mask", "norm_by_std", "eps", "td_coef")


@dataclass(frozen=True)
class Implementation:
    """A function under test with its calling convention.

    name: shown in reports.
    supports: the options of OPTIONS the function takes.
    call: (case, options) -> what the function returned for that batch; `options` holds
        norm_by_std, eps and td_coef (all three; the adapter passes the supported ones).
    layouts: whether the function receives the drawn layouts and dtypes (`presentations`) or
        contiguous tensors only (an adapter that builds its own inputs).
    device: where the adapter moves the tensors before the call (None: they stay on the CPU);
        shown in the reproduction of a counterexample.
    """

    name: str
    supports: frozenset[str]
    call: Callable[[Case, dict[str, Any]], Any]
    layouts: bool = True
    device: str | None = None


def _supports(supports: Iterable[str]) -> frozenset[str]:
    if isinstance(supports, str):
        supports = (supports,)
    chosen = frozenset(supports)
    unknown = chosen - set(OPTIONS)
    if unknown:
        raise ValueError(f"supports: unknown option(s) {sorted(unknown)}; the options are {OPTIONS}")
    return chosen


def _name(fn: Callable, name: str | None) -> str:
    if name is not None:
        return name
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{qual}" if module else qual


def _move(x: Any, device: str | torch.device | None) -> Any:
    return x.to(device) if device is not None and isinstance(x, torch.Tensor) else x


def _device_name(device: str | torch.device | None) -> str | None:
    return None if device is None else str(torch.device(device))


def plain(
    fn: Callable[..., Any],
    *,
    supports: Iterable[str] = OPTIONS,
    name: str | None = None,
    device: str | torch.device | None = None,
) -> Implementation:
    """`fn(responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True,
    eps=1e-6, td_coef=1.0) -> (B, L)` tensor or array, like `tempo_rl.tempo_advantages`.

    Args:
        fn: responses (B, L) int, response_mask (B, L) 0/1, rewards (B,) float, group_ids (B,)
            ints, strings or an int tensor, in every layout and dtype `presentations` draws.
        supports: the options fn takes (default: all of OPTIONS).
        name: for reports (default: fn's module and qualified name).
        device: move the tensors there first (e.g. "cuda" for a GPU kernel).

    >>> import tempo_rl
    >>> impl = plain(tempo_rl.tempo_advantages)
    >>> sorted(impl.supports)
    ['eps', 'loss_mask', 'norm_by_std', 'td_coef']
    """
    chosen = _supports(supports)

    def call(case: Case, options: dict[str, Any]) -> Any:
        kwargs = {k: v for k, v in options.items() if k in chosen}
        if "loss_mask" in chosen and case.loss_mask is not None:
            kwargs["loss_mask"] = _move(case.loss_mask, device)
        args = [_move(x, device) for x in case.args()]
        return fn(*args, **kwargs)

    return Implementation(_name(fn, name), chosen, call, layouts=True, device=_device_name(device))


def _verl_inputs(case: Case, chosen: frozenset[str]) -> tuple[torch.Tensor, ...]:
    """verl's tensors for a batch: token_level_rewards, response_mask, responses, lengths.

    The outcome reward sits on each response's last token (column 0 for an empty response), so its
    row sum is R_i as in verl's GRPO; verl's response_mask is the loss mask (0 on padding and, with
    a loss mask, wherever that is 0); the tree's extent comes from response_lengths, as the
    integration's trainer passes it. A batch of width 0 gets one all-padding column, since verl's
    rewards need a place to sit.
    """
    lengths = torch.tensor(case.lengths, dtype=torch.int64)  # (B,)
    B, L = case.responses.shape
    width = max(L, 1)
    responses = torch.zeros((B, width), dtype=case.responses.dtype)
    responses[:, :L] = case.responses
    cols = torch.arange(width)
    keep = cols[None, :] < lengths[:, None]  # (B, width)
    if "loss_mask" in chosen and case.loss_mask is not None:
        keep[:, :L] &= case.loss_mask.bool()
    token_rewards = torch.zeros((B, width), dtype=case.rewards.dtype)
    token_rewards[torch.arange(B), (lengths - 1).clamp(min=0)] = case.rewards
    return token_rewards, keep.to(torch.int64), responses, lengths


def verl_estimator(
    fn: Callable[..., Any],
    *,
    supports: Iterable[str] = OPTIONS,
    name: str | None = None,
    device: str | torch.device | None = None,
) -> Implementation:
    """A verl advantage estimator: `fn(token_level_rewards, response_mask, index, config, *,
    responses, response_lengths) -> (advantages, returns)`, as `tempo_rl.integrations.verl`'s
    `compute_tempo_outcome_advantage` is called.

    Args:
        fn: receives token_level_rewards (B, L) float (R_i on the last token of response i),
            response_mask (B, L) int64 (the loss mask: 0 on padding and where the loss mask is 0),
            index (B,) numpy object array of uid strings, config a dict with the supported keys of
            `norm_adv_by_std_in_grpo`, `tempo_eps`, `tempo_td_coef`, and the keywords `responses`
            (B, L) int token ids and `response_lengths` (B,) int64. Only the advantages (the first
            element of a returned tuple) are checked.
        supports: the options fn reads (default: all of OPTIONS); "loss_mask" means it honours
            zeros of response_mask inside a response without cutting the tree there.
        name, device: as for `plain`.
    """
    chosen = _supports(supports)
    keys = {"norm_by_std": "norm_adv_by_std_in_grpo", "eps": "tempo_eps", "td_coef": "tempo_td_coef"}

    def call(case: Case, options: dict[str, Any]) -> Any:
        token_rewards, mask, responses, lengths = (_move(x, device) for x in _verl_inputs(case, chosen))
        index = np.array([f"uid-{g!r}" for g in case.group_list], dtype=object)
        config = {keys[k]: v for k, v in options.items() if k in chosen}
        out = fn(token_rewards, mask, index, config, responses=responses, response_lengths=lengths)
        advantages = out[0] if isinstance(out, (tuple, list)) else out
        if case.responses.shape[1] == 0 and getattr(advantages, "ndim", 0) == 2:
            advantages = advantages[:, :0]  # the column added for the rewards
        return advantages

    return Implementation(_name(fn, name), chosen, call, layouts=False, device=_device_name(device))


def per_row(
    fn: Callable[..., Any],
    *,
    supports: Iterable[str] = OPTIONS,
    name: str | None = None,
) -> Implementation:
    """A loop over Python lists: `fn(sequences, rewards, group_ids, *, loss_masks=None,
    norm_by_std=True, eps=1e-6, td_coef=1.0) -> list[list[float]]`, the signature of
    `tempo_rl.reference.tempo_advantages`.

    Args:
        fn: receives sequences (B lists of n_i ints, padding dropped), rewards (B floats),
            group_ids (B Python values) and, when "loss_mask" is supported, loss_masks (B lists of
            n_i bools); returns one list per response of n_i (or L) advantages.
        supports, name: as for `plain`.

    >>> from tempo_rl.reference import loop_tempo_advantages
    >>> per_row(loop_tempo_advantages).layouts
    False
    """
    chosen = _supports(supports)

    def call(case: Case, options: dict[str, Any]) -> Any:
        kwargs = {k: v for k, v in options.items() if k in chosen}
        if "loss_mask" in chosen and case.loss_mask is not None:
            kwargs["loss_masks"] = case.loss_lists
        return fn(case.sequences, case.reward_list, case.group_list, **kwargs)

    return Implementation(_name(fn, name), chosen, call, layouts=False)
