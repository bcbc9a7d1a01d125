"""Tree rollouts: forks where asked, prefixes shared, log-probs exact, reproducible, deeper trees.

Tiny random models built from configs (no downloads); token ids are used directly.
"""

from __future__ import annotations

import pytest
import torch

import tempo_rl
from tempo_rl.reference import tree_stats as ref_tree_stats
from tempo_rl.trainer.tree_rollout import (
    SamplingConfig,
    TreeConfig,
    sample_independent,
    sample_tree,
    sample_tree_padded,
)

VOCAB, EOS, PAD = 40, 2, 0
PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [3]]  # ragged, and one of a single token


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()


@pytest.fixture(scope="module")
def llama():
    return _llama()


def _sample(model, tree, *, seed=0, group_size=6, eos=EOS, max_new_tokens=16, top_p=1.0, temperature=1.0):
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_token_id=eos, pad_token_id=PAD
    )
    gen = torch.Generator().manual_seed(seed)
    return sample_tree(model, PROMPTS, group_size=group_size, sampling=sampling, tree=tree, generator=gen)


def _rows(r):
    n = r.response_mask.sum(1)
    return [r.responses[i, : n[i]].tolist() for i in range(len(n))]


def _check_prefixes(r):
    rows = _rows(r)
    for i, (p, d) in enumerate(zip(r.parent.tolist(), r.fork_depth.tolist())):
        if p < 0:
            assert d == 0
            continue
        assert r.group_ids[p] == r.group_ids[i]
        assert rows[i][:d] == rows[p][:d], f"leaf {i} does not start with its parent's prefix"
        assert torch.equal(r.logprobs[i, :d], r.logprobs[p, :d])


def test_group_sizes_and_mask_shape(llama):
    r = _sample(llama, TreeConfig(n_roots=2))
    assert r.responses.shape[0] == 6 * len(PROMPTS)
    assert torch.bincount(r.group_ids).tolist() == [6] * len(PROMPTS)
    n = r.response_mask.sum(1)
    assert torch.equal(r.response_mask, torch.arange(r.responses.shape[1]) < n[:, None])  # prefix of ones
    assert (r.responses[~r.response_mask] == PAD).all()
    assert int(n.max()) <= 16
    assert r.stats["tokens_generated"] == int(n.sum() - r.fork_depth.sum())  # prefixes are not resampled


def test_fixed_fork_depths_are_honoured(llama):
    tree = TreeConfig(n_roots=1, fork_at="fixed", fork_depths=(3, 9), forks_per_point=2, points_per_parent=2)
    r = _sample(llama, tree, eos=None, group_size=5)  # no EOS: every response has 16 tokens
    for g in range(len(PROMPTS)):
        rows = (r.group_ids == g).nonzero()[:, 0]
        assert r.fork_depth[rows].tolist() == [0, 3, 3, 9, 9]
        assert r.parent[rows].tolist() == [-1] + [rows[0].item()] * 4
    _check_prefixes(r)
    assert r.stats["tokens_generated"] == len(PROMPTS) * (16 + 2 * (16 - 3) + 2 * (16 - 9))


@pytest.mark.parametrize("fork_at", ["random", "entropy"])
def test_every_leaf_starts_with_its_parents_prefix(llama, fork_at):
    tree = TreeConfig(n_roots=2, fork_at=fork_at, points_per_parent=1, min_fork_depth=2, max_fork_depth=12)
    r = _sample(llama, tree, group_size=7)
    _check_prefixes(r)
    children = r.parent >= 0
    assert children.any() and (r.wave.max() >= 2)  # nested forks happened
    assert ((r.fork_depth[children] >= 2) & (r.fork_depth[children] <= 12)).all()
    # a fork depth is a position inside the parent, never past its last token
    n = r.response_mask.sum(1)
    assert (r.fork_depth[children] < n[r.parent[children]]).all()


