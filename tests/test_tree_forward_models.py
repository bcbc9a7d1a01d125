"""The tree forward on models as users hold them: PEFT/LoRA, eager attention, gradient checkpointing,
pickled and reloaded, DistributedDataParallel on two processes; and the inputs it must refuse or
answer (empty batches, token ids past the vocabulary, a packing of another batch, tiny temperatures).
Exactness is checked against a forward of each row alone (`reference/tree_forward.row_logprobs`)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tempo_rl
from tempo_rl import tree_logprobs, tree_policy_loss, tree_scores
from tempo_rl.fast.tree_forward_torch import pack
from tempo_rl.reference.tree_forward import row_logprobs
from tests.test_tree_forward import _assert_same_gradients, _exact_norms, _model

ROOT = Path(__file__).resolve().parents[1]

# Left-padded prompts of two lengths, forks at depth 0, mid-way and never, an empty completion.
BATCH = (
    torch.tensor([[0, 1, 2], [0, 1, 2], [0, 3, 1], [5, 3, 1]]),
    torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]),
    torch.tensor([[3, 4, 5, 6], [3, 4, 7, 0], [6, 4, 0, 0], [0, 0, 0, 0]]),
    torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]),
)


def _lora(model, *, seed: int = 1, head: bool = False):
    """`model` with LoRA adapters on every projection (and the LM head with `head`), their B matrices
    random (not PEFT's zeros), so the adapters change the log-probs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] + ["lm_head"] * head
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, lora_dropout=0.0)
    return get_peft_model(model, config).double()


# ----------------------------------------------------------------------------- PEFT / LoRA
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_lora_model_log_probs_and_gradients_equal_each_row_alone(family):
    model = _lora(_exact_norms(_model(family)))
    logp = tree_logprobs(model, *BATCH, temperature=0.7)
    ref = row_logprobs(model, *BATCH, temperature=0.7)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-12)
    lora = [q for n, q in model.named_parameters() if "lora_" in n]
    assert lora and all(q.requires_grad for q in lora)
    _assert_same_gradients(model, logp, ref, rel=1e-12)  # the LoRA matrices are the trainable parameters
    torch.testing.assert_close(tree_scores(model, *BATCH, temperature=0.7).double(), ref.detach(), rtol=0, atol=1e-6)


def test_a_lora_lm_head_is_scored_through_the_full_logits():
    """An adapter on the LM head makes it no plain nn.Linear: the log-probs then come from the model's
    own logits (adapter included), still exact; the fused loss, which needs the plain head, refuses."""
    model = _lora(_exact_norms(_model("qwen2")), head=True)
    logp = tree_logprobs(model, *BATCH)
    ref = row_logprobs(model, *BATCH)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-12)
    _assert_same_gradients(model, logp, ref, rel=1e-12)
    with pytest.raises(ValueError, match="not nn.Linear"):
        tree_policy_loss(model, *BATCH, None, torch.ones(BATCH[2].shape))


def test_lora_adapters_take_part():
    """The adapters change the log-probs, so the equality above is not the base model's."""
    model = _lora(_exact_norms(_model("qwen2")))
    with model.disable_adapter():
        base = tree_logprobs(model, *BATCH).detach()
    assert (tree_logprobs(model, *BATCH).detach() - base).abs().max() > 1e-3


def test_lora_tree_policy_loss_equals_the_merged_model():
    """tree_policy_loss of a LoRA model equals that of the same model with the adapters merged into its
    weights (float64: the merged product differs only by rounding), and its LoRA gradients are those
    of the per-row log-probs' loss."""
    model = _lora(_exact_norms(_model("qwen2")))
    merged = copy.deepcopy(model).merge_and_unload()
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(BATCH[2].shape, generator=g, dtype=torch.float64)
    old = (-2.0 + 0.1 * torch.randn(BATCH[2].shape, generator=g, dtype=torch.float64)) * BATCH[3]
    got, got_m = tree_policy_loss(model, *BATCH, old, adv)
    want, want_m = tree_policy_loss(merged, *BATCH, old, adv)
    assert abs(got.item() - want.item()) <= 1e-6 * (1 + abs(want.item()))  # float32 chunked loss
    for name in want_m:
        torch.testing.assert_close(got_m[name], want_m[name], rtol=1e-6, atol=1e-7, msg=name)
    got.backward()
    assert all(q.grad is not None and q.grad.abs().max() > 0 for n, q in model.named_parameters() if "lora_B" in n)


