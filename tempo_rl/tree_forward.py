"""Log-probs of a batch computed on its prefix tree: every shared prefix runs through the model once.

    logp = tempo_rl.tree_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # (B, T)

equals, row by row, the log-probs of a forward of that row alone without padding (its prompt tokens
where prompt_mask is 1, then its completion), with gradients to the model's parameters; the proof is
proofs_notes/tree-forward.md and tests/test_tree_forward.py checks it in float64 on Qwen2 and Llama.

How: the rows' unique prefixes are packed into one sequence of N trie nodes (`fast.tree_forward_torch
.pack`), positions are node depths, and attention runs through the tree attention, which lets each node
attend to its ancestors and itself. Linear layers, norms and the MLP act on each position alone, so they
need nothing else. The forward goes through the model the caller passes, so a `DistributedDataParallel`
wrapper reduces the gradients as in any training step, and a PEFT model runs with its adapters.

The model is not changed: its config keeps its attention implementation, so it pickles and loads in a
process that never imported tempo_rl. The routing lives in this process (`_install`): the Hugging Face
attention registry's entry of the model's implementation (for "eager", its modelling file's
`eager_attention_forward`) becomes a pass-through that runs the tree attention only for calls carrying
a tree forward's `tempo_tree` argument, and the model's own function for every other call. Gradient checkpointing repeats each layer call with its arguments, so
its recomputation takes the same route. A model whose layers do not all call the
attention interface (or that needs features the tree attention does not provide: soft-capping,
sliding windows shorter than the batch, attention sinks) is refused with a one-line ValueError, never
run wrongly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .fast.tree_forward_torch import (
    AttentionPlan,
    Packing,
    attention_plan,
    completion_lengths,
    pack,
    row_sequences,
    tree_attention,
)

# Keyword arguments that attention functions receive and the tree attention cannot honour.
UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")


@dataclass
class _Run:
    """What one tree forward hands its attention calls (through the model's keyword arguments)."""

    plan: AttentionPlan
    max_depth: int
    calls: int = 0
    errors: list[str] = field(default_factory=list)


def _tree_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """A Hugging Face attention function for the calls of a tree forward (`_install` routes them here)."""
    run = kwargs.pop("tempo_tree")
    run.calls += 1
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            run.errors.append(f"its attention uses {name}")
    window = kwargs.get("sliding_window")
    if window is not None and window <= run.max_depth:
        run.errors.append(f"its attention has a sliding window of {window} tokens, shorter than the batch's rows")
    if query.shape[0] != 1:
        run.errors.append("its attention was called with a batch of several sequences")
    if dropout:
        run.errors.append(f"its attention applies dropout ({dropout}): call model.eval() or set attention_dropout=0")
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    out = tree_attention(query[0], key[0], value[0], run.plan, scale=scale)  # (N, H, D)
    return out.unsqueeze(0), None


def _install(net) -> None:
    """Route the attention of `net` (a Hugging Face model) through `_routed` (idempotent, once per
    process and implementation); the model itself is left as it is. An "eager" model calls the
    `eager_attention_forward` of its modelling file, not the registry: that name is routed instead."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    config = getattr(net, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None:
        raise ValueError(f"tree_logprobs: {type(net).__name__} is not a Hugging Face model with an attention config")
    if current == "eager":
        _install_eager(net)
        return
    if current not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"tree_logprobs: attention implementation {current!r} is not supported; load with 'sdpa'")
    entry = ALL_ATTENTION_FUNCTIONS[current]
    if not getattr(entry, "tempo_tree_route", False):
        AttentionInterface.register(current, _routed(entry))


def _install_eager(net) -> None:
    """Route `eager_attention_forward` in the modelling files of `net`'s modules (looked up at each call)."""
    import sys

    files = {sys.modules.get(type(m).__module__) for m in net.modules()}
    own = [f for f in files if callable(getattr(f, "eager_attention_forward", None))]
    if not own:
        raise ValueError(
            f"tree_logprobs: {type(net).__name__}'s modelling files have no eager_attention_forward to route; "
            "load the model with attn_implementation='sdpa'"
        )
    for f in own:
        fn = getattr(f, "eager_attention_forward")
        if not getattr(fn, "tempo_tree_route", False):
            setattr(f, "eager_attention_forward", _routed(fn))


def _routed(inner):
    """An attention function that runs the tree attention for a tree forward's calls and `inner` (the
    model's own function) for every other call, with the same arguments."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if kwargs.get("tempo_tree") is not None:
            return _tree_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        kwargs.pop("tempo_tree", None)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    attention.tempo_tree_route = True
    return attention


def _hf_model(model):
    """The Hugging Face model inside `model`: through a DistributedDataParallel wrapper (`.module`) and
    a PEFT model (`get_base_model()`, the model with its adapter layers in place). FSDP is refused: the
    LM head runs outside the model's forward, where FSDP holds its parameters sharded."""
    net = model
    for _ in range(3):
        if isinstance(net, torch.nn.parallel.DistributedDataParallel):
            net = net.module
        elif callable(getattr(net, "get_base_model", None)):
            net = net.get_base_model()
        else:
            break
    if isinstance(net, torch.nn.Module) and any(_is_fsdp(m) for m in net.modules()):
        raise ValueError(
            "tree_logprobs cannot run an FSDP model: the LM head runs outside the model's forward, where FSDP's "
            "parameters are sharded; use DistributedDataParallel"
        )
    return net


def _is_fsdp(module) -> bool:
    return any(c.__module__.startswith("torch.distributed.fsdp") for c in type(module).__mro__)


def _packed_rows(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float, packing):
    """(the batch's Packing, (B, T) bool scored positions), after checking the inputs against the model;
    a given `packing` is checked to be this batch's."""
    net = _hf_model(model)
    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, net=net)
    if packing is not None:
        _check_packing(packing, prompt_ids, prompt_mask, completion_ids, completion_mask)
        p = packing
    elif bool(prompt_mask.any()) or bool(completion_mask.any()):
        p = pack(prompt_ids, prompt_mask, completion_ids, completion_mask)
    else:  # no token in any row (or no row): the empty trie
        p = _empty_packing(*completion_ids.shape, device=completion_ids.device)
    return p, completion_mask.to(torch.bool) & (p.completion_node >= 0)  # (B, T)