def test_entropy_forks_pick_the_parents_highest_entropy_positions(llama):
    tree = TreeConfig(n_roots=1, fork_at="entropy", points_per_parent=3, min_fork_depth=1)
    r = _sample(llama, tree, eos=None, group_size=4, temperature=1.5)
    for g in range(len(PROMPTS)):
        root, *kids = (r.group_ids == g).nonzero()[:, 0].tolist()
        ent = r.entropies[root, 1:16]
        expected = (torch.argsort(-ent, stable=True)[:3] + 1).tolist()
        assert r.fork_depth[kids].tolist() == expected


def test_group_entropy_forks_each_branch_at_the_groups_highest_entropy_position_so_far(llama):
    """The TEMPO authors' tree: one root, then one branch per wave at the maximum entropy over every
    free position of the group's earlier rows (ties: earlier row, shallower depth)."""
    tree = TreeConfig(n_roots=1, fork_at="group_entropy", min_fork_depth=1)
    r = _sample(llama, tree, eos=None, group_size=5, temperature=1.5)
    _check_prefixes(r)
    assert r.stats["waves"] == 5
    for g in range(len(PROMPTS)):
        rows = (r.group_ids == g).nonzero()[:, 0].tolist()
        assert r.wave[rows].tolist() == [0, 1, 2, 3, 4]
        taken: set[tuple[int, int]] = set()
        for k, row in enumerate(rows[1:], start=1):
            free = [
                (float(r.entropies[p, d]), -p, -d)
                for p in rows[:k]
                for d in range(int(r.fork_depth[p]) + 1, 16)
                if (p, d) not in taken
            ]
            _, p, d = max(free)
            assert (int(r.parent[row]), int(r.fork_depth[row])) == (-p, -d)
            taken.add((-p, -d))


@pytest.mark.parametrize("make_model", [_llama, _gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_forked_logprobs_equal_a_fresh_forward_pass(make_model, top_p):
    model = make_model()
    tree = TreeConfig(n_roots=2, fork_at="random", points_per_parent=1, min_fork_depth=0)
    r = _sample(model, tree, group_size=6, top_p=top_p, temperature=0.9)
    assert (r.wave >= 2).any()
    worst = 0.0
    with torch.no_grad():
        for i, y in enumerate(_rows(r)):
            p = PROMPTS[int(r.group_ids[i])]
            logits = model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1 : len(p) - 1 + len(y)]  # (n, V)
            logp = torch.log_softmax(logits.float() / 0.9, -1)
            if top_p < 1:  # the nucleus, independently of the sampler: smallest set reaching top_p
                probs, order = logp.exp().sort(-1, descending=True)
                keep_sorted = (probs.cumsum(-1) - probs) < top_p
                keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
                logp = torch.log_softmax(logp.masked_fill(~keep, float("-inf")), -1)
            fresh = logp.gather(-1, torch.tensor(y)[:, None])[:, 0]
            worst = max(worst, (fresh - r.logprobs[i, : len(y)]).abs().max().item())
    assert worst < 1e-4


def test_same_seed_same_tree(llama):
    tree = TreeConfig(n_roots=2, fork_at="random", points_per_parent=1)
    a, b, c = (_sample(llama, tree, seed=s, group_size=4, max_new_tokens=10) for s in (3, 3, 4))
    for name in ("responses", "response_mask", "parent", "fork_depth", "wave", "logprobs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.responses, c.responses)


def test_independent_sampling_is_a_tree_of_roots(llama):
    sampling = SamplingConfig(max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD)
    r = sample_independent(llama, PROMPTS, group_size=5, sampling=sampling, generator=torch.Generator().manual_seed(0))
    assert (r.parent == -1).all() and (r.fork_depth == 0).all() and (r.wave == 0).all()
    assert r.stats["tokens_generated"] == int(r.response_mask.sum())


def test_padded_prompts_give_the_same_tree(llama):
    ids = torch.full((len(PROMPTS), 5), PAD)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):  # left padding, as the trainer encodes prompts
        ids[i, 5 - len(p) :], mask[i, 5 - len(p) :] = torch.tensor(p), 1
    tree = TreeConfig(n_roots=2, fork_at="random", points_per_parent=1)
    sampling = SamplingConfig(max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD)
    a = sample_tree_padded(
        llama, ids, mask, group_size=6, sampling=sampling, tree=tree, generator=torch.Generator().manual_seed(0)
    )
    b = _sample(llama, tree)
    assert torch.equal(a.responses, b.responses) and torch.equal(a.logprobs, b.logprobs)


def test_tree_branches_deeper_than_independent_sampling(llama):
    kw = dict(seed=0, group_size=8, eos=None, max_new_tokens=24)
    indep = _sample(llama, None, **kw)
    tree = _sample(llama, TreeConfig(n_roots=1, fork_at="random", min_fork_depth=8, points_per_parent=2), **kw)
    s_ind = tempo_rl.tree_stats(indep.responses, indep.response_mask, indep.group_ids)
    s_tree = tempo_rl.tree_stats(tree.responses, tree.response_mask, tree.group_ids)
    assert s_ind.mean_first_branch_depth < 2 <= 8 <= s_tree.mean_first_branch_depth
    assert s_tree.mean_branch_depth > 4 * s_ind.mean_branch_depth
    assert tree.stats["tokens_generated"] < indep.stats["tokens_generated"]


def test_mean_branch_depth_of_a_hand_made_tree():
    # nodes: () -> "1" branches at depth 1 into "12"/"13"; "12" branches at depth 2 into "124"/end
    s = ref_tree_stats([[1, 2, 4], [1, 3], [1, 2]], [0] * 3)
    assert s.n_branch_nodes == 2 and s.mean_branch_depth == (1 + 2) / 2
    assert ref_tree_stats([[5], [5]], [0, 0]).mean_branch_depth is None


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="fork_depths"):
        TreeConfig(fork_at="fixed")
    with pytest.raises(ValueError, match="fork_at"):
        TreeConfig(fork_at="deepest")
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_fork_depth"):
        TreeConfig(min_fork_depth=5, max_fork_depth=2)