# ----------------------------------------------------------------------------- the model comes out as it went in
def test_a_model_pickled_after_a_tree_forward_loads_in_a_fresh_process(tmp_path):
    model = _model("qwen2")
    before = model.config._attn_implementation
    tree_logprobs(model, *BATCH).sum().backward()
    assert model.config._attn_implementation == before
    torch.save(model, tmp_path / "model.pt")
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.save(model(input_ids=ids).logits.detach(), tmp_path / "logits.pt")
    script = (
        "import sys, torch\n"
        "model = torch.load(sys.argv[1] + '/model.pt', weights_only=False)\n"
        "want = torch.load(sys.argv[1] + '/logits.pt')\n"
        "got = model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits\n"
        "assert torch.equal(got, want), (got - want).abs().max()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_eager_model_keeps_returning_its_attentions():
    model = _exact_norms(_model("llama"))
    model.set_attn_implementation("eager")
    ids = torch.tensor([[3, 4, 5, 6]])
    before = model(input_ids=ids, output_attentions=True).attentions
    assert len(before) == model.config.num_hidden_layers
    logp = tree_logprobs(model, *BATCH)
    # Eager attention takes its softmax in float32 (the tree's runs in the model's float64): 1e-9 apart.
    torch.testing.assert_close(logp, row_logprobs(model, *BATCH), rtol=0, atol=1e-7)
    after = model(input_ids=ids, output_attentions=True).attentions
    assert model.config._attn_implementation == "eager"
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_recomputes_the_tree_attention(reentrant):
    """Checkpointing reruns each layer during backward, after the tree forward has returned; the
    rerun must take the tree route again, so the gradients equal those without checkpointing."""
    model = _exact_norms(_model("qwen2"))
    model.train()
    logp = tree_logprobs(model, *BATCH)
    ref = row_logprobs(model, *BATCH)
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert checkpointed.is_activation_checkpointing
    got = tree_logprobs(checkpointed, *BATCH)
    torch.testing.assert_close(got, logp, rtol=0, atol=1e-12)
    weights = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (weights * got).sum().backward()  # reentrant checkpointing takes backward(), not autograd.grad
    (weights * ref).sum().backward()
    grads = [q.grad for q in checkpointed.parameters()]
    want = [q.grad for q in model.parameters()]
    scale = max(g.abs().max().item() for g in want)
    assert max((a - b).abs().max().item() for a, b in zip(grads, want)) <= 1e-12 * scale


def test_other_models_and_calls_keep_their_own_attention():
    """Routing is per call: a plain forward between tree forwards, of this model or another one, runs
    the model's own attention (sdpa and eager alike)."""
    sdpa, eager = _model("qwen2", seed=2), _model("qwen2", seed=2)
    eager.set_attn_implementation("eager")
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    want = {name: m(input_ids=ids).logits for name, m in (("sdpa", sdpa), ("eager", eager))}
    for model in (sdpa, eager, sdpa):
        tree_logprobs(model, *BATCH)
        assert torch.equal(sdpa(input_ids=ids).logits, want["sdpa"])
        assert torch.equal(eager(input_ids=ids).logits, want["eager"])


# ----------------------------------------------------------------------------- inputs
def test_batches_without_tokens_give_zeros():
    model = _model("qwen2")
    ids = torch.tensor([[3, 4]])
    zeros = torch.zeros(1, 2, dtype=torch.long)
    for batch in ((ids, zeros, ids, zeros), (ids[:0], zeros[:0], ids[:0], zeros[:0])):
        logp = tree_logprobs(model, *batch)
        assert logp.shape == batch[2].shape and not logp.any()
        assert not tree_scores(model, *batch).any()
        loss, _ = tree_policy_loss(model, *batch, None, torch.zeros(batch[2].shape, dtype=torch.float64))
        assert loss.item() == 0.0


def test_token_ids_past_the_vocabulary_are_refused_where_rows_use_them():
    model = _model("qwen2")
    ids, ones = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"completion_ids row 0 holds token id 12 .* vocabulary \[0, 12\)"):
        tree_logprobs(model, ids, ones, torch.tensor([[3, 12]]), ones)
    with pytest.raises(ValueError, match="prompt_ids row 0 holds token id -1"):
        tree_scores(model, torch.tensor([[-1, 4]]), ones, ids, ones)
    # Padding is never read: any id may sit where the masks leave it out.
    prompt_ids, prompt_mask = torch.tensor([[99, 4]]), torch.tensor([[0, 1]])
    completion_ids, completion_mask = torch.tensor([[3, -100]]), torch.tensor([[1, 0]])
    want = row_logprobs(model, prompt_ids * prompt_mask, prompt_mask, completion_ids * completion_mask, completion_mask)
    torch.testing.assert_close(tree_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask), want)


