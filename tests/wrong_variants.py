"""Deliberately wrong TEMPO implementations, each with one mistake seen in real code.

`tempo_rl.testing.check_implementation` must catch every one of them (tests/test_testing.py);
`authors_loop` behaves like the authors' released per-token loop (proofs_notes/tempo.md, section 4).
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import torch

import tempo_rl
from tempo_rl.reference import group_rows, td_values


def _finish(tds, rewards, group_ids, *, norm_by_std, eps, td_coef, loss_masks=None, population_std=False):
    """Rows (R_i - mu_g + td_coef * TD[i, t]) / (sigma_g + eps) from given TD rows, 0 for degenerate groups."""
    out = [[0.0] * len(row) for row in tds]
    for rows in group_rows(group_ids).values():
        g = [Fraction(rewards[i]) for i in rows]
        if len(rows) < 2 or len(set(g)) == 1:
            continue
        mean = sum(g) / len(g)
        std = statistics.pstdev(map(float, g)) if population_std else statistics.stdev(map(float, g))
        for i in rows:
            for t, td in enumerate(tds[i]):
                x = float(Fraction(rewards[i]) - mean + Fraction(td_coef) * td)
                out[i][t] = x / (std + eps) if norm_by_std else x
    if loss_masks is not None:
        out = [[x if keep else 0.0 for x, keep in zip(row, m)] for row, m in zip(out, loss_masks)]
    return out


def population_std(sequences, rewards, group_ids, *, loss_masks=None, norm_by_std=True, eps=1e-6, td_coef=1.0):
    """sigma_g with divisor G instead of G - 1."""
    tds = td_values(sequences, rewards, group_ids)
    return _finish(
        tds,
        rewards,
        group_ids,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
        loss_masks=loss_masks,
        population_std=True,
    )


def td_on_whole_suffix(sequences, rewards, group_ids, *, loss_masks=None, norm_by_std=True, eps=1e-6, td_coef=1.0):
    """A branch token's TD carried on every later token: sum of TD up to t, i.e. V(y_i[:t+1]) - mu."""
    exact = td_values(sequences, rewards, group_ids)
    tds = [[sum(row[: t + 1], Fraction(0)) for t in range(len(row))] for row in exact]
    return _finish(tds, rewards, group_ids, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef, loss_masks=loss_masks)


def missed_end_of_response(sequences, rewards, group_ids, *, loss_masks=None, norm_by_std=True, eps=1e-6, td_coef=1.0):
    """V(parent) over the members that continue past it: a response that ends at a node is not
    counted as one more child there."""
    tds = [[] for _ in sequences]
    for rows in group_rows(group_ids).values():
        for i in rows:
            alive = list(rows)
            for t, token in enumerate(sequences[i]):
                going_on = [k for k in alive if len(sequences[k]) > t]
                child = [k for k in going_on if sequences[k][t] == token]
                value = lambda ks: sum((Fraction(rewards[k]) for k in ks), Fraction(0)) / len(ks)  # noqa: E731
                tds[i].append(value(child) - value(going_on))
                alive = child
    return _finish(tds, rewards, group_ids, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef, loss_masks=loss_masks)


def padding_as_tokens(
    responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True, eps=1e-6, td_coef=1.0
):
    """The tree built over whole padded rows (padding compared as tokens), then cut to each response."""
    full = responses.tolist()
    lengths = torch.as_tensor(response_mask).bool().sum(1).tolist()
    rows = tempo_rl.reference.tempo_advantages(
        full, torch.as_tensor(rewards).tolist(), list(group_ids), norm_by_std=norm_by_std, eps=eps, td_coef=td_coef
    )
    out = torch.zeros(responses.shape, dtype=torch.float64)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        out[i, :n] = torch.tensor(row[:n], dtype=torch.float64)
    if loss_mask is not None:
        out = out * torch.as_tensor(loss_mask).bool()
    return out


def authors_loop(
    responses, response_mask, rewards, group_ids, *, norm_by_std=True, eps=1e-6, td_coef=1.0, group_of_one_is_nan=True
):
    """A per-token loop over padded rows in plain floats, as the authors' released code computes TEMPO:
    at each token the members still sharing the prefix are those whose padded row holds the same id
    (padding compared as tokens), and sigma_g is torch.std, NaN for a group of one."""
    rows = responses.tolist()
    mask = torch.as_tensor(response_mask).float()
    r = torch.as_tensor(rewards, dtype=torch.float64)
    out = torch.zeros(responses.shape, dtype=torch.float64)
    for members in group_rows(list(group_ids)).values():
        g = r[members]
        mean = g.mean().item()
        std = g.std().item() if len(members) > 1 else (math.nan if group_of_one_is_nan else 0.0)
        for i in members:
            alive = list(members)
            parent = mean
            for t in range(len(rows[i])):
                child = [k for k in alive if rows[k][t] == rows[i][t]]
                value = r[child].mean().item()
                td = value - parent
                x = r[i].item() - mean + td_coef * td
                out[i, t] = x / (std + eps) if norm_by_std else x
                alive, parent = child, value
    return out * mask


def ignores_td_coef(
    responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True, eps=1e-6, td_coef=1.0
):
    """Takes td_coef and drops it: TEMPO at td_coef = 1 whatever is asked."""
    return tempo_rl.tempo_advantages(
        responses,
        response_mask,
        rewards,
        group_ids,
        loss_mask=loss_mask,
        norm_by_std=norm_by_std,
        eps=eps,
        backend="torch",
    )


def ignores_norm_by_std(
    responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True, eps=1e-6, td_coef=1.0
):
    """Takes norm_by_std and drops it: always divides by sigma_g + eps."""
    return tempo_rl.tempo_advantages(
        responses, response_mask, rewards, group_ids, loss_mask=loss_mask, eps=eps, td_coef=td_coef, backend="torch"
    )


def ignores_eps(
    responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True, eps=1e-6, td_coef=1.0
):
    """Takes eps and drops it: always adds 1e-6."""
    return tempo_rl.tempo_advantages(
        responses,
        response_mask,
        rewards,
        group_ids,
        loss_mask=loss_mask,
        norm_by_std=norm_by_std,
        td_coef=td_coef,
        backend="torch",
    )


def ignores_loss_mask(
    responses, response_mask, rewards, group_ids, *, loss_mask=None, norm_by_std=True, eps=1e-6, td_coef=1.0
):
    """Takes loss_mask and drops it: advantages on tokens the loss mask leaves out."""
    return tempo_rl.tempo_advantages(
        responses, response_mask, rewards, group_ids, norm_by_std=norm_by_std, eps=eps, td_coef=td_coef, backend="torch"
    )
