"""Prefix-forked (tree) rollouts for any Hugging Face causal LM.

A group of G responses to one prompt is sampled as a tree: a few root responses first, then new
branches forked from points inside responses already sampled, each continued to the end, until G
leaves exist. TEMPO reads the tree back from the token prefixes (proofs_notes/tempo.md), so the
advantage API is unchanged; what changes is where the group branches. Independent samples diverge
within the first few tokens; forks at chosen depths give the group long shared prefixes and deep
branch points, where TEMPO's TD term carries local credit (proofs_notes/tree-rollouts.md).

Every leaf is an ordinary sample from the policy given its prefix: the prefix tokens were sampled
by the policy (by the parent), and the continuation is sampled token by token with the same
temperature / top-p / EOS / length rules as independent sampling. So each leaf's tokens have the
usual per-token log-probs, and PPO importance ratios computed from them stay valid. (The group is
not an i.i.d. sample of G responses; the responses are exchangeable within a fork only. The
estimator reads them as a tree, which is the point.)

How the prefix is reused. Decoding is a plain incremental loop over `past_key_values` (a
`DynamicCache` of full-attention layers). Every cache row keeps, per slot, the absolute position of
the token stored there (-1 for a slot that row must not see). A child forked from a parent at
response depth d copies the parent's cache row, hides every slot at or after the parent's token
d-1, and re-feeds token d-1 (the last prompt token when d = 0) to get the distribution of token
d: one extra forward token per fork instead of d + |prompt|. Hidden slots cost attention work but
no recomputation; cropping per row would force one row per batch. Roots are forks at depth 0 of a
prompt whose first |prompt| - 1 tokens were prefilled once, unpadded, so no query ever attends to
padding alone.

Left out: sliding-window or recurrent caches (refused with an error), beam search, batching the
prefill of prompts of equal length, and freeing a wave's cache before the last wave ends.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from .rollout import ChanceToken, Rollout, SamplingConfig

FORK_AT = ("fixed", "random", "entropy", "group_entropy")


@dataclass(frozen=True)
class TreeConfig:
    """Shape of each group's tree. `n_roots >= group_size` is independent sampling."""

    n_roots: int = 2  # responses sampled from the prompt alone (wave 0)
    # how fork points are chosen; "group_entropy": one point per wave, the group's highest-entropy one
    fork_at: Literal["fixed", "random", "entropy", "group_entropy"] = "entropy"
    fork_depths: tuple[int, ...] = ()  # "fixed": response depths to fork at, in order of preference
    forks_per_point: int = 1  # children forked at one (parent, depth) point
    points_per_parent: int | None = None  # fork points one parent gives per wave; None: as many as needed
    min_fork_depth: int = 1  # depth budget: forks share at least this many response tokens ...
    max_fork_depth: int | None = None  # ... and at most this many (None: up to the parent's last token)

    def __post_init__(self) -> None:
        if self.fork_at not in FORK_AT:
            raise ValueError(f"fork_at must be one of {FORK_AT}, got {self.fork_at!r}")
        if self.fork_at == "fixed" and not self.fork_depths:
            raise ValueError("fork_at='fixed' needs fork_depths")
        if self.n_roots < 1 or self.forks_per_point < 1:
            raise ValueError("n_roots and forks_per_point must be >= 1")
        if self.points_per_parent is not None and self.points_per_parent < 1:
            raise ValueError(f"points_per_parent must be >= 1 or None, got {self.points_per_parent}")
        if self.min_fork_depth < 0 or (self.max_fork_depth is not None and self.max_fork_depth < self.min_fork_depth):
            raise ValueError(
                f"need 0 <= min_fork_depth <= max_fork_depth, got {self.min_fork_depth}, {self.max_fork_depth}"
            )


@dataclass
class _Leaf:
    group: int
    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    parent: int  # index into the group's leaves, -1 for a root
    depth: int
    wave: int
    row: int = -1  # row in its wave's cache store
    used_depths: set[int] = field(default_factory=set)


