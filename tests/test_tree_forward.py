"""Training on the tree: the packing equals the Python trie, and `tree_logprobs` equals a forward of
each row alone (log-probs and parameter gradients) on Qwen2 and Llama in float64
(proofs_notes/tree-forward.md)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tempo_rl import tree_logprobs
from tempo_rl.fast.tree_forward_torch import pack
from tempo_rl.reference.tree_forward import pack_rows, row_logprobs

VOCAB = 12


@st.composite
def tree_batches(draw, max_rows: int = 6):
    """Rows of a few prompts (left-padded, different lengths), completions forking from earlier ones at
    any depth (0 included), identical completions, ragged and empty completion masks, holes inside."""
    b = draw(st.integers(1, max_rows))
    prompts = [draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)) for _ in range(draw(st.integers(1, 2)))]
    rows_p, rows_c = [], []
    for i in range(b):
        rows_p.append(draw(st.sampled_from(prompts)))
        c = draw(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=7))
        if i and draw(st.booleans()):
            src = rows_c[draw(st.integers(0, i - 1))]
            d = draw(st.integers(0, len(src)))
            c = src[:d] + c
        rows_c.append(c[:8])
    p_len, t = max(map(len, rows_p)), max(1, max(map(len, rows_c)))
    prompt_ids = torch.zeros(b, p_len, dtype=torch.long)
    prompt_mask = torch.zeros(b, p_len, dtype=torch.long)
    completion_ids = torch.zeros(b, t, dtype=torch.long)
    completion_mask = torch.zeros(b, t, dtype=torch.long)
    for i, (p, c) in enumerate(zip(rows_p, rows_c)):
        prompt_ids[i, p_len - len(p) :] = torch.tensor(p)
        prompt_mask[i, p_len - len(p) :] = 1
        completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, : len(c)] = 1
        if len(c) > 2 and draw(st.booleans()):
            completion_mask[i, draw(st.integers(1, len(c) - 2))] = 0  # a hole: context, not scored
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _lists(*ts):
    return [t.tolist() for t in ts]


@settings(max_examples=200, deadline=None)
@given(tree_batches())
def test_packing_equals_the_python_trie(batch):
    p = pack(*batch)
    ref = pack_rows(*_lists(*batch))
    assert p.tokens.tolist() == ref.tokens
    assert p.depth.tolist() == ref.depth
    assert p.parent.tolist() == ref.parent
    assert p.completion_node.tolist() == ref.completion_node
    assert all(q < n for n, q in enumerate(ref.parent))  # every parent precedes its children


def test_packing_shares_identical_rows_and_keeps_distinct_ones_apart():
    prompt = torch.tensor([[5, 6], [5, 6], [7, 6]])
    completion = torch.tensor([[1, 2], [1, 2], [1, 2]])
    ones = torch.ones(3, 2, dtype=torch.long)
    p = pack(prompt, ones, completion, ones)
    assert p.num_nodes == 8  # rows 0 and 1 are one path of 4; row 2 differs at its first token
    assert p.completion_node[0].tolist() == p.completion_node[1].tolist() != p.completion_node[2].tolist()


class ExactRMSNorm(torch.nn.Module):
    """RMSNorm computed in its input's dtype. Hugging Face's Llama and Qwen2 norms round their input
    through float32 even in a float64 model (and so their backward rounds gradients to float32), which
    would hide float64 agreement behind float32 rounding; with this norm the model is float64 end to end."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps))


def _exact_norms(model):
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RMSNorm"):
            model.set_submodule(name, ExactRMSNorm(module))
    return model


def _model(family: str, seed: int = 0, *, max_positions: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cls, config = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "llama": (LlamaForCausalLM, LlamaConfig)}[family]
    cfg = config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
    )
    return cls(cfg).double()


MODELS = {name: _exact_norms(_model(name)) for name in ("qwen2", "llama")}


def _grads(model, logp, weights):
    params = [q for q in model.parameters() if q.requires_grad]
    return torch.autograd.grad(
        (weights * logp).sum(), params, retain_graph=True, allow_unused=True, materialize_grads=True
    )


