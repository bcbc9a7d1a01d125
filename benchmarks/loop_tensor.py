"""The per-token loop over torch tensors: the baseline as it runs inside a torch trainer.

`reference/loop.py` runs the per-token loop on Python lists (about a microsecond a token). Code
that lives in a torch RL trainer keeps the responses as tensors and scans the group with a tensor
comparison per token, paying the framework's per-op overhead at every token. This is that form,
with the same algorithm (for each response, for each token, scan the group; stop once the response
is alone) and the contract's fixes (padding never read, a group of one gives 0). It is a benchmark
baseline only; `tests/test_bench.py` checks it against the reference.
"""

from __future__ import annotations

import torch


def _response_td(a: int, tokens: torch.Tensor, n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """TD of every token of member a: tokens (G, L), n (G,), r (G,) float64 -> (n_a,)."""
    td = torch.zeros(int(n[a]), dtype=torch.float64)
    alive = torch.ones(len(n), dtype=torch.bool)  # Members(y_a[:t])
    v_parent = r.mean()
    for t in range(int(n[a])):
        if int(alive.sum()) == 1:  # alone: every later prefix has the same single member
            break
        child = alive & (n > t) & (tokens[:, t] == tokens[a, t])  # one tensor scan per token
        if int(child.sum()) == int(alive.sum()):
            continue
        v_child = r[child].mean()
        td[t] = v_child - v_parent
        alive, v_parent = child, v_child
    return td


def loop_tensor_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
) -> torch.Tensor:
    """TEMPO advantages (B, L) float32 by the per-token loop over tensors (no validation)."""
    out = torch.zeros(responses.shape, dtype=torch.float32)
    lengths = response_mask.sum(1)
    for g in torch.unique(group_ids):
        rows = torch.nonzero(group_ids == g)[:, 0]
        r = rewards[rows].double()
        if len(rows) < 2 or bool((r == r[0]).all()):
            continue
        denom = float(r.std()) + eps if norm_by_std else 1.0
        for a, i in enumerate(rows.tolist()):
            td = _response_td(a, responses[rows], lengths[rows], r)
            out[i, : len(td)] = ((r[a] - r.mean() + td_coef * td) / denom).float()
    return out