def parity_reward(completion: str, answer: str) -> float:
    """A reward an untrained policy can earn half the time (for the trainer smoke test)."""
    return float(len(completion) % 2)


def test_trainer_steps_with_tree_rollouts(tmp_path):
    """Two trainer steps with `rollout = "tree"` on an untrained tiny policy: the sampler's rows
    go through rewards, advantages and the PPO update; every trainable parameter moves."""
    from tempo_rl.trainer.config import TrainConfig
    from tempo_rl.trainer.tiny import build_model, build_tokenizer
    from tempo_rl.trainer.train import train

    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=1, heads=2).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    before = {k: v.clone() for k, v in build_model(len(tok), hidden=32, layers=1, heads=2).state_dict().items()}
    cfg = TrainConfig(
        model=str(tmp_path / "m"),
        dataset="chain",
        rollout="tree",
        tree_roots=1,
        fork_at="random",
        group_size=4,
        prompts_per_step=2,
        mini_batches=1,
        max_new_tokens=12,
        steps=2,
        eval_every=0,
        lr=1e-2,
        estimator="tempo",
        output_dir=str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
        save_final=True,
        trust_batches=2,
        reward="tests.test_tree_rollout:parity_reward",
    )
    rows = train(cfg)
    assert all(r["tokens_generated"] < 2 * 4 * 12 for r in rows)  # forks do not resample their prefix
    assert all(r["mean_branch_depth"] is not None for r in rows)
    from transformers import AutoModelForCausalLM

    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("step_*")
    after = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_trainer_config_builds_the_tree():
    from tempo_rl.trainer.config import TrainConfig

    tree = TrainConfig(rollout="tree", fork_at="fixed", fork_depths="4, 9", fork_points_per_parent=1).tree_config()
    assert tree.fork_depths == (4, 9) and tree.points_per_parent == 1 and tree.max_fork_depth is None
    assert TrainConfig().tree_config() is None
    with pytest.raises(ValueError, match="fork_depths"):
        TrainConfig(rollout="tree", fork_at="fixed").validate()