def _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float, *, net=None) -> None:
    """Shapes, token ids (integers in [0, vocabulary) where the rows use them), temperature (1 /
    temperature finite in the logits' dtype) and a context for every completion; one line naming the
    argument otherwise."""
    b = prompt_ids.shape[0]
    for name, t, like in (
        ("prompt_mask", prompt_mask, prompt_ids),
        ("completion_mask", completion_mask, completion_ids),
    ):
        if t.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    if prompt_ids.dim() != 2 or completion_ids.dim() != 2 or completion_ids.shape[0] != b:
        raise ValueError(
            f"prompt_ids {tuple(prompt_ids.shape)} and completion_ids {tuple(completion_ids.shape)} must be (B, P), (B, T)"
        )
    dtype = torch.promote_types(_model_dtype(net), torch.float32) if net is not None else torch.float32
    if not (math.isfinite(temperature) and temperature > 0 and 1.0 / temperature <= torch.finfo(dtype).max):
        raise ValueError(
            f"temperature must be a positive finite number with 1 / temperature within {dtype}'s range "
            f"(temperature >= {1.0 / torch.finfo(dtype).max:.3g}), got {temperature!r}"
        )
    used = (
        ("prompt_ids", prompt_ids, prompt_mask.to(torch.bool)),
        ("completion_ids", completion_ids, _completion_columns(completion_mask)),
    )
    vocab = _vocab_size(net)
    for name, t, where in used:
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
        bad = where & ((t < 0) | (t >= vocab)) if vocab is not None else where & (t < 0)  # (B, P) or (B, T)
        if bool(bad.any()):
            row, col = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                f"{name} row {row} holds token id {int(t[row, col])} at position {col}, outside the model's "
                f"vocabulary [0, {vocab})"
            )
    _check_completion_start(completion_mask)
    scored = completion_mask.to(torch.bool).any(dim=1) & ~prompt_mask.to(torch.bool).any(dim=1)
    if bool(scored.any()):
        row = int(torch.nonzero(scored)[0, 0])
        raise ValueError(f"prompt_mask row {row} is all 0: the first completion token has no context to be scored in")


