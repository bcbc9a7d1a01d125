"""Log-probs of a batch computed on its prefix tree: every shared prefix runs through the model once.

    logp = tempo_rl.tree_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # (B, T)

equals, row by row, the log-probs of a forward of that row alone without padding (its prompt tokens
where prompt_mask is 1, then its completion), with gradients to the model's parameters; the proof is
proofs_notes/tree-forward.md and tests/test_tree_forward.py checks it in float64 on Qwen2 and Llama.

How: the rows' unique prefixes are packed into one sequence of N trie nodes (`fast.tree_forward_torch
.pack`), positions are node depths, and attention runs through a Hugging Face attention function
registered here, which lets each node attend to its ancestors and itself. Linear layers, norms and the
MLP act on each position alone, so they need nothing else. A model whose layers do not all call the
attention interface (or that needs features the tree attention does not provide: soft-capping,
sliding windows shorter than the batch, attention sinks) is refused with a one-line ValueError, never
run wrongly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .fast.tree_forward_torch import AttentionPlan, Packing, attention_plan, pack, tree_attention

TREE_PREFIX = "tempo_tree|"
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
    """A Hugging Face attention function: the tree attention when a tree forward is running, the
    model's own implementation (`module.config` names it after TREE_PREFIX) otherwise."""
    run = kwargs.pop("tempo_tree", None)
    if run is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = module.config._attn_implementation.removeprefix(TREE_PREFIX)
        fn = ALL_ATTENTION_FUNCTIONS["sdpa" if inner == "eager" else inner]
        return fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
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


def _install(model) -> None:
    """Route the model's attention through the tree attention function (idempotent). Calls without a
    tree forward keep running the model's implementation ("eager" runs as "sdpa": the same maths)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None:
        raise ValueError(f"tree_logprobs: {type(model).__name__} is not a Hugging Face model with an attention config")
    if current.startswith(TREE_PREFIX):
        return
    if current != "eager" and current not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"tree_logprobs: attention implementation {current!r} is not supported; load with 'sdpa'")
    name = TREE_PREFIX + current
    ALL_ATTENTION_FUNCTIONS.register(name, _tree_attention_forward)
    mask: Any = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(current)
    if mask is not None:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        setattr(config, "_attn_implementation", name)


def _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float) -> None:
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
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    for name, t in (("prompt_ids", prompt_ids), ("completion_ids", completion_ids)):
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
        if t.numel() and int(t.min()) < 0:
            row = int(torch.nonzero(t < 0)[0, 0])
            raise ValueError(f"{name} row {row} holds a negative token id")
    scored = completion_mask.to(torch.bool).any(dim=1) & ~prompt_mask.to(torch.bool).any(dim=1)
    if bool(scored.any()):
        row = int(torch.nonzero(scored)[0, 0])
        raise ValueError(f"prompt_mask row {row} is all 0: the first completion token has no context to be scored in")


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
            attention interface (Llama, Qwen2, Mistral, ...). Its attention is routed through the tree
            attention function from the first call on (`_install`).
        prompt_ids: (B, P) integer token ids of the prompts.
        prompt_mask: (B, P) 0/1 (any dtype); prompt tokens are where it is 1 (left, right or no padding).
        completion_ids: (B, T) integer token ids of the completions.
        completion_mask: (B, T) 0/1; a row's completion runs to its last masked position, and positions
            with mask 0 before it are context that is not scored (multi-turn tool output).
        temperature: the logits are divided by it before the log-softmax, as in sampling.
        packing: a `Packing` of these rows, to reuse one packing across several forwards.
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
    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    b, t = completion_ids.shape
    dev = completion_ids.device
    p = packing if packing is not None else pack(prompt_ids, prompt_mask, completion_ids, completion_mask)
    scored = completion_mask.to(torch.bool) & (p.completion_node >= 0)  # (B, T)
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
    from .policy_loss import lm_head

    context = p.parent[nodes]  # (U,) the node whose output predicts each one
    try:
        weight, bias = lm_head(model)
    except ValueError:
        keep, per_node = torch.unique(context, return_inverse=True)  # (K,), (U,)
        logits = _packed_forward(model, p, logits_to_keep=keep).logits[0]  # (K, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        logq = torch.log_softmax(logits, dim=-1)  # (K, V)
        entropy = -(logq.exp() * logq).sum(-1)[per_node].detach() if with_entropy else None
        return logq[per_node, p.tokens[nodes]], entropy
    hidden = _packed_forward(model, p, hidden_only=True).last_hidden_state[0]  # (N, H)
    h = hidden[context].to(weight.dtype)  # (U, H)
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
        completion_mask: (B, T) 0/1, the tokens that carry loss; 0 inside a row is context.
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
    from .policy_loss import check_loss_terms, lm_head

    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    check_loss_terms(completion_mask, old_logp, advantages, ref_logp, kl_coef, clip_low, clip_high, aggregation)
    p = packing if packing is not None else pack(prompt_ids, prompt_mask, completion_ids, completion_mask)
    scored = completion_mask.to(torch.bool) & (p.completion_node >= 0)  # (B, T)
    weights = token_weights(scored, aggregation)  # (B, T) float32
    ref = ref_logp if kl_coef else None
    weight, bias = lm_head(model)
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

    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    p = packing if packing is not None else pack(prompt_ids, prompt_mask, completion_ids, completion_mask)
    scored = completion_mask.to(torch.bool) & (p.completion_node >= 0)  # (B, T)
    if not bool(scored.any()):
        return torch.zeros(scored.shape, dtype=torch.float32, device=completion_ids.device)
    weight, bias = lm_head(model)
    hidden = _packed_forward(model, p, hidden_only=True).last_hidden_state[0]  # (N, H)
    return _node_logprobs(hidden, p, scored, weight, bias, temperature)


@torch.no_grad()
def _node_logprobs(hidden, p: Packing, scored, weight, bias, temperature: float) -> torch.Tensor:
    """(B, T) float32 log-probs of the scored positions from the packed hidden states (N, H), the LM
    head run once per scored node, in chunks; 0 elsewhere."""
    from .fast.policy_loss_torch import token_logprobs_chunked

    unique_nodes, per_position = torch.unique(p.completion_node[scored], return_inverse=True)  # (U,), (M,)
    context = hidden[p.parent[unique_nodes]].to(weight.dtype)[None]  # (1, U, H)
    node_logp = token_logprobs_chunked(
        context, weight, p.tokens[unique_nodes][None], bias=bias, temperature=temperature
    )
    out = torch.zeros(scored.shape, dtype=torch.float32, device=scored.device)
    return out.masked_scatter(scored, node_logp[0][per_position])


def _packed_forward(model, p: Packing, *, logits_to_keep: torch.Tensor | None = None, hidden_only: bool = False):
    """One forward of the packed trie (positions = depths, attention = ancestors and itself): the
    model's output with the logits of `logits_to_keep` nodes, or its body's output (hidden states of
    every node) with hidden_only."""
    _install(model)
    run = _Run(attention_plan(p), max_depth=int(p.depth.max()))
    dev = p.tokens.device
    inputs: dict[str, Any] = dict(
        input_ids=p.tokens[None],
        position_ids=p.depth[None],
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev),  # 4-D: no mask is built
        use_cache=False,
        tempo_tree=run,
    )
    out = model.base_model(**inputs) if hidden_only else model(**inputs, logits_to_keep=logits_to_keep)
    _check_run(model, run)
    return out


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