def test_a_packing_of_another_batch_is_refused():
    model = _model("qwen2")
    other = (BATCH[0], BATCH[1], BATCH[2].flip(0), BATCH[3].flip(0))
    with pytest.raises(ValueError, match="packing is not the trie of these rows"):
        tree_logprobs(model, *BATCH, packing=pack(*other))
    same_rows = (BATCH[0], BATCH[1], BATCH[2] * BATCH[3], BATCH[3])  # other padding values, same rows
    torch.testing.assert_close(
        tree_logprobs(model, *BATCH, packing=pack(*same_rows)), row_logprobs(model, *BATCH), rtol=0, atol=1e-12
    )


def test_temperatures_whose_logits_overflow_are_refused():
    """1 / temperature must be finite in the logits' dtype, and so must logits / temperature (bounded
    through H max |h| max |w| + max |b| without forming the logits); a temperature inside both gives
    finite log-probs."""
    model = _model("qwen2").float()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # logits of about 1e3: / 1e-36 overflows float32, / 1e-30 does not
    ids, ones = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.long)
    for fn in (tree_logprobs, tree_scores):
        with pytest.raises(ValueError, match=r"temperature must be .* 1 / temperature within torch.float32"):
            fn(model, ids, ones, ids, ones, temperature=1e-45)
        with pytest.raises(ValueError, match=r"temperature=1e-36 is too small .* overflow torch.float32"):
            fn(model, ids, ones, ids, ones, temperature=1e-36)
    with pytest.raises(ValueError, match=r"temperature=1e-36 is too small"):
        tree_policy_loss(model, ids, ones, ids, ones, None, torch.ones(1, 2), temperature=1e-36)
    assert torch.isfinite(tree_logprobs(model, ids, ones, ids, ones, temperature=1e-30)).all()
    float64 = _model("qwen2")  # float64 logits: far smaller temperatures are in range
    assert torch.isfinite(tree_logprobs(float64, ids, ones, ids, ones, temperature=1e-36)).all()


def test_left_padded_completions_are_refused_not_read_as_context():
    """tempo_advantages reads a row of 0s then 1s as left padding (reference/padding.py); the tree
    forward reads 0s before a row's last 1 as context. Such a row is refused, naming the argument and
    the fix; the same completions right-padded are scored like each row alone."""
    model = _model("qwen2")
    prompt_ids, prompt_mask = torch.tensor([[1, 2], [1, 2]]), torch.ones(2, 2, dtype=torch.long)
    left_ids, left_mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    tempo_rl.tempo_advantages(left_ids, left_mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))  # accepted
    for fn in (tree_logprobs, tree_scores):
        with pytest.raises(ValueError, match=r"completion_mask row 0 is 0 before its first 1 .*right-pad"):
            fn(model, prompt_ids, prompt_mask, left_ids, left_mask)
    with pytest.raises(ValueError, match=r"completion_mask row 0 is 0 before its first 1"):
        tree_policy_loss(model, prompt_ids, prompt_mask, left_ids, left_mask, None, torch.ones(2, 3))
    right_ids, right_mask = torch.tensor([[5, 6, 0], [7, 8, 9]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(
        tree_logprobs(model, prompt_ids, prompt_mask, right_ids, right_mask),
        row_logprobs(model, prompt_ids, prompt_mask, right_ids, right_mask),
        rtol=0,
        atol=1e-12,
    )


def test_tree_scores_is_exported():
    assert tempo_rl.tree_scores is tree_scores and "tree_scores" in tempo_rl.__all__


# ----------------------------------------------------------------------------- DistributedDataParallel
@pytest.mark.slow
def test_ddp_on_two_processes_steps_like_the_rows(tmp_path):
    """Two gloo processes train a DDP-wrapped float32 Qwen2 one SGD step on different rows, through
    tree_logprobs (find_unused_parameters True and False) and through tree_policy_loss (the LM head
    used outside the forward). The parameters after the step equal one step on the average of the
    per-row gradients of both processes' rows (what DDP promises), to float32 rounding."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "tree_forward_ddp.py"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from tests.tree_forward_ddp import LR, RANK_BATCHES, build_model, expected_step

    for case in ("logprobs-unused", "logprobs", "policy_loss"):
        want = expected_step(case)
        ranks = [torch.load(tmp_path / f"{case}-rank{r}.pt") for r in range(len(RANK_BATCHES))]
        assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0]), case  # reduced alike
        start = dict(build_model().named_parameters())
        for name, value in want.items():
            assert not torch.equal(value, start[name].detach()), (case, name)  # the step moved it
            torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6 * LR, msg=f"{case} {name}")