def _check_completion_start(completion_mask: torch.Tensor) -> None:
    """A completion starts at column 0. A row with 0s before its first 1 is ambiguous: the tree forward
    reads 0s before a row's last 1 as context, `tempo_advantages` reads a row of 0s then 1s as left
    padding (reference/padding.py), and the two would disagree without a word; it is refused."""
    m = completion_mask.to(torch.bool)  # (B, T)
    late = m.any(dim=1) & ~m[:, 0] if m.shape[1] else m.any(dim=1)  # (B,)
    if bool(late.any()):
        row = int(torch.nonzero(late)[0, 0])
        first = int(torch.nonzero(m[row])[0, 0])
        raise ValueError(
            f"completion_mask row {row} is 0 before its first 1 (position {first}): completions must start at "
            "column 0 (right padding), since 0s before a row's last 1 are read as context and tempo_advantages "
            "reads leading 0s as left padding; right-pad the completions, or move context that precedes the "
            "completion to the end of the prompt"
        )


def _completion_columns(completion_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the completion positions a row's sequence holds (up to its last 1)."""
    t = completion_mask.shape[1]
    columns = torch.arange(t, device=completion_mask.device)
    return columns[None, :] < completion_lengths(completion_mask)[:, None]


def _vocab_size(net) -> int | None:
    get = getattr(net, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return int(emb.num_embeddings) if isinstance(emb, torch.nn.Embedding) else None


def _check_packing(p: Packing, prompt_ids, prompt_mask, completion_ids, completion_mask) -> None:
    """A `packing` passed in must be this batch's trie: every row's path through it spells the row's
    sequence and its completion positions sit on that path (O(B x S), no forward)."""
    seq, p_len, lengths = row_sequences(prompt_ids, prompt_mask, completion_ids, completion_mask)  # (B, S)
    nodes = p.row_nodes  # (B, S')
    same_shape = nodes.shape == seq.shape and p.completion_node.shape == completion_mask.shape
    if same_shape and bool(((nodes >= 0) == (seq >= 0)).all()):
        on_path = nodes >= 0
        tokens_match = bool((p.tokens[nodes[on_path]] == seq[on_path]).all())
        t = completion_mask.shape[1]
        col = p_len[:, None] + torch.arange(t, device=seq.device)[None, :]  # (B, T) sequence column
        inside = col < lengths[:, None]
        want = torch.where(inside, nodes.gather(1, col.clamp(max=max(seq.shape[1] - 1, 0))), -1) if seq.numel() else -1
        if tokens_match and bool((p.completion_node == want).all()):
            return
    raise ValueError("packing is not the trie of these rows (pass the packing made by pack() of this batch, or None)")


def _empty_packing(b: int, t: int, *, device) -> Packing:
    """The trie of B rows without a token: no node, every completion position -1."""
    none = torch.zeros(0, dtype=torch.int64, device=device)
    zeros = torch.zeros(b, dtype=torch.int64, device=device)
    return Packing(
        tokens=none,
        depth=none,
        parent=none,
        completion_node=torch.full((b, t), -1, dtype=torch.int64, device=device),
        row_nodes=torch.zeros(b, 0, dtype=torch.int64, device=device),
        order=torch.arange(b, device=device),
        lcp=zeros,
        length=zeros,
        start=zeros,
    )


def tree_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    packing: Packing | None = None,
) -> torch.Tensor:
    """log pi(completion token | its row's context) for every completion position, from one forward
    over the batch's prefix trie.

    Args:
        model: a Hugging Face causal LM (`AutoModelForCausalLM`) whose attention goes through the
            attention interface (Llama, Qwen2, Mistral, ...), as it is or inside a PEFT model or a
            `DistributedDataParallel` wrapper (the forward runs through the wrapper); FSDP is refused.
            The model is left unchanged (`_install` routes the tree's calls in the attention registry).
        prompt_ids: (B, P) integer token ids of the prompts.
        prompt_mask: (B, P) 0/1 (any dtype); prompt tokens are where it is 1 (left, right or no padding).
        completion_ids: (B, T) integer token ids of the completions.
        completion_mask: (B, T) 0/1; a row's completion starts at column 0 (right padding) and runs to
            its last masked position; positions with mask 0 between its 1s are context that is not
            scored (multi-turn tool output). A row that is 0 before its first 1 is refused: left
            padding to `tempo_advantages`, context here; context before a completion goes in the prompt.
        temperature: the logits are divided by it before the log-softmax, as in sampling. It must
            keep 1 / temperature and logits / temperature finite in the logits' dtype (float32, or
            float64 for a float64 model; |logits| bounded by max |h| max |w| + max |b|): a smaller
            one is refused with the bound it missed, never answered with NaN.
        packing: a `Packing` of these rows (from `pack` of this batch; another batch's is refused),
            to reuse one packing across several forwards.
    Returns:
        (B, T) float32 (float64 for a float64 model): log-probs, 0 where completion_mask is 0;
        differentiable with respect to the model's parameters.
    """
    return tree_logprobs_and_entropy(
        model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature, packing=packing
    )[0]


def tree_logprobs_and_entropy(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    packing: Packing | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`tree_logprobs`, and with_entropy the (B, T) entropy of each scored position's tempered
    next-token distribution (no gradient; 0 where completion_mask is 0)."""
    p, scored = _packed_rows(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, packing)
    b, t = completion_ids.shape
    dev = completion_ids.device
    dtype = torch.promote_types(_model_dtype(model), torch.float32)
    zeros = torch.zeros(b, t, dtype=dtype, device=dev)
    if not bool(scored.any()):  # nothing to score: zeros that still reach the graph, so backward() runs
        anchor = next(model.parameters(), None)
        logp = zeros if anchor is None or not torch.is_grad_enabled() else zeros + 0.0 * anchor.sum()
        return logp, (zeros if with_entropy else None)
    nodes = p.completion_node[scored]  # (M,) scored positions' nodes, with repeats
    unique_nodes, per_position = torch.unique(nodes, return_inverse=True)  # (U,), (M,)
    node_logp, node_entropy = _node_logprobs_with_grad(model, p, unique_nodes, temperature, with_entropy)
    logp = zeros.masked_scatter(scored, node_logp.to(dtype)[per_position])
    if node_entropy is None:
        return logp, None
    return logp, zeros.masked_scatter(scored, node_entropy.detach().to(dtype)[per_position])


def _node_logprobs_with_grad(model, p: Packing, nodes, temperature: float, with_entropy: bool):
    """((U,) log-probs of `nodes` in their contexts, with gradient; (U,) entropies or None). Through the
    hidden states and the LM head in chunks where the logits are exactly the LM head's output; through
    the model's own logits of the context nodes otherwise (soft-capped or scaled logits)."""
    from .fast.policy_loss_torch import token_logprobs_with_grad
    from .policy_loss import check_logit_range, check_temperature, lm_head

    context = p.parent[nodes]  # (U,) the node whose output predicts each one
    try:
        weight, bias = lm_head(_hf_model(model))
    except ValueError:
        keep, per_node = torch.unique(context, return_inverse=True)  # (K,), (U,)
        logits = _packed_forward(model, p, logits_to_keep=keep).logits[0]  # (K, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        check_logit_range(float(logits.detach().abs().max()), logits.dtype, temperature)
        logits = logits / temperature
        logq = torch.log_softmax(logits, dim=-1)  # (K, V)
        entropy = -(logq.exp() * logq).sum(-1)[per_node].detach() if with_entropy else None
        return logq[per_node, p.tokens[nodes]], entropy
    hidden = _packed_forward(model, p, hidden_only=True).last_hidden_state[0]  # (N, H)
    h = hidden[context].to(weight.dtype)  # (U, H)
    check_temperature(h.detach(), weight.detach(), bias, temperature, hidden_name="the model's hidden states")
    return token_logprobs_with_grad(
        h, weight, p.tokens[nodes], bias=bias, temperature=temperature, with_entropy=with_entropy
    )


def tree_policy_loss(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    temperature: float = 1.0,
    aggregation: str = "token-mean",
    packing: Packing | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fused_policy_loss` of the rows' completions, computed on their prefix tree: one packed forward
    of the model's body, then the clipped surrogate on the tree's nodes, so every shared prefix costs
    one forward, one LM-head product and one backward whatever the number of rows through it.

    Rows through a node share its log-prob; where they also share old_logp and ref_logp (as when
    those come from a tree forward) they share its ratio, and their terms add up to the node's:
    -(sum of w A+) min(r, 1 + clip_high) - (sum of w A-) max(r, 1 - clip_low) + kl_coef (sum of w) k3
    (proofs_notes/tree-forward.md, P4). Rows whose old or reference values differ are kept apart, so
    the result equals the per-row loss for any inputs.

    Args:
        model: as for `tree_logprobs`; its logits must be exactly the LM head's output (no soft-capping).
        prompt_ids: (B, P) as for `tree_logprobs`.
        prompt_mask: (B, P) as for `tree_logprobs`.
        completion_ids: (B, T) as for `tree_logprobs`.
        completion_mask: (B, T) 0/1, the tokens that carry loss; 0 inside a row is context (as for
            `tree_logprobs`: a row starts at column 0).
        old_logp: (B, T) float, the sampling policy's log-probs (no gradient); None: the current
            policy's own, detached (a single update: the ratio is exactly 1).
        advantages: (B, T) float token advantages (no gradient).
        ref_logp: (B, T) float, the reference policy's log-probs; needed when kl_coef > 0.
        kl_coef: weight of the k3 KL term, as for `fused_policy_loss`.
        clip_low: PPO clip below, as for `fused_policy_loss`.
        clip_high: PPO clip above, as for `fused_policy_loss`.
        temperature: the logits are divided by it, as for `fused_policy_loss`.
        aggregation: "token-mean" or "sequence-mean", as for `fused_policy_loss`.
        packing: a `Packing` of these rows, to reuse one packing across several forwards.
    Returns:
        (loss, metrics) as `fused_policy_loss` returns them: the loss a float32 scalar with gradients
        to the model's parameters; metrics policy_loss, kl, clip fractions, approx_kl and entropy.
    """
    from .fast.policy_loss_torch import ItemCounts, ItemTargets, LossParams, items_loss_chunked, token_weights
    from .fast.tree_forward_torch import node_items
    from .policy_loss import check_loss_terms, check_temperature, lm_head

    p, scored = _packed_rows(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, packing)
    check_loss_terms(completion_mask, old_logp, advantages, ref_logp, kl_coef, clip_low, clip_high, aggregation)
    weights = token_weights(scored, aggregation)  # (B, T) float32
    ref = ref_logp if kl_coef else None
    weight, bias = lm_head(_hf_model(model))
    params = LossParams(clip_low, clip_high, kl_coef, temperature)
    if not bool(scored.any()):  # nothing to score: one empty item, so the loss is 0 and backward() runs
        zero = torch.zeros(1, dtype=torch.float32, device=weight.device)
        nothing = ItemTargets(zero, zero, zero, zero, None if ref is None else zero)
        hidden = torch.zeros(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
        targets = torch.zeros(1, dtype=torch.int64, device=weight.device)
        return items_loss_chunked(hidden, weight, targets, nothing, ItemCounts(zero, zero, zero), params, bias)
    hidden = _packed_forward(model, p, hidden_only=True).last_hidden_state[0]  # (N, H)
    if old_logp is None:  # the current policy's log-probs, from the same hidden states, detached
        old_logp = _node_logprobs(hidden.detach(), p, scored, weight, bias, temperature)
    item_node, items, counts = node_items(p.completion_node, scored, old_logp, advantages, weights, ref)
    context = hidden[p.parent[item_node]].to(weight.dtype)  # (U, H) the state that predicts each item
    check_temperature(context.detach(), weight.detach(), bias, temperature, hidden_name="the model's hidden states")
    return items_loss_chunked(context, weight, p.tokens[item_node], items, counts, params, bias)


@torch.no_grad()
def tree_scores(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    packing: Packing | None = None,
) -> torch.Tensor:
    """`tree_logprobs` without gradient and without the (nodes, V) logits: the LM head runs in chunks
    over the scored nodes' contexts (as `fused_logprobs` does). For old-policy and reference scores.
    Returns (B, T) float32, 0 where completion_mask is 0; the model's logits must be its LM head's."""
    from .policy_loss import lm_head

    p, scored = _packed_rows(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, packing)
    if not bool(scored.any()):
        return torch.zeros(scored.shape, dtype=torch.float32, device=completion_ids.device)
    weight, bias = lm_head(_hf_model(model))
    hidden = _packed_forward(model, p, hidden_only=True).last_hidden_state[0]  # (N, H)
    return _node_logprobs(hidden, p, scored, weight, bias, temperature)


@torch.no_grad()
def _node_logprobs(hidden, p: Packing, scored, weight, bias, temperature: float) -> torch.Tensor:
    """(B, T) float32 log-probs of the scored positions from the packed hidden states (N, H), the LM
    head run once per scored node, in chunks; 0 elsewhere."""
    from .fast.policy_loss_torch import token_logprobs_chunked
    from .policy_loss import check_temperature

    unique_nodes, per_position = torch.unique(p.completion_node[scored], return_inverse=True)  # (U,), (M,)
    context = hidden[p.parent[unique_nodes]].to(weight.dtype)[None]  # (1, U, H)
    check_temperature(context[0], weight, bias, temperature, hidden_name="the model's hidden states")
    node_logp = token_logprobs_chunked(
        context, weight, p.tokens[unique_nodes][None], bias=bias, temperature=temperature
    )
    out = torch.zeros(scored.shape, dtype=torch.float32, device=scored.device)
    return out.masked_scatter(scored, node_logp[0][per_position])


def _packed_forward(model, p: Packing, *, logits_to_keep: torch.Tensor | None = None, hidden_only: bool = False):
    """One forward of the packed trie (positions = depths, attention = ancestors and itself) through the
    model as passed (a DistributedDataParallel wrapper's forward prepares its gradient reduction): the
    model's output with the logits of `logits_to_keep` nodes, or with hidden_only its body's output
    (hidden states of every node; the LM head runs on no node)."""
    net = _hf_model(model)
    _install(net)
    run = _Run(attention_plan(p), max_depth=int(p.depth.max()))
    dev = p.tokens.device
    inputs: dict[str, Any] = dict(
        input_ids=p.tokens[None],
        position_ids=p.depth[None],
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev),  # 4-D: no mask is built
        use_cache=False,
        tempo_tree=run,
    )
    if hidden_only:
        out = _body_output(model, net, inputs)
    else:
        out = model(**inputs, logits_to_keep=logits_to_keep)
    _check_run(net, run)
    return out


def _body_output(model, net, inputs: dict[str, Any]):
    """The output of `net`'s body (`net.base_model`: every node's last hidden state) in a forward of
    `model` itself, read by a hook on the body; keeping no logits makes the LM head's share nothing."""
    body = getattr(net, "base_model", None)
    if not isinstance(body, torch.nn.Module):
        raise ValueError(f"tree_logprobs cannot run {type(net).__name__}: it has no base_model (its body)")
    seen: list[Any] = []
    handle = body.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        no_node = torch.zeros(0, dtype=torch.int64, device=inputs["input_ids"].device)
        model(**inputs, logits_to_keep=no_node)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(
            f"tree_logprobs cannot run {type(net).__name__}: its forward called its body {len(seen)} times, not once"
        )
    return seen[0]


def _model_dtype(model) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except (StopIteration, AttributeError):
        return torch.float32


def _check_run(model, run: _Run) -> None:
    layers = getattr(model.config, "num_hidden_layers", None)
    if run.errors:
        raise ValueError(f"tree_logprobs cannot run {type(model).__name__}: {run.errors[0]}")
    if run.calls == 0 or (layers is not None and run.calls != layers):
        raise ValueError(
            f"tree_logprobs cannot run {type(model).__name__}: {run.calls} of its {layers} layers called the "
            "attention interface, so the tree attention would not be applied everywhere"
        )