@dataclass
class _Store:
    """One wave's key/value cache after decoding, and the position held by every slot."""

    keys: list[torch.Tensor]  # per layer (N, H, T, D)
    values: list[torch.Tensor]
    slot_pos: torch.Tensor  # (N, T) long, absolute position of the token in the slot, -1 if hidden


@dataclass
class _Fork:
    """One child to sample: its source cache row, how much of it to keep, and its seed token."""

    leaf: _Leaf
    store: int  # index into stores (-1: the prompt store)
    row: int
    seed_token: int  # token at position seed_pos, re-fed to get the distribution of the next one
    seed_pos: int
    budget: int  # tokens it may still sample


def sample_tree(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    group_size: int,
    sampling: SamplingConfig,
    tree: TreeConfig | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample `group_size` responses per prompt as a prefix tree (independent when `tree` is None).

    prompts: P token-id lists (each non-empty). Returns a `Rollout` of B = P * group_size rows.
    The same `generator` state gives the same tree (fork depths and tokens).
    """
    check_request(prompts, group_size)
    tree = tree or TreeConfig(n_roots=group_size)
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    counters = {"tokens_generated": 0, "forward_tokens": 0, "row_steps": 0, "decode_steps": 0}
    with torch.inference_mode():
        prompt_store = _prefill(model, prompts, device, counters)
        stores: list[_Store] = []

        def decode(forks: list[_Fork], wave: int) -> None:
            stores.append(_decode_wave(model, forks, prompt_store, stores, sampling, generator, device, counters))
            for row, f in enumerate(forks):
                f.leaf.row = row  # its row in this wave's KV store

        groups, wave = grow_tree(prompts, group_size, tree, sampling, generator, decode)
    counters["seconds"] = time.perf_counter() - t0
    counters["waves"] = wave
    return _assemble(prompts, groups, sampling, counters)


def sample_tree_padded(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    group_size: int,
    sampling: SamplingConfig,
    tree: TreeConfig | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """`sample_tree` for a padded prompt batch (left or right padding).

    prompt_ids: (P, Lp) int; prompt_mask: (P, Lp), 1 on each prompt's own tokens. Positions count
    from each prompt's first real token, as `generate` counts them under left padding."""
    if prompt_ids.shape != prompt_mask.shape or prompt_ids.dim() != 2:
        raise ValueError(
            f"prompt_ids and prompt_mask must both be (P, Lp), got {tuple(prompt_ids.shape)} "
            f"and {tuple(prompt_mask.shape)}"
        )
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]
    return sample_tree(model, prompts, group_size=group_size, sampling=sampling, tree=tree, generator=generator)


def sample_independent(model, prompts, *, group_size: int, sampling: SamplingConfig, generator=None) -> Rollout:
    """`group_size` independent samples per prompt through the same decoding loop (the baseline)."""
    return sample_tree(model, prompts, group_size=group_size, sampling=sampling, tree=None, generator=generator)


# --------------------------------------------------------------------------------------------
# Planning: which (parent, depth) points to fork, per group and wave


def _root_forks(group: int, prompt: Sequence[int], n: int, sampling: SamplingConfig) -> list[_Fork]:
    """Roots are forks at depth 0 of the prompt: keep its first |p| - 1 tokens, re-feed the last."""
    p = len(prompt)
    return [
        _Fork(_Leaf(group, [], [], [], -1, 0, 0), -1, group, int(prompt[-1]), p - 1, sampling.max_new_tokens)
        for _ in range(n)
    ]


def _candidate_depths(leaf: _Leaf, tree: TreeConfig, generator: torch.Generator | None, after: int = -1) -> list[int]:
    """Fork depths of `leaf` in order of preference, within the depth budget and not yet used.

    A depth d resamples the parent's token d, so d <= n - 1 (a fork at the parent's EOS decides
    whether to stop). Depths at or before `after` (an environment token's position) are never
    chosen: forks share the environment's draw and branch after it."""
    hi = len(leaf.tokens) - 1
    if tree.max_fork_depth is not None:
        hi = min(hi, tree.max_fork_depth)
    # a child forked at or above its own fork depth would be a sibling from its parent's point
    lo = max(tree.min_fork_depth, leaf.depth + 1 if leaf.parent >= 0 else 0, after + 1)
    free = [d for d in range(lo, hi + 1) if d not in leaf.used_depths]
    if tree.fork_at == "fixed":
        return [d for d in tree.fork_depths if d in free]
    if tree.fork_at == "random":
        order = torch.randperm(len(free), generator=generator).tolist() if free else []
        return [free[i] for i in order]
    return sorted(free, key=lambda d: (-leaf.entropies[d], d))  # decision tokens first