@pytest.mark.parametrize("family", sorted(MODELS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=tree_batches(), temperature=st.sampled_from([1.0, 0.7, 1.3]))
@example(  # a fork at depth 0, an identical completion and an empty one
    batch=(
        torch.tensor([[0, 1], [0, 1], [2, 1], [2, 1]]),
        torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]]),
        torch.tensor([[3, 4, 5], [3, 4, 5], [6, 4, 0], [0, 0, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]]),
    ),
    temperature=1.0,
)
def test_tree_logprobs_equal_each_row_alone(family, batch, temperature):
    _check_tree_logprobs_equal_each_row_alone(family, batch, temperature)


@pytest.mark.parametrize("kernel", ["math", "dfs"])
@pytest.mark.parametrize("family", sorted(MODELS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=tree_batches(), temperature=st.sampled_from([1.0, 0.7]))
def test_tree_logprobs_equal_each_row_alone_on_every_attention_kernel(kernel, family, batch, temperature):
    """The same property through the other kernels of `tree_attention`: the chunked math kernel (off
    CPU and CUDA) and "dfs", the Triton tree kernel CUDA runs by default (here in Triton's interpreter,
    which tests/conftest.py switches on)."""
    from unittest import mock

    from tempo_rl.fast import tree_forward_torch

    with mock.patch.object(tree_forward_torch, "default_kernel", lambda device: kernel):
        _check_tree_logprobs_equal_each_row_alone(family, batch, temperature)


def _check_tree_logprobs_equal_each_row_alone(family, batch, temperature):
    model = MODELS[family]
    logp = tree_logprobs(model, *batch, temperature=temperature)
    ref = row_logprobs(model, *batch, temperature=temperature)
    assert logp.dtype == torch.float64
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-7)
    assert (logp[batch[3] == 0] == 0).all()
    if not ref.requires_grad:  # nothing scored: the reference has no graph to compare against
        return
    _assert_same_gradients(model, logp, ref, rel=1e-12)  # float64 rounding: measured <= 2e-15


def _assert_same_gradients(model, logp, ref, *, rel: float):
    """Parameter gradients of a random weighting of the log-probs agree within rel x the largest one."""
    weights = torch.randn(logp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = _grads(model, ref, weights)
    scale = max(g.abs().max() for g in want).item()
    worst = max((got - w).abs().max().item() for got, w in zip(_grads(model, logp, weights), want))
    assert worst <= rel * scale, (worst, scale)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_stock_norms_agree_to_their_float32_rounding(family):
    """The models as Hugging Face ships them: their norms round through float32, so the gradients of
    the tree and the rows (which sum the same terms in different orders before that rounding) agree
    to float32 rounding, about 1e-6 of their scale; the forward still agrees to float64 rounding."""
    model = _model(family)
    batch = (
        torch.tensor([[0, 1], [0, 1], [2, 1], [2, 1]]),
        torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]]),
        torch.tensor([[3, 4, 5], [3, 4, 5], [6, 4, 0], [0, 0, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]]),
    )
    logp, ref = tree_logprobs(model, *batch), row_logprobs(model, *batch)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-12)
    _assert_same_gradients(model, logp, ref, rel=1e-4)


def test_a_model_keeps_its_own_attention_outside_a_tree_forward():
    model = _model("llama", seed=1)
    ids = torch.tensor([[3, 4, 5, 6]])
    before = model(input_ids=ids).logits
    tree_logprobs(model, ids[:, :2], torch.ones(1, 2), ids[:, 2:], torch.ones(1, 2))
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-12)


def test_bad_input_names_the_argument():
    model = MODELS["llama"]
    ids, ones = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="prompt_mask row 0"):
        tree_logprobs(model, ids, torch.zeros(1, 2), ids, ones)
    with pytest.raises(ValueError, match="temperature"):
        tree_logprobs(model, ids, ones, ids, ones, temperature=0.0)
    with pytest.raises(ValueError, match="completion_mask"):
        tree_logprobs(model, ids, ones, ids, torch.ones(1, 3))
    with pytest.raises(TypeError, match="completion_ids"):
        tree_logprobs(model, ids, ones, ids.float(), ones)


def test_a_model_that_bypasses_the_attention_interface_is_refused():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"_attn_implementation": "sdpa", "num_hidden_layers": 2})()
            self.emb = torch.nn.Embedding(VOCAB, VOCAB)

        def forward(self, input_ids, **kwargs):
            return type("O", (), {"logits": self.emb(input_ids)})()

    ids, ones = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="0 of its 2 layers"):
        tree_logprobs(Fake(), ids, ones, ids, ones)


