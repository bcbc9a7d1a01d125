"""The one place that names the backends: a registry of callables, each taking plain tensors.

    "reference"  the exact P2T trie of `reference/` (pure Python, the definition)
    "torch"      `fast/advantage_torch.py`, vectorised torch on CPU or CUDA
    "triton"     `fast/advantage_triton.py`, Triton kernels on CUDA tensors (or on CPU under
                 TRITON_INTERPRET=1, how the tests run it)
    "auto"       Triton for CUDA tensors when it imports, torch otherwise

Every backend provides the same four functions (prefix values: see `tempo_rl.prefix_values`; the
policy loss: `tempo_rl.fused_policy_loss`), called with the validated tensors of
`tempo_rl.validate` (responses (B, L), lengths (B,), rewards (B,), dense group index (B,),
loss mask (B, L) or None):

    advantages_and_stats(responses, lengths, rewards, group_index, loss_mask, *, norm_by_std, eps,
                         td_coef, with_stats) -> ((B, L) advantages, (n_groups, 8) int64 stats or None)
    tree_stats(responses, lengths, group_index) -> (n_groups, 8) int64 stats (columns: STAT_COLUMNS)

Fast backends are trusted because the differential tests prove them equal to "reference"
(tests/test_advantage_fast.py, tests/test_stats.py); Triton is imported once, lazily, and a
backend whose import fails is simply not available.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .extras import requires
from .fast.prefix_values_torch import Runs
from .fast.stats_torch import NO_BRANCH, STAT_COLUMNS
from .reference import advantage as ref_advantage
from .reference import prefix_values as ref_prefix_values
from .reference import stats as ref_stats

BACKENDS = ("auto", "reference", "torch", "triton")
__all__ = ["BACKENDS", "STAT_COLUMNS", "Backend", "available_backends", "get_backend", "resolve_backend"]


@dataclass(frozen=True)
class Backend:
    """One implementation of the TEMPO op (see the module docstring for the signatures)."""

    name: str
    advantages_and_stats: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    tree_stats: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    # (responses, lengths, rewards, group_index) -> the compact prefix values
    prefix_runs: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], Runs]
    # The PPO policy loss from hidden states and the LM head (`tempo_rl.fused_policy_loss`): "reference"
    # materialises the (B, T, V) logits, the others never do.
    policy_loss: Callable[..., tuple[torch.Tensor, dict]]


# ----------------------------------------------------------------------------- reference
def _ragged(responses: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each row cut to its n_i tokens, as Python lists (padding is never read)."""
    return [row[:n] for row, n in zip(responses.cpu().tolist(), lengths.tolist())]


def _pad(rows: list[list[float]], shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    out = out.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"rewards (with norm_by_std=False) or td_coef too large: the advantages overflow {dtype} "
            f"(largest finite is {torch.finfo(dtype).max:.3g}); rescale it"
        )
    return out.to(device)


def _stats_table(groups: list[ref_stats.GroupTreeStats], device: torch.device) -> torch.Tensor:
    rows = [[NO_BRANCH if getattr(g, c) is None else getattr(g, c) for c in STAT_COLUMNS] for g in groups]
    return torch.tensor(rows, dtype=torch.int64, device=device).reshape(len(groups), len(STAT_COLUMNS))


def _reference_stats(responses: torch.Tensor, lengths: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    per_group = ref_stats.tree_stats(_ragged(responses, lengths), group_index.tolist()).groups
    return _stats_table([per_group[g] for g in sorted(per_group)], responses.device)


def _reference_advantages(
    responses: torch.Tensor,
    lengths: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    norm_by_std: bool,
    eps: float,
    td_coef: float,
    with_stats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    sequences = _ragged(responses, lengths)
    loss = None if loss_mask is None else [row[:n] for row, n in zip(loss_mask.cpu().tolist(), lengths.tolist())]
    args = (sequences, rewards.cpu().tolist(), group_index.tolist())
    if td_coef == 0.0:  # GRPO: the same numbers TEMPO gives with td_coef = 0 (Proposition 2)
        rows = ref_advantage.grpo_advantages(*args, loss_masks=loss, norm_by_std=norm_by_std, eps=eps)
    else:
        rows = ref_advantage.tempo_advantages(*args, loss_masks=loss, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef)
    out = _pad(rows, tuple(responses.shape), rewards.dtype, responses.device)  # type: ignore[arg-type]
    return out, _reference_stats(responses, lengths, group_index) if with_stats else None


def _reference_prefix_runs(
    responses: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor, group_index: torch.Tensor
) -> Runs:
    """The trie's exact prefix values, each V(s) rounded once to float64, in the compact layout."""
    runs = ref_prefix_values.prefix_values(_ragged(responses, lengths), rewards.cpu().tolist(), group_index.tolist())
    offsets = [0]
    for r in runs:
        offsets.append(offsets[-1] + len(r.branch))
    ints = lambda xs: torch.tensor(xs, dtype=torch.int64, device=responses.device)  # noqa: E731
    return Runs(
        branch_offsets=ints(offsets),
        branch_t=ints([t for r in runs for t in r.branch]),
        run_value=torch.tensor([float(v) for r in runs for v in r.value], dtype=torch.float64, device=responses.device),
        run_count=ints([n for r in runs for n in r.count]),
        run_first=ints([f for r in runs for f in r.first]),
    )


def _load_reference() -> Backend:
    from .fast import policy_loss_torch

    return Backend(
        "reference", _reference_advantages, _reference_stats, _reference_prefix_runs, policy_loss_torch.policy_loss_ref
    )


# ----------------------------------------------------------------------------- fast
def _load_torch() -> Backend:
    from .fast import advantage_torch, policy_loss_torch, prefix_values_torch

    return Backend(
        "torch",
        advantage_torch.advantages_and_stats,
        advantage_torch.tree_stats,
        prefix_values_torch.prefix_runs,
        policy_loss_torch.policy_loss_chunked,
    )


def _load_triton() -> Backend:
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ImportError("Triton needs a CUDA device here (or TRITON_INTERPRET=1 to interpret it on CPU)")
    with requires("triton", "the Triton backend"):  # MissingExtra (an ImportError) without triton
        from .fast import advantage_triton, policy_loss_triton, prefix_values_torch

    # Prefix values have no kernel of their own: the torch path runs on the same CUDA tensors.
    return Backend(
        "triton",
        advantage_triton.advantages_and_stats,
        advantage_triton.tree_stats,
        prefix_values_torch.prefix_runs,
        policy_loss_triton.policy_loss_triton,
    )


_LOADERS: dict[str, Callable[[], Backend]] = {
    "reference": _load_reference,
    "torch": _load_torch,
    "triton": _load_triton,
}


@functools.cache
def _try_load(name: str) -> Backend | ImportError:
    try:
        return _LOADERS[name]()
    except ImportError as e:
        return e


def get_backend(name: str) -> Backend:
    """The concrete backend `name` ("reference", "torch" or "triton"); RuntimeError if it
    cannot run here."""
    if name not in _LOADERS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    loaded = _try_load(name)
    if isinstance(loaded, ImportError):
        raise RuntimeError(f"backend {name!r} is not available here: {loaded}")
    return loaded


def available_backends() -> list[str]:
    """Backends that can run on this machine, "reference" first."""
    return [name for name in _LOADERS if not isinstance(_try_load(name), ImportError)]


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend `backend` names for tensors on `device` ("auto": Triton on CUDA when
    it imports, else torch)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    preferred = ("triton", "torch") if torch.device(device).type == "cuda" else ("torch",)
    for name in preferred:
        if not isinstance(_try_load(name), ImportError):
            return name
    return "reference"