def check_request(prompts: Sequence[Sequence[int]], group_size: int) -> None:
    """What every sampler needs of its request: group_size >= 1 and non-empty prompts."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")


def grow_tree(
    prompts: Sequence[Sequence[int]],
    group_size: int,
    tree: TreeConfig,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    decode: Callable[[list[_Fork], int], None],
) -> tuple[list[list[_Leaf]], int]:
    """The wave loop every sampler shares: min(n_roots, group_size) roots a prompt, then each wave's
    forks planned from the leaves so far, until every group holds `group_size` leaves.
    `decode(forks, wave)` samples one wave (fills its leaves' tokens). Returns (groups, waves)."""
    groups: list[list[_Leaf]] = [[] for _ in prompts]
    forks = [f for g, p in enumerate(prompts) for f in _root_forks(g, p, min(tree.n_roots, group_size), sampling)]
    wave = 0
    while forks:
        decode(forks, wave)
        for f in forks:
            groups[f.leaf.group].append(f.leaf)
        wave += 1
        forks = [
            f
            for g, leaves in enumerate(groups)
            for f in _plan_forks(g, leaves, prompts[g], group_size - len(leaves), wave, tree, sampling, generator)
        ]
    return groups, wave


def _fresh_roots(group: int, prompt: Sequence[int], need: int, wave: int, sampling: SamplingConfig) -> list[_Fork]:
    """`need` new roots in `wave`, where no leaf of the group can be forked (all too short)."""
    forks = _root_forks(group, prompt, need, sampling)
    for f in forks:
        f.leaf.wave = wave
    return forks


def _plan_forks(
    group: int,
    leaves: list[_Leaf],
    prompt: Sequence[int],
    need: int,
    wave: int,
    tree: TreeConfig,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> list[_Fork]:
    """Round-robin over the newest wave's leaves (then any leaf), best depth first, until `need`
    children are planned; fresh roots fill whatever no parent can give."""
    if need <= 0:
        return []
    if tree.fork_at == "group_entropy":
        return _plan_group_entropy(group, leaves, prompt, need, wave, tree, sampling)
    newest = [i for i, lf in enumerate(leaves) if lf.wave == wave - 1]
    older = [i for i, lf in enumerate(leaves) if lf.wave != wave - 1]
    forks: list[_Fork] = []
    for pool, cap in ((newest, tree.points_per_parent), (older, 1)):
        if forks:
            break
        after = -1 if sampling.chance is None else sampling.chance.position
        cands = {i: _candidate_depths(leaves[i], tree, generator, after) for i in pool}
        taken = {i: 0 for i in pool}
        progress = True
        while need > 0 and progress:
            progress = False
            for i in pool:
                if need <= 0 or not cands[i] or (cap is not None and taken[i] >= cap):
                    continue
                d = cands[i].pop(0)
                parent = leaves[i]
                parent.used_depths.add(d)
                taken[i] += 1
                progress = True
                for _ in range(min(tree.forks_per_point, need)):
                    forks.append(_child_fork(group, i, parent, d, prompt, wave, sampling))
                    need -= 1
    if not forks:  # nothing forkable (e.g. every response too short): sample fresh roots
        forks = _fresh_roots(group, prompt, need, wave, sampling)
    return forks


def _plan_group_entropy(
    group: int,
    leaves: list[_Leaf],
    prompt: Sequence[int],
    need: int,
    wave: int,
    tree: TreeConfig,
    sampling: SamplingConfig,
) -> list[_Fork]:
    """The TEMPO authors' tree: each wave forks `forks_per_point` children at the single
    highest-entropy free position of the whole group so far (ties: earlier leaf, shallower depth);
    with one root and one child per point, each of the G - 1 extra branches re-generates from the
    highest-entropy position sampled before it."""
    after = -1 if sampling.chance is None else sampling.chance.position
    points = [(i, d) for i, lf in enumerate(leaves) for d in _candidate_depths(lf, tree, None, after)]
    if not points:
        return _fresh_roots(group, prompt, need, wave, sampling)
    i, d = max(points, key=lambda p: (leaves[p[0]].entropies[p[1]], -p[0], -p[1]))
    leaves[i].used_depths.add(d)
    return [_child_fork(group, i, leaves[i], d, prompt, wave, sampling) for _ in range(min(tree.forks_per_point, need))]


def _child_fork(group: int, i: int, parent: _Leaf, d: int, prompt, wave: int, sampling: SamplingConfig) -> _Fork:
    leaf = _Leaf(group, parent.tokens[:d], parent.logprobs[:d], parent.entropies[:d], i, d, wave)
    p = len(prompt)
    seed = parent.tokens[d - 1] if d > 0 else int(prompt[-1])
    return _Fork(leaf, parent.wave, parent.row, seed, p + d - 1, sampling.max_new_tokens - d)


# --------------------------------------------------------------------------------------------
# Decoding


def _check_cache(cache) -> None:
    for layer in getattr(cache, "layers", []):
        if getattr(layer, "is_sliding", False) or not getattr(layer, "is_croppable", True):
            raise NotImplementedError(f"tree rollouts need full-attention KV layers, got {type(layer).__name__}")


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _forward(model, ids, attention_mask, position_ids, cache) -> torch.Tensor:
    """One cached forward; the cache keyword is `cache` in recent transformers, `past_key_values` before."""
    name = _cache_keyword(type(model))
    out = model(
        input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **{name: cache}
    )
    return out.logits


def _prefill(model, prompts, device, counters) -> _Store:
    """Each prompt but its last token, one unpadded forward per prompt, right-padded into one store."""
    from transformers import DynamicCache

    rows = []
    for p in prompts:
        if len(p) == 1:
            rows.append(None)
            continue
        ids = torch.tensor([list(p[:-1])], device=device)  # (1, |p| - 1)
        cache = DynamicCache()
        _forward(model, ids, None, None, cache)
        _check_cache(cache)
        rows.append([(layer.keys, layer.values) for layer in cache.layers])
        counters["forward_tokens"] += ids.shape[1]
    slot_pos = [torch.arange(len(p) - 1, device=device) for p in prompts]
    return _pad_rows(rows, slot_pos, device)


def _pad_rows(rows, slot_pos, device) -> _Store:
    """Stack per-row caches (list over layers of (1, H, T_i, D), or None for T_i = 0) along the
    batch, right-padding time with hidden slots."""
    t = max(len(s) for s in slot_pos)
    pos = torch.full((len(rows), t), -1, dtype=torch.long, device=device)  # (N, T)
    for r, s in enumerate(slot_pos):
        pos[r, : len(s)] = s
    shapes = next((r for r in rows if r is not None), None)
    if shapes is None:
        return _Store([], [], pos)
    keys, values = [], []
    for layer, (k0, v0) in enumerate(shapes):
        k = k0.new_zeros((len(rows), k0.shape[1], t, k0.shape[3]))  # (N, H, T, D)
        v = v0.new_zeros((len(rows), v0.shape[1], t, v0.shape[3]))
        for r, row in enumerate(rows):
            if row is not None:
                k[r, :, : row[layer][0].shape[2]] = row[layer][0][0]
                v[r, :, : row[layer][1].shape[2]] = row[layer][1][0]
        keys.append(k)
        values.append(v)
    return _Store(keys, values, pos)


def _gather(forks: list[_Fork], prompt_store: _Store, stores: list[_Store]):
    """Each fork's source cache row, slots at or after its seed position hidden; rows from
    stores of different lengths are right-padded with hidden slots."""
    by_store: dict[int, list[int]] = {}
    for j, f in enumerate(forks):
        by_store.setdefault(f.store, []).append(j)
    t = max((prompt_store if s < 0 else stores[s]).slot_pos.shape[1] for s in by_store)
    n = len(forks)
    src0 = prompt_store if prompt_store.keys else next((s for s in stores if s.keys), prompt_store)
    device = src0.slot_pos.device
    pos = torch.full((n, t), -1, dtype=torch.long, device=device)  # (N, T)
    keys = [k.new_zeros((n, k.shape[1], t, k.shape[3])) for k in src0.keys]
    values = [v.new_zeros((n, v.shape[1], t, v.shape[3])) for v in src0.values]
    for s, js in by_store.items():
        st = prompt_store if s < 0 else stores[s]
        src = torch.tensor([forks[j].row for j in js], device=device)
        dst = torch.tensor(js, device=device)
        ts = st.slot_pos.shape[1]
        pos[dst, :ts] = st.slot_pos[src]
        for layer in range(len(st.keys)):  # copies the kept prefix once per child; no recomputation
            keys[layer][dst, :, :ts] = st.keys[layer][src]
            values[layer][dst, :, :ts] = st.values[layer][src]
    limit = torch.tensor([f.seed_pos for f in forks], device=device)[:, None]  # (N, 1)
    pos = torch.where(pos < limit, pos, torch.full_like(pos, -1))  # hide the seed slot and beyond
    return keys, values, pos


def _sample(logits: torch.Tensor, sampling: SamplingConfig, generator):
    """Token, its log-prob under the sampling distribution, and the tempered entropy. logits: (N, V)."""
    logp = torch.log_softmax(logits.float() / sampling.temperature, dim=-1)  # (N, V)
    entropy = -(logp.exp() * logp).sum(-1)  # (N,), before top-p truncation
    if sampling.top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass strictly above each token
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, before >= sampling.top_p)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    token = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]  # (N,)
    return token, logp.gather(-1, token[:, None])[:, 0], entropy


