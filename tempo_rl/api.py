"""The public advantage API: one call, several backends that compute the same numbers.

Backends:
- "reference": the exact P2T trie of `tempo_rl.reference` (pure Python, the definition).
- "torch": vectorised torch (CPU and CUDA), `tempo_rl.fast.advantage_torch`.
- "triton": Triton kernels for CUDA tensors, `tempo_rl.fast.advantage_triton`.
- "auto": Triton for CUDA tensors when Triton imports, torch otherwise.

A fast backend is trusted because the differential tests (tests/test_advantage_fast.py) prove it
equals the reference; the trainer re-checks that on its first batches.
"""

from __future__ import annotations

import importlib
from typing import Callable, Hashable, Sequence

import torch

from ._validate import Batch, check_responses, check_scalars, validate
from .reference import advantage as ref_advantage
from .reference import stats as ref_stats

BACKENDS = ("auto", "reference", "torch", "triton")

# name -> (module, function); each function takes (batch, *, norm_by_std, eps, td_coef) and
# returns the (B, L) advantages. td_coef == 0.0 must give GRPO bitwise.
_FAST = {
    "torch": ("tempo_rl.fast.advantage_torch", "advantages"),
    "triton": ("tempo_rl.fast.advantage_triton", "advantages"),
}


def available_backends() -> list[str]:
    """Backends that import on this machine (Triton also needs CUDA tensors to run natively)."""
    names = ["reference"]
    for name in _FAST:
        try:
            _load(name)
            names.append(name)
        except (ImportError, AttributeError):
            pass
    return names


def _load(name: str) -> Callable[..., torch.Tensor]:
    module, fn = _FAST[name]
    return getattr(importlib.import_module(module), fn)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend `backend` names for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    for name in (("triton", "torch") if device.type == "cuda" else ("torch",)):
        try:
            _load(name)
            return name
        except (ImportError, AttributeError):
            continue
    return "reference"


def _ragged_inputs(batch: Batch) -> tuple[list[list[int]], list[float], list[int], list[list[bool]] | None]:
    """Python lists for the reference: each row cut to its n_i tokens (padding never read)."""
    lengths = batch.lengths.tolist()
    rows = batch.responses.cpu().tolist()
    sequences = [row[:n] for row, n in zip(rows, lengths)]
    loss = None
    if batch.loss_mask is not None:
        loss = [row[:n] for row, n in zip(batch.loss_mask.cpu().tolist(), lengths)]
    return sequences, batch.rewards.cpu().tolist(), batch.group_index.cpu().tolist(), loss


def _pad(rows: list[list[float]], batch: Batch) -> torch.Tensor:
    out = torch.zeros(batch.shape, dtype=torch.float64)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return out.to(device=batch.device, dtype=batch.dtype)


def _reference(batch: Batch, *, norm_by_std: bool, eps: float, td_coef: float | None) -> torch.Tensor:
    sequences, rewards, groups, loss = _ragged_inputs(batch)
    if td_coef is None:
        rows = ref_advantage.grpo_advantages(
            sequences, rewards, groups, loss_masks=loss, norm_by_std=norm_by_std, eps=eps
        )
    else:
        rows = ref_advantage.tempo_advantages(
            sequences, rewards, groups, loss_masks=loss, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef
        )
    return _pad(rows, batch)


def _run(batch: Batch, backend: str, *, norm_by_std: bool, eps: float, td_coef: float | None) -> torch.Tensor:
    name = resolve_backend(backend, batch.device)
    if name == "reference":
        return _reference(batch, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef)
    try:
        fn = _load(name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"backend {name!r} is not available here: {e}") from e
    return fn(batch, norm_by_std=norm_by_std, eps=eps, td_coef=0.0 if td_coef is None else td_coef)


def tempo_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """TEMPO token advantages (arXiv 2509.18314; proofs_notes/tempo.md, Definition 3).

    A[i, t] = (R_i - mu_g + td_coef * (V(y_i[:t+1]) - V(y_i[:t]))) / (sigma_g + eps), where V(s)
    is the mean reward of the group's responses that start with prefix s. At tokens where the
    group does not branch the TD term is exactly 0 and A equals GRPO bitwise.

    Args:
        responses: (B, L) int token ids, right-padded (padding values are never read).
        response_mask: (B, L) bool or 0/1; each row a contiguous prefix of ones (n_i of them).
        rewards: (B,) finite float rewards, one per response.
        group_ids: (B,) ints or hashables (e.g. verl's uid strings); same id = same prompt.
        loss_mask: optional (B, L) 0/1; 0 forces the advantage to 0 without changing the tree.
        norm_by_std: divide by sigma_g + eps; False gives the Dr. GRPO form.
        eps: added to the unbiased group std sigma_g.
        td_coef: weight of the TD term; 0 gives GRPO.
        backend: "auto", "reference", "torch" or "triton".

    Returns:
        (B, L) advantages, float32 (float64 when rewards are float64), 0 outside the mask,
        where loss_mask is 0, and for groups of one or with equal rewards.

    >>> import torch, tempo_rl
    >>> y = torch.tensor([[7, 1], [7, 2]])
    >>> tempo_rl.tempo_advantages(y, torch.ones_like(y), torch.tensor([1.0, 0.0]), [0, 0],
    ...                           norm_by_std=False, backend="reference")
    tensor([[ 0.5000,  1.0000],
            [-0.5000, -1.0000]])
    """
    check_scalars(norm_by_std=norm_by_std, eps=eps, td_coef=td_coef)
    batch = validate(responses, response_mask, rewards, group_ids, loss_mask)
    return _run(batch, backend, norm_by_std=bool(norm_by_std), eps=float(eps), td_coef=float(td_coef))


def grpo_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """GRPO advantages (R_i - mu_g) / (sigma_g + eps) broadcast over each response's tokens.

    Same arguments, validation, dtype and zeros as `tempo_advantages`; equal to it with
    td_coef=0, bitwise, on every backend.
    """
    check_scalars(norm_by_std=norm_by_std, eps=eps)
    batch = validate(responses, response_mask, rewards, group_ids, loss_mask)
    return _run(batch, backend, norm_by_std=bool(norm_by_std), eps=float(eps), td_coef=None)


def tree_stats(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
) -> ref_stats.TreeStats:
    """Per-group and batch statistics of the prefix trees (nodes, branch nodes and tokens,
    branch-token fraction, depth of the first branch, max depth).

    `.groups` maps each original group id to its `GroupTreeStats`; `.as_dict()` gives the batch
    numbers for logging.
    """
    responses = check_responses(responses)
    # Rewards play no part in the tree; zeros stand in so the one validator serves.
    batch = validate(responses, response_mask, torch.zeros(responses.shape[0]), group_ids)
    sequences, _, groups, _ = _ragged_inputs(batch)
    per_group = ref_stats.tree_stats(sequences, groups).groups
    return ref_stats.combine({batch.group_keys[g]: s for g, s in per_group.items()})
