"""Argument checking for the public API, shared by every backend.

Every check is vectorised (one pass over the mask on the input's device, no Python loop over
tokens), so the fast paths pay O(B * L) element-wise work and one host sync for it. Errors name
the argument and, where one exists, the first offending row (spec, "Bad input").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np
import torch

from .reference.padding import both_sides_message, hole_message

_INT_DTYPES = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8}


@dataclass(frozen=True)
class Batch:
    """Validated inputs, in the form every backend takes: right padded.

    responses: (B, L) integer tensor (int32 or int64 kept), as given when every row is right
        padded; a left-padded row is rotated so that its response starts at column 0.
    lengths: (B,) int64, n_i = number of ones in row i of the response mask.
    rewards: (B,) float tensor in the output dtype (float64 if given float64, else float32).
    group_index: (B,) int64 dense group index in [0, n_groups).
    group_keys: the original group id of each dense index (for per-group results).
    loss_mask: (B, L) bool, or None; rotated with its row of responses.
    starts: (B,) int64 first column s_i of each response in the caller's layout (0 when right
        padded), or None when every row is right padded. `to_caller` puts a (B, L) result back.
    """

    responses: torch.Tensor
    lengths: torch.Tensor
    rewards: torch.Tensor
    group_index: torch.Tensor
    group_keys: list[Hashable]
    loss_mask: torch.Tensor | None
    starts: torch.Tensor | None = None

    def to_caller(self, x: torch.Tensor) -> torch.Tensor:
        """A right-padded (B, L) result at the caller's columns (left-padded rows shifted back)."""
        return x if self.starts is None else shift_rows(x, -self.starts.to(x.device))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.responses.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.rewards.dtype

    @property
    def device(self) -> torch.device:
        return self.responses.device


def _first_bad_row(bad_rows: torch.Tensor) -> int:
    return int(torch.nonzero(bad_rows)[0, 0])


def check_responses(responses: Any) -> torch.Tensor:
    if not isinstance(responses, torch.Tensor):
        try:
            responses = torch.as_tensor(np.asarray(responses))
        except (TypeError, ValueError) as e:
            raise TypeError(f"responses must be a (B, L) integer tensor of token ids: {e}") from None
    if responses.dtype not in _INT_DTYPES:
        raise TypeError(f"responses must hold integer token ids, got dtype {responses.dtype}")
    if responses.dim() != 2:
        raise ValueError(f"responses must be 2-D (B, L), got shape {tuple(responses.shape)}")
    return responses