# ----------------------------------------------------------------------------- the tree-form loss (P4)
AGGREGATIONS = ("token-mean", "sequence-mean")


def _loss_inputs(batch, seed: int, *, per_node: bool = True):
    """old_logp, advantages, ref_logp (B, T) float64: old and ref one value per trie node (as a tree
    forward gives them), advantages per token with both signs and zeros."""
    g = torch.Generator().manual_seed(seed)
    p = pack(*batch)
    n, shape = max(p.num_nodes, 1), batch[2].shape
    node = p.completion_node.clamp(min=0)
    old = (-2.0 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))[node]
    ref = (-2.0 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))[node]
    if not per_node:  # rows through one node disagree: the node must split
        old = old + 1e-3 * torch.randn(shape, generator=g, dtype=torch.float64)
    adv = torch.randn(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) > 0.2)
    return old, adv, ref


def _row_loss(model, batch, old, adv, ref, aggregation, temperature, kl_coef):
    """The per-row loss, every token an item, on each row's own forward (float64 autograd)."""
    from tempo_rl.fast.policy_loss_torch import LossParams, items_loss, token_items, token_weights

    mask = batch[3].bool()
    logp = row_logprobs(model, *batch, temperature=temperature)
    w = token_weights(mask, aggregation).to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    items, counts = token_items(
        torch.where(mask, old, zero), torch.where(mask, adv, zero), w, mask, torch.where(mask, ref, zero)
    )
    return items_loss(logp, items, counts, LossParams(0.2, 0.28, kl_coef, temperature))


def _node_loss(model, batch, old, adv, ref, aggregation, temperature, kl_coef):
    """The same loss on the tree's items (P4): one term per (node, old, ref), float64 autograd."""
    from tempo_rl.fast.policy_loss_torch import LossParams, items_loss, token_weights
    from tempo_rl.fast.tree_forward_torch import node_items

    p = pack(*batch)
    scored = batch[3].bool() & (p.completion_node >= 0)
    logp = tree_logprobs(model, *batch, temperature=temperature, packing=p)  # (B, T), one value per node
    w = token_weights(scored, aggregation).to(torch.float64)
    item_node, items, counts = node_items(p.completion_node, scored, old, adv, w, ref)
    first = {n: i for i, n in reversed(list(enumerate(p.completion_node[scored].tolist())))}
    pick = torch.tensor([first[n] for n in item_node.tolist()], dtype=torch.int64)
    return items_loss(logp[scored][pick], items, counts, LossParams(0.2, 0.28, kl_coef, temperature)), item_node


@pytest.mark.parametrize("family", sorted(MODELS))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=tree_batches(),
    aggregation=st.sampled_from(AGGREGATIONS),
    kl_coef=st.sampled_from([0.0, 0.3]),
    per_node=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tree_form_loss_equals_the_per_row_loss(family, batch, aggregation, kl_coef, per_node, seed):
    """P4: summed over the rows through a node, the clipped terms are the node's term; value, metrics
    and parameter gradients agree to float64 rounding, for each aggregation, with and without KL,
    and with old log-probs that differ inside a node (which then splits)."""
    model = MODELS[family]
    if not batch[3].any():
        return
    old, adv, ref = _loss_inputs(batch, seed, per_node=per_node)
    args = (model, batch, old, adv, ref, aggregation, 1.3, kl_coef)
    (want, want_m), ((got, got_m), item_node) = _row_loss(*args), _node_loss(*args)
    scale = 1.0 + abs(want.item())
    assert abs(got.item() - want.item()) <= 1e-12 * scale
    for name in want_m:
        assert abs(got_m[name].item() - want_m[name].item()) <= 1e-12 * (1 + abs(want_m[name].item())), name
    if per_node:  # one item per scored node: the sharing is real
        assert item_node.unique().numel() == item_node.numel()
    params = [q for q in model.parameters()]
    g_want = torch.autograd.grad(want, params, allow_unused=True, materialize_grads=True)
    g_got = torch.autograd.grad(got, params, allow_unused=True, materialize_grads=True)
    top = max(g.abs().max().item() for g in g_want)
    assert max((a - b).abs().max().item() for a, b in zip(g_got, g_want)) <= 1e-12 * max(top, 1e-300)