def _apply_chance(token, lp, ent, depth, chance: ChanceToken, generator):
    """Rows about to write response position `chance.position` get the environment's uniform draw
    instead of the policy's token; log-prob and entropy are then the environment's (-log k, log k).
    token, lp, ent, depth: (N,)."""
    at = depth == chance.position
    if not bool(at.any()):
        return token, lp, ent
    k = len(chance.token_ids)
    draw = chance.draw(token.shape[0], token.device, generator)
    log_k = torch.full_like(lp, math.log(k))
    return torch.where(at, draw, token), torch.where(at, -log_k, lp), torch.where(at, log_k, ent)


def _is_eos(token: torch.Tensor, eos) -> torch.Tensor:
    if eos is None:
        return torch.zeros_like(token, dtype=torch.bool)
    ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=token.device)
    return torch.isin(token, ids)


def _decode_wave(model, forks, prompt_store, stores, sampling, generator, device, counters) -> _Store:
    """Continue every fork of the wave to EOS or its budget in one batched incremental loop.

    Rows that finish stay in the batch (fed padding, their new slots hidden) until half the batch
    is idle; then their cache rows are set aside for later forks and the batch shrinks, so the
    work done tracks the tokens generated rather than the longest row of the wave."""
    from transformers import DynamicCache

    keys, values, slot_pos = _gather(forks, prompt_store, stores)
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values))) if keys and slot_pos.shape[1] else DynamicCache()
    rows = list(range(len(forks)))  # fork index of each batch row
    done: dict[int, tuple] = {}  # fork index -> its cache row, once it left the batch
    feed = torch.tensor([f.seed_token for f in forks], device=device)  # (N,)
    pos = torch.tensor([f.seed_pos for f in forks], device=device)  # (N,)
    budget = torch.tensor([f.budget for f in forks], device=device)  # (N,)
    active = budget > 0
    step = 0
    while bool(active.any()):
        slot_pos = torch.cat([slot_pos, torch.where(active, pos, -1)[:, None]], dim=1)  # (N, T + 1)
        logits = _forward(model, feed[:, None], (slot_pos >= 0).long(), pos[:, None], cache)[:, -1]  # (N, V)
        token, lp, ent = _sample(logits, sampling, generator)
        if sampling.chance is not None:
            depth = torch.tensor([len(forks[f].leaf.tokens) for f in rows], device=device)  # (N,)
            token, lp, ent = _apply_chance(token, lp, ent, depth, sampling.chance, generator)
        n_active = int(active.sum())
        counters["forward_tokens"] += n_active
        counters["tokens_generated"] += n_active
        counters["row_steps"] += len(rows)
        tok_l, lp_l, ent_l = token.tolist(), lp.tolist(), ent.tolist()  # one device sync per step
        for j in active.nonzero()[:, 0].tolist():
            leaf = forks[rows[j]].leaf
            leaf.tokens.append(tok_l[j])
            leaf.logprobs.append(lp_l[j])
            leaf.entropies.append(ent_l[j])
        step += 1
        active = active & ~_is_eos(token, sampling.eos_token_id) & (step < budget)
        feed = torch.where(active, token, sampling.pad_token_id)
        pos = pos + 1
        if active.any() and 2 * int(active.sum()) <= len(rows):
            keep = active.nonzero()[:, 0]
            for j in (~active).nonzero()[:, 0].tolist():
                done[rows[j]] = _cache_row(cache, slot_pos, j)
            cache.batch_select_indices(keep)
            rows = [rows[j] for j in keep.tolist()]
            slot_pos, feed, pos, budget, active = slot_pos[keep], feed[keep], pos[keep], budget[keep], active[keep]
    counters["decode_steps"] += step
    _check_cache(cache)
    for j, f in enumerate(rows):
        done[f] = _cache_row(cache, slot_pos, j)
    order = range(len(forks))
    return _pad_rows([done[f][0] for f in order], [done[f][1] for f in order], device)