def check_mask(mask: Any, name: str, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A (B, L) mask of 0/1 or bool values, as a bool tensor on `device`."""
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(np.asarray(mask))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a (B, L) tensor of 0/1: {e}") from None
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape} like responses")
    if mask.dtype.is_complex or not (
        mask.dtype == torch.bool or mask.dtype in _INT_DTYPES or mask.dtype.is_floating_point
    ):
        raise TypeError(f"{name} must be bool or 0/1, got dtype {mask.dtype}")
    mask = mask.to(device)
    if mask.dtype != torch.bool:
        if not _is_binary(mask):
            not_binary = ((mask != 0) & (mask != 1)).any(dim=1)  # (B,) only to name the row
            raise ValueError(f"{name} row {_first_bad_row(not_binary)} holds values other than 0 and 1")
        mask = mask != 0
    return mask


def _is_binary(mask: torch.Tensor) -> bool:
    """All values 0 or 1. Integers: one read-only min/max pass (verl and TRL pass int64 masks)."""
    if mask.numel() == 0:
        return True
    if mask.dtype.is_floating_point:
        return not bool(((mask != 0) & (mask != 1)).any())
    low, high = torch.aminmax(mask)
    return bool(low >= 0) and bool(high <= 1)


def check_response_mask(mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(starts, lengths), each (B,) int64: the first column s_i and the length n_i of the response
    in every row, a prefix of ones (right padded, s_i = 0) or a suffix (left padded, s_i = L - n_i).
    starts is None when every row is right padded.

    A row is a prefix iff it never rises from 0 to 1, a suffix iff it never falls from 1 to 0
    (reference/padding.py is the definition). Right-padded batches pay two byte passes as before;
    only a batch with a rising row pays the passes that find its suffixes.
    """
    b, length = mask.shape
    if length == 0:
        return None, torch.zeros(b, dtype=torch.int64, device=mask.device)
    bits = mask.view(torch.uint8)  # (B, L)
    rises = (bits[:, 1:] > bits[:, :-1]).any(dim=1)  # (B,) a 0 -> 1 step: not a prefix
    first_zero = bits.argmin(dim=1)  # (B,) the first 0, or 0 for a row of ones
    lengths = torch.where(bits[:, -1].bool(), length, first_zero).to(torch.int64)
    if not bool(rises.any()):
        return None, lengths
    falls = (bits[:, 1:] < bits[:, :-1]).any(dim=1)  # (B,) a 1 -> 0 step: not a suffix
    bad = rises & falls
    if bool(bad.any()):
        raise ValueError(_span_error(bits, _first_bad_row(bad)))
    starts = torch.where(rises, bits.argmax(dim=1), 0).to(torch.int64)  # (B,) the first 1 of a suffix
    return starts, torch.where(rises, length - starts, lengths)


def _span_error(bits: torch.Tensor, row: int) -> str:
    """The message for a row that is neither a prefix nor a suffix: a hole, or padding on both sides."""
    ones = torch.nonzero(bits[row])[:, 0].tolist()
    start, stop = ones[0], ones[-1] + 1
    if len(ones) != stop - start:
        holes = torch.nonzero(bits[row, start:stop] == 0)[:, 0]
        return hole_message(row, start + int(holes[0]))
    return both_sides_message(row, start, stop)


def shift_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[i, t] = x[i, (t + shift_i) mod L] for a (B, L) tensor: one gather, no loop over rows.

    With shift = starts it moves every response to column 0 (right padding); with -starts it moves
    a right-padded result back to the response's own columns. What wraps round is padding.
    """
    length = x.shape[1]
    if length == 0:
        return x
    cols = (torch.arange(length, device=x.device) + shift[:, None]) % length  # (B, L)
    return torch.gather(x, 1, cols)


def check_rewards(rewards: Any, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        try:
            array = np.asarray(rewards)
        except (TypeError, ValueError) as e:
            raise TypeError(f"rewards must be a (B,) float tensor: {e}") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(f"rewards must be numeric, got {array.dtype} values")
        # A numpy array keeps its dtype; a Python sequence takes torch's default, as torch.tensor does.
        rewards = torch.from_numpy(array) if isinstance(rewards, np.ndarray) else torch.tensor(array.tolist())
    if rewards.dtype == torch.bool or rewards.dtype in _INT_DTYPES:
        rewards = rewards.to(torch.get_default_dtype())
    if not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards must be a float tensor, got dtype {rewards.dtype}")
    if rewards.dim() != 1 or rewards.shape[0] != batch:
        raise ValueError(f"rewards must have shape ({batch},) like responses, got {tuple(rewards.shape)}")
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    rewards = rewards.to(device=device, dtype=dtype)
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        row = _first_bad_row(bad)
        raise ValueError(f"rewards row {row} is not finite ({rewards[row].item()})")
    return rewards


def check_group_ids(group_ids: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, list[Hashable]]:
    """Dense group indices (in order of first appearance) and the original id of each."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dtype not in _INT_DTYPES:
            raise TypeError(f"group_ids as a tensor must be integer, got dtype {group_ids.dtype}")
        if group_ids.dim() != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
        group_ids = group_ids.tolist()
    elif isinstance(group_ids, np.ndarray):
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {group_ids.shape}")
    elif isinstance(group_ids, (set, frozenset, dict)):
        raise TypeError(
            f"group_ids must be an ordered sequence of B ids (a list, tuple, array or tensor), "
            f"got a {type(group_ids).__name__}, whose order is not the batch's"
        )
    elif isinstance(group_ids, (str, bytes)) or not hasattr(group_ids, "__len__"):
        raise TypeError(f"group_ids must be a sequence of B ids, got {type(group_ids).__name__}")
    if len(group_ids) != batch:
        raise ValueError(f"group_ids has {len(group_ids)} entries, expected {batch} like responses")
    index: dict[Hashable, int] = {}
    dense = []
    for row, gid in enumerate(group_ids):
        if isinstance(gid, np.generic):
            gid = gid.item()
        try:
            dense.append(index.setdefault(gid, len(index)))
        except TypeError:
            raise TypeError(f"group_ids row {row} is not hashable ({type(gid).__name__})") from None
        if isinstance(gid, float) and math.isnan(gid):
            raise ValueError(f"group_ids row {row} is NaN")
    return torch.tensor(dense, dtype=torch.int64, device=device), list(index)


def check_scalars(*, norm_by_std: Any, eps: Any, td_coef: Any | None = None) -> None:
    if not isinstance(norm_by_std, (bool, np.bool_)):
        raise TypeError(f"norm_by_std must be a bool, got {type(norm_by_std).__name__}")
    for name, value in (("eps", eps), ("td_coef", td_coef)):
        if value is None and name == "td_coef":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value}")
    if float(eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def validate(
    responses: Any,
    response_mask: Any,
    rewards: Any,
    group_ids: Any,
    loss_mask: Any = None,
) -> Batch:
    """Check every input once and return them in the form all backends take (right padded; a
    backend's (B, L) result goes back to the caller's columns through `Batch.to_caller`)."""
    responses = check_responses(responses)
    shape = tuple(responses.shape)
    device = responses.device
    mask = check_mask(response_mask, "response_mask", shape, device)
    starts, lengths = check_response_mask(mask)
    reward_t = check_rewards(rewards, shape[0], device)
    group_index, group_keys = check_group_ids(group_ids, shape[0], device)
    loss = None if loss_mask is None else check_mask(loss_mask, "loss_mask", shape, device)
    if starts is None:  # right padded throughout: nothing moves, nothing is copied
        return Batch(responses, lengths, reward_t, group_index, group_keys, loss)
    responses = shift_rows(responses, starts)  # (B, L) every response from column 0
    loss = None if loss is None else shift_rows(loss, starts)
    return Batch(responses, lengths, reward_t, group_index, group_keys, loss, starts)
