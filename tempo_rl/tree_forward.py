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
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    out = tree_attention(query[0], key[0], value[0], run.plan, scale=scale, dropout=dropout)  # (N, H, D)
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
    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    b, t = completion_ids.shape
    dev = completion_ids.device
    p = packing if packing is not None else pack(prompt_ids, prompt_mask, completion_ids, completion_mask)
    scored = completion_mask.to(torch.bool) & (p.completion_node >= 0)  # (B, T)
    dtype = torch.promote_types(_model_dtype(model), torch.float32)
    if not bool(scored.any()):  # nothing to score: zeros that still reach the graph, so backward() runs
        anchor = next(model.parameters(), None)
        zeros = torch.zeros(b, t, dtype=dtype, device=dev)
        return zeros if anchor is None or not torch.is_grad_enabled() else zeros + 0.0 * anchor.sum()
    _install(model)
    nodes = p.completion_node[scored]  # (M,) scored positions' nodes, with repeats
    unique_nodes, per_position = torch.unique(nodes, return_inverse=True)
    context = p.parent[unique_nodes]  # (U,) the node whose output predicts each scored node
    keep, per_node = torch.unique(context, return_inverse=True)
    run = _Run(attention_plan(p), max_depth=int(p.depth.max()))
    out = model(
        input_ids=p.tokens[None],
        position_ids=p.depth[None],
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev),  # 4-D: no mask is built
        use_cache=False,
        logits_to_keep=keep,
        tempo_tree=run,
    )
    _check_run(model, run)
    logits = out.logits[0].to(dtype)  # (K, V)
    if temperature != 1.0:
        logits = logits / temperature
    node_logp = torch.log_softmax(logits, dim=-1)[per_node, p.tokens[unique_nodes]]  # (U,)
    result = torch.zeros(b, t, dtype=dtype, device=dev)
    return result.masked_scatter(scored, node_logp[per_position])


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