def _cache_row(cache, slot_pos: torch.Tensor, j: int):
    """Row j of the cache as (per layer (1, H, T, D) keys and values, (T,) slot positions)."""
    kv = [(layer.keys[j : j + 1], layer.values[j : j + 1]) for layer in cache.layers]
    return kv, slot_pos[j]


def _assemble(
    prompts: Sequence[Sequence[int]], groups: list[list[_Leaf]], sampling: SamplingConfig, counters: dict
) -> Rollout:
    leaves = [lf for g in groups for lf in g]
    width = max(1, max(len(lf.tokens) for lf in leaves))
    b = len(leaves)
    responses = torch.full((b, width), sampling.pad_token_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((b, width), dtype=torch.bool)
    logprobs = torch.zeros((b, width), dtype=torch.float32)
    entropies = torch.zeros((b, width), dtype=torch.float32)
    parent = torch.full((b,), -1, dtype=torch.long)
    offset = 0
    for g in groups:
        for k, lf in enumerate(g):
            r = offset + k
            n = len(lf.tokens)
            responses[r, :n] = torch.tensor(lf.tokens, dtype=torch.long)
            mask[r, :n] = True
            logprobs[r, :n] = torch.tensor(lf.logprobs)
            entropies[r, :n] = torch.tensor(lf.entropies)
            parent[r] = offset + lf.parent if lf.parent >= 0 else -1
        offset += len(g)
    prompt_ids, prompt_mask = _left_padded([prompts[lf.group] for lf in leaves], sampling.pad_token_id)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        texts=[],
        responses=responses,
        response_mask=mask,
        logprobs=logprobs,
        entropies=entropies,
        group_ids=torch.tensor([lf.group for lf in leaves], dtype=torch.long),
        parent=parent,
        fork_depth=torch.tensor([lf.depth for lf in leaves], dtype=torch.long),
        wave=torch.tensor([lf.wave for lf in leaves], dtype=torch.long),
        stats=dict(counters),
    )


def _left_padded(prompts: list[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Lp) prompt ids left-padded with `pad_token_id`, and their (B, Lp) 0/1 mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p) :] = 1
    return ids, mask
