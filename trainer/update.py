"""One optimisation phase on a rollout batch: `ppo_epochs` x `mini_batches` AdamW updates with
gradient accumulation and clipping, the loss through full logits (trainer/loss.py) or through
`tempo_rl.fused_policy_loss`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

import tempo_rl
from tempo_rl.policy_loss import fused_logprobs, lm_head
from tempo_rl.tree_forward import tree_logprobs_and_entropy, tree_policy_loss

from .config import TrainConfig
from .loading import Run
from .loss import policy_loss
from .rollout import Rollout, forward_hidden, forward_logprobs
from .scoring import on_the_tree, score_logprobs


@dataclass
class UpdateStats:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.values.setdefault(k, []).append(float(v))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


def minibatch_order(group_ids: torch.Tensor, cfg: TrainConfig, step: int, epoch: int) -> torch.Tensor:
    """Row order for one epoch, a pure function of (seed, step, epoch) so resume is exact. With tree
    rollouts the groups stay together (groups in random order, rows shuffled inside each), so a
    mini-batch holds whole trees and the tree forward runs each shared prefix once per mini-batch,
    not once per row that happens to land there; otherwise the rows are shuffled freely.

    group_ids: (B,) on the CPU. Returns (B,) int64 row indices."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch)
    n = group_ids.shape[0]
    rows = torch.randperm(n, generator=gen)
    if cfg.rollout != "tree":
        return rows
    _, group_of = torch.unique(group_ids, return_inverse=True)  # (B,) 0..K-1
    group_rank = torch.randperm(int(group_of.max()) + 1 if n else 0, generator=gen)[group_of]  # (B,)
    # a stable sort by group rank of the shuffled rows: groups in random order, random inside
    return rows[torch.sort(group_rank[rows], stable=True).indices]


class MicroTargets(NamedTuple):
    """What a micro-batch's loss needs besides the model and its rows."""

    adv: torch.Tensor  # (b, Lr) token advantages
    old_logp: torch.Tensor | None  # (b, Lr); None: a single update, old = current (detached)
    ref_logp: torch.Tensor | None  # (b, Lr) of the frozen reference; None without the KL term
    denom: float  # the mini-batch's token (token-mean) or response (sequence-mean) count


def ppo_update(run: Run, roll: Rollout, adv: torch.Tensor, step: int) -> dict[str, float]:
    """ppo_epochs x mini_batches optimizer updates on one rollout batch."""
    cfg, model = run.cfg, run.model
    old_logp = ref_logp = None
    if cfg.ppo_epochs * cfg.mini_batches > 1:  # with a single update the ratio is 1 and old = current (detached)
        old_logp = score_logprobs(model, roll, cfg, run.autocast_dtype)
    if cfg.kl_coef:
        ref_logp = score_logprobs(run.ref_model, roll, cfg, run.autocast_dtype)
    loss_fn = micro_loss_fused if cfg.fused_loss else micro_loss_unfused
    stats = UpdateStats()
    model.train()
    for epoch in range(cfg.ppo_epochs):
        order = minibatch_order(roll.group_ids.cpu(), cfg, step, epoch).to(adv.device)
        for mb in order.chunk(cfg.mini_batches):
            denom = float(roll.loss_mask[mb].sum()) if cfg.aggregation == "token-mean" else float(len(mb))
            for micro in mb.chunk(cfg.grad_accum):
                old = None if old_logp is None else old_logp[micro]
                ref = None if ref_logp is None else ref_logp[micro]
                targets = MicroTargets(adv[micro], old, ref, denom)
                loss, metrics = loss_fn(model, roll.select(micro), targets, cfg, run.autocast_dtype)
                loss.backward()
                stats.add(loss=loss.item(), **metrics)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            stats.add(grad_norm=gnorm)
            run.opt.step()
            run.sched.step()
            run.opt.zero_grad(set_to_none=True)
    model.eval()
    return stats.means()


def tree_rows(part: Rollout) -> tuple[torch.Tensor, ...]:
    """The rows as the tree forward takes them: prompts, responses, and the tokens that carry loss
    (environment tokens inside a response are context)."""
    return part.prompt_ids, part.prompt_mask, part.responses, part.loss_mask


def micro_loss_unfused(
    model, part: Rollout, targets: MicroTargets, cfg: TrainConfig, autocast_dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full-logits path (trainer/loss.py): (B, Lr, V) logits. Returns (loss to backward, metrics)."""
    adv, old_logp, ref_logp, denom = targets
    if on_the_tree(cfg):
        with torch.autocast(adv.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logp, ent = tree_logprobs_and_entropy(model, *tree_rows(part), with_entropy=True)
    else:
        logp, ent = forward_logprobs(model, part, with_entropy=True, autocast_dtype=autocast_dtype)
    out = policy_loss(
        logp,
        logp.detach() if old_logp is None else old_logp,
        adv,
        part.loss_mask,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        aggregation=cfg.aggregation,
        ref_logp=ref_logp,
        kl_coef=cfg.kl_coef,
        denom=denom,
    )
    m = part.loss_mask.float()
    return out.loss, {
        "clip_fraction": out.clip_fraction,
        "approx_kl": out.approx_kl,
        "kl_ref": out.kl,
        "entropy": (ent * m).sum() / m.sum().clamp(min=1),
    }


def micro_loss_fused(
    model, part: Rollout, targets: MicroTargets, cfg: TrainConfig, autocast_dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same loss through `tempo_rl.fused_policy_loss` (chunks of tokens, no (B, Lr, V) logits).

    The op divides by the micro-batch's own token (or response) count; rescaling by count / denom
    gives the mini-batch divisor of gradient accumulation, as `token_weights(..., denom=)` does."""
    adv, old_logp, ref_logp, denom = targets
    terms = dict(
        ref_logp=ref_logp,
        kl_coef=cfg.kl_coef,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        aggregation=cfg.aggregation,
    )
    if on_the_tree(cfg):  # old_logp None: the current policy's, detached, from the same forward
        with torch.autocast(adv.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, metrics = tree_policy_loss(model, *tree_rows(part), old_logp, adv, **terms)
    else:
        weight, bias = lm_head(model)
        hidden = forward_hidden(model, part, autocast_dtype=autocast_dtype)  # (b, Lr, H)
        if old_logp is None:  # single update: old = current, detached (ratio exactly 1)
            old_logp = fused_logprobs(hidden.detach(), weight.detach(), part.responses, bias=bias)
        loss, metrics = tempo_rl.fused_policy_loss(
            hidden, weight, part.responses, old_logp, adv, part.loss_mask, bias=bias, **terms
        )
    count = max(part.n_loss_tokens, 1) if cfg.aggregation == "token-mean" else part.responses.shape[0]
    scale = count / denom
    return loss * scale, {
        "clip_fraction": metrics["clip_fraction"],
        "approx_kl": metrics["approx_kl"],
        "kl_ref": metrics["kl"] * scale,
        "entropy": metrics["entropy"],
    }