def _row_hidden_loss(model, batch, old, adv, ref, aggregation, kl_coef):
    """fused_policy_loss on each row's own hidden states, rows padded into (B, T, H)."""
    import tempo_rl
    from tempo_rl.reference.tree_forward import row_sequence

    pi, pm, ci, cm = batch
    b, t = ci.shape
    weight = model.get_output_embeddings().weight
    hidden = torch.zeros(b, t, weight.shape[1], dtype=weight.dtype)
    for r in range(b):
        seq, plen = row_sequence(pi[r].tolist(), pm[r].tolist(), ci[r].tolist(), cm[r].tolist())
        n = len(seq) - plen
        if n:
            h = model.base_model(input_ids=torch.tensor([seq]), use_cache=False).last_hidden_state[0]
            hidden = hidden.index_put((torch.tensor([r]), torch.arange(n)), h[plen - 1 : plen - 1 + n])
    return tempo_rl.fused_policy_loss(
        hidden, weight, ci, old, adv, cm, ref_logp=ref, kl_coef=kl_coef, aggregation=aggregation, backend="torch"
    )


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=tree_batches(), seed=st.integers(0, 2**16))
def test_tree_policy_loss_equals_fused_policy_loss_row_by_row(aggregation, batch, seed):
    """The fused tree loss (packed forward, LM head on nodes, float32 chunks) equals the fused loss on
    each row's own hidden states, to the float32 rounding of the chunked loss."""
    from tempo_rl.tree_forward import tree_policy_loss

    model = MODELS["qwen2"]
    old, adv, ref = _loss_inputs(batch, seed)
    got, got_m = tree_policy_loss(model, *batch, old, adv, ref_logp=ref, kl_coef=0.1, aggregation=aggregation)
    want, want_m = _row_hidden_loss(model, batch, old, adv, ref, aggregation, 0.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name in want_m:
        torch.testing.assert_close(got_m[name], want_m[name], rtol=1e-5, atol=1e-6, msg=name)
    params = [q for q in model.parameters()]
    g_got = torch.autograd.grad(got, params, allow_unused=True, materialize_grads=True)
    g_want = torch.autograd.grad(want, params, allow_unused=True, materialize_grads=True)
    top = max(g.abs().max().item() for g in g_want)
    assert max((a - b).abs().max().item() for a, b in zip(g_got, g_want)) <= 1e-5 * max(top, 1e-12)


def test_a_batch_that_shares_nothing_is_the_plain_path():
    """Rows with distinct first tokens: the trie is the rows themselves, one item per token."""
    from tempo_rl.fast.policy_loss_torch import token_weights
    from tempo_rl.fast.tree_forward_torch import node_items

    batch = (
        torch.tensor([[1, 2], [3, 2], [0, 5]]),
        torch.tensor([[1, 1], [1, 1], [0, 1]]),
        torch.tensor([[4, 4, 6], [4, 4, 6], [7, 8, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
    )
    p = pack(*batch)
    assert p.num_nodes == int(batch[1].sum() + batch[3].sum())
    old, adv, ref = _loss_inputs(batch, 0)
    scored = batch[3].bool()
    item_node, items, _ = node_items(p.completion_node, scored, old, adv, token_weights(scored, "token-mean"), ref)
    assert sorted(item_node.tolist()) == sorted(p.completion_node[scored].tolist())  # every token its own item
    want, _ = _row_hidden_loss(MODELS["llama"], batch, old, adv, ref, "token-mean", 0.1)
    from tempo_rl.tree_forward import tree_policy_loss

    got, _ = tree_policy_loss(MODELS["llama"], *batch, old, adv, ref_logp=ref, kl_coef=0.1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_models_whose_logits_are_not_the_lm_head_go_through_their_own_logits(monkeypatch):
    """A config knob that transforms the logits (here logit_scale, which Llama itself ignores) makes
    the LM-head path unusable; the log-probs then come from the model's own logits, still exact."""
    model = MODELS["llama"]
    monkeypatch.setattr(model.config, "logit_scale", 2.0, raising=False)
    batch = (
        torch.tensor([[0, 1], [0, 1]]),
        torch.tensor([[1, 1], [1, 1]]),
        torch.tensor([[3, 4, 5], [3, 6, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    logp = tree_logprobs(model, *batch, temperature=0.7)
    ref = row_logprobs(model, *batch, temperature=0.7)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-12)
    _assert_same_gradients(model, logp, ref, rel=1e-12)


# ----------------------------------------------------------------------------- the attention itself (P3)
def _rows_batch(rows: list[list[int]]):
    """Rows given as whole token sequences: a one-token prompt, then the rest as the completion."""
    b, t = len(rows), max(len(r) for r in rows) - 1
    completion_ids = torch.zeros(b, t, dtype=torch.long)
    completion_mask = torch.zeros(b, t, dtype=torch.long)
    for i, r in enumerate(rows):
        completion_ids[i, : len(r) - 1] = torch.tensor(r[1:])
        completion_mask[i, : len(r) - 1] = 1
    prompt_ids = torch.tensor([[r[0]] for r in rows])
    return prompt_ids, torch.ones(b, 1, dtype=torch.long), completion_ids, completion_mask


def _long_rows(seed: int = 0) -> list[list[int]]:
    """Segments and ancestor runs on both sides of the CPU flash kernel's blocks (queries split by
    32, 64 or 256, keys by 512): a row of 700; rows forking from it at 1, 64, 511, 513 and 699; a
    copy of it (no own node); its extension by one token; a row of 33 from another first token."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, VOCAB, (700,), generator=g).tolist()
    fork = {1: 600, 64: 1, 511: 257, 513: 65, 699: 33}
    rows = [base, list(base), base + [1]]
    for depth, own in fork.items():
        tail = torch.randint(1, VOCAB, (own,), generator=g).tolist()
        tail[0] = (base[depth] % (VOCAB - 1)) + 1  # differs from the base row at `depth`
        rows.append(base[:depth] + tail)
    rows.append([0] + torch.randint(1, VOCAB, (32,), generator=g).tolist())
    return rows


@pytest.mark.parametrize("kernel", ["flash_cpu", "math"])
@pytest.mark.parametrize("heads", [(4, 2), (3, 3)])
def test_tree_attention_equals_the_dense_reference_across_kernel_blocks(kernel, heads):
    from tempo_rl.fast.tree_forward_torch import attention_plan, tree_attention
    from tempo_rl.reference.tree_forward import tree_attention_ref

    p = pack(*_rows_batch(_long_rows()))
    plan = attention_plan(p)
    assert len(plan.segment_length) == 8 and {1, 600, 636} <= set(plan.segment_length)  # the copy owns nothing
    assert {0, 1, 511, 513, 699, 700} <= {a.numel() for a in plan.ancestors}
    h, hk = heads
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(x, p.num_nodes, 8, dtype=torch.float64, generator=g, requires_grad=True) for x in (h, hk, hk)
    )
    out = tree_attention(q, k, v, plan, scale=0.4, kernel=kernel)
    ref = tree_attention_ref(q, k, v, p.parent.tolist(), scale=0.4)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for got, want in zip(
        torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_tree_attention_keeps_for_the_backward_only_what_is_linear_in_nodes():
    """No per-segment key copies and no (queries x keys) probabilities are kept: the saved tensors are
    the inputs, the output and the log-sum-exp, whatever the depth (16 rows of 700 share one path)."""
    from tempo_rl.fast.tree_forward_torch import attention_plan, tree_attention

    rows = _long_rows()
    p = pack(*_rows_batch(rows + [r[:-1] + [0] for r in rows]))
    q, k, v = (torch.randn(x, p.num_nodes, 8, requires_grad=True) for x in (4, 2, 2))
    saved: list[int] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        tree_attention(q, k, v, attention_plan(p), scale=0.4)
    assert sum(saved) <= (4 + 2 + 2 + 4) * p.num_nodes * 8 + 4 * p.num_nodes  # q, k, v, out, lse


def test_tree_logprobs_equal_each_row_alone_on_long_segments():
    """The model end to end on rows of up to 700 tokens (forks at 1, 64, 511, 513, 699), float64."""
    model = _exact_norms(_model("qwen2", max_positions=1024))
    batch = _rows_batch(_long_rows(seed=2))
    logp = tree_logprobs(model, *batch)
    ref = row_logprobs(model, *batch)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-10)
    _assert_same_gradients(model, logp, ref, rel=1e-10)


def test_attention_dropout_is_refused_in_training_mode():
    model = _model("qwen2", seed=3)
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    ids, ones = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long)
    model.train()
    with pytest.raises(ValueError, match="dropout"):
        tree_logprobs(model, ids, ones, ids, ones)
    model.eval()
    assert torch.isfinite(tree_logprobs(model, ids, ones, ids, ones)).all()
