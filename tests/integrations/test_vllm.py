"""Tree rollouts through vLLM (trainer/vllm_rollout.py, integrations/trl_vllm.py): the samples are
the policy's. Runs in .venv-vllm (`make test-integrations`); one engine serves the module.

- Every token's log-prob reported by vLLM equals the trainer's own forward of that token in its
  context, to float32 rounding, for every fork policy and at temperature != 1.
- Tokens sampled after a fork follow the policy's conditional distribution, as independent samples
  do: the randomized probability integral transform u = F(x-) + V p(x) of each token under the
  policy's distribution in its context is U(0, 1) and independent across tokens when every token is
  drawn from it (each u is uniform given everything before it), so the counts of u in 10 equal bins
  pass a chi-square bound; the same tokens scored against a wrong distribution fail it.
- Groups are whole, each child's inherited prefix is its parent's, the same seed gives the same tree.
- `tempo-rl train --generator vllm` samples from the updated policy at every step, and TRL's
  colocated engine samples trees through `tree_rollout_func`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.integrations.conftest import require

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
require("vllm")

from tempo_rl.trainer import vllm_rollout  # noqa: E402
from tempo_rl.trainer.rollout import ChanceToken, SamplingConfig, forward_logprobs  # noqa: E402
from tempo_rl.trainer.tree_rollout import TreeConfig  # noqa: E402
from tempo_rl.trainer.vllm_rollout import load_weights, make_engine, sample_tree_vllm  # noqa: E402
from tests.integrations.vllm_tiny import EOS, PAD, save_small_vocab_model  # noqa: E402

PROMPTS = [[2, 3, 4], [5, 6], [7, 2, 2, 3], [4]]
TREES = {
    "independent": None,
    "entropy": TreeConfig(n_roots=2, fork_at="entropy"),
    "random": TreeConfig(n_roots=2, fork_at="random", points_per_parent=1),
    "fixed": TreeConfig(n_roots=1, fork_at="fixed", fork_depths=(2, 5), forks_per_point=2, points_per_parent=2),
    "group_entropy": TreeConfig(n_roots=1, fork_at="group_entropy"),
}
# chi-square with 9 degrees of freedom: P(X > 27.88) = 0.001 under the null
CHI2_BOUND_9DOF = 27.88
ATOL_LOGP = 1e-4  # float32: vLLM's CPU kernels and torch's differ in summation order (measured ~6e-6)
BF16_LOGP = 0.3  # a bfloat16 engine against the float32 policy (measured up to 0.12 on this model)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_small_vocab_model(tmp_path_factory.mktemp("vllm") / "small")
    llm = make_engine(path, max_model_len=256)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return SimpleNamespace(path=path, llm=llm, model=model)


def sampling(max_new_tokens: int = 16, temperature: float = 1.0) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, eos_token_id=EOS, pad_token_id=PAD)


@torch.no_grad()
def policy_logp(model, roll, temperature: float = 1.0) -> torch.Tensor:
    """(B, L, V) log pi(. | context) at every response position, from the trainer's layout."""
    ids = torch.cat([roll.prompt_ids, roll.responses], dim=1)  # (B, Lp + L)
    att = torch.cat([roll.prompt_mask, roll.response_mask.long()], dim=1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, roll.prompt_ids.shape[1] - 1 : -1]
    return torch.log_softmax(logits.float() / temperature, dim=-1)


@pytest.mark.parametrize("name", list(TREES))
def test_logprobs_are_the_trainers_forward(small, name):
    roll = sample_tree_vllm(small.llm, PROMPTS, group_size=6, sampling=sampling(), tree=TREES[name], seed=1)
    mask = roll.response_mask.bool()
    with torch.no_grad():
        trainer_logp, _ = forward_logprobs(small.model, roll.select(torch.arange(len(roll.group_ids))))
    assert mask.sum() > 100
    assert torch.allclose(roll.logprobs[mask], trainer_logp[mask].float(), atol=ATOL_LOGP, rtol=0)


def test_logprobs_at_temperature_are_the_tempered_forward(small):
    roll = sample_tree_vllm(small.llm, PROMPTS, group_size=4, sampling=sampling(temperature=0.7), tree=TREES["entropy"])
    mask = roll.response_mask.bool()
    want = policy_logp(small.model, roll, 0.7).gather(-1, roll.responses[..., None])[..., 0]  # (B, L)
    assert torch.allclose(roll.logprobs[mask], want[mask], atol=ATOL_LOGP, rtol=0)


@pytest.mark.parametrize("name", list(TREES))
def test_groups_are_whole_and_every_prefix_is_its_parents(small, name):
    g = 6
    roll = sample_tree_vllm(small.llm, PROMPTS, group_size=g, sampling=sampling(), tree=TREES[name], seed=2)
    assert roll.group_ids.tolist() == [p for p in range(len(PROMPTS)) for _ in range(g)]
    lengths = roll.response_mask.sum(1)
    for row in range(len(roll.group_ids)):
        parent, d = int(roll.parent[row]), int(roll.fork_depth[row])
        prompt = roll.prompt_ids[row][roll.prompt_mask[row].bool()].tolist()
        assert prompt == PROMPTS[int(roll.group_ids[row])]
        if parent < 0:
            assert d == 0 and int(roll.wave[row]) == 0 or name in ("fixed", "group_entropy", "random", "entropy")
            continue
        assert roll.group_ids[parent] == roll.group_ids[row] and roll.wave[parent] < roll.wave[row]
        assert d <= int(lengths[parent]) and d <= int(lengths[row])
        assert torch.equal(roll.responses[row, :d], roll.responses[parent, :d])
    forked = (roll.parent >= 0).sum()
    assert (forked == 0) == (name == "independent")


def test_group_entropy_forks_at_the_highest_entropy_position_so_far(small):
    g = 5
    roll = sample_tree_vllm(
        small.llm, PROMPTS[:2], group_size=g, sampling=sampling(24), tree=TREES["group_entropy"], seed=3
    )
    assert roll.stats["waves"] == g  # one root, then one branch per wave
    assert roll.entropies is not None
    for group in range(2):
        rows = list(range(group * g, (group + 1) * g))
        for k, row in enumerate(rows[1:], start=1):
            parent, d = int(roll.parent[row]), int(roll.fork_depth[row])
            # the fork point is the maximum over every free position of the rows sampled before it
            best = max(
                float(roll.entropies[r, pos])
                for r in rows[:k]
                for pos in range(
                    int(roll.fork_depth[r]) + (1 if roll.parent[r] >= 0 else 1), int(roll.response_mask[r].sum())
                )
                if not any(int(roll.parent[c]) == r and int(roll.fork_depth[c]) == pos for c in rows[:k])
            )
            assert float(roll.entropies[parent, d]) == pytest.approx(best)


def test_entropy_from_the_full_top_k_is_the_policys_entropy(small):
    roll = sample_tree_vllm(small.llm, PROMPTS, group_size=4, sampling=sampling(), tree=TREES["entropy"], seed=4)
    logp = policy_logp(small.model, roll)  # (B, L, V); top-k covers the 8-token vocabulary here
    exact = -(logp.exp() * logp).sum(-1)
    mask = roll.response_mask.bool()
    assert torch.allclose(roll.entropies[mask], exact[mask], atol=1e-4)


def pit_chi2(logp: torch.Tensor, tokens: torch.Tensor, seed: int) -> float:
    """Chi-square of the randomized PIT values of `tokens` (N,) under `logp` (N, V), 10 bins."""
    p = logp.double().exp()
    p = p / p.sum(-1, keepdim=True)
    below = torch.cumsum(p, -1).gather(-1, tokens[:, None])[:, 0] - p.gather(-1, tokens[:, None])[:, 0]
    v = torch.rand(len(tokens), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = below + v * p.gather(-1, tokens[:, None])[:, 0]
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    expected = len(tokens) / 10
    return float(((counts - expected) ** 2 / expected).sum())


def after_fork(roll, logp: torch.Tensor):
    """(tokens (N,), their distributions (N, V)) of every token a child sampled itself."""
    keep = torch.zeros_like(roll.response_mask, dtype=torch.bool)
    for row in range(len(roll.group_ids)):
        if roll.parent[row] >= 0:
            keep[row, int(roll.fork_depth[row]) : int(roll.response_mask[row].sum())] = True
    return roll.responses[keep], logp[keep]


@pytest.mark.parametrize("name", ["entropy", "group_entropy", "random", "independent"])
def test_tokens_after_a_fork_follow_the_policy(small, name):
    prompts = [[2 + (i % 6), 2 + (i * 5 % 6)] for i in range(32)]
    roll = sample_tree_vllm(small.llm, prompts, group_size=8, sampling=sampling(24), tree=TREES[name], seed=5)
    logp = policy_logp(small.model, roll)
    if name == "independent":
        tokens, dists = roll.responses[roll.response_mask.bool()], logp[roll.response_mask.bool()]
    else:
        tokens, dists = after_fork(roll, logp)
    assert len(tokens) >= 1000, len(tokens)
    assert pit_chi2(dists, tokens, seed=0) < CHI2_BOUND_9DOF
    # the same tokens against a distribution they were not drawn from fail the same bound
    wrong = torch.log_softmax(logp / 1.6, -1)[roll.response_mask.bool()] if name == "independent" else None
    if wrong is None:
        _, wrong = after_fork(roll, torch.log_softmax(logp / 1.6, -1))
    assert pit_chi2(wrong, tokens, seed=0) > CHI2_BOUND_9DOF


def test_the_same_seed_gives_the_same_tree(small):
    kw = dict(group_size=6, sampling=sampling(), tree=TREES["entropy"])
    a = sample_tree_vllm(small.llm, PROMPTS, seed=7, **kw)
    b = sample_tree_vllm(small.llm, PROMPTS, seed=7, **kw)
    c = sample_tree_vllm(small.llm, PROMPTS, seed=8, **kw)
    assert torch.equal(a.responses, b.responses) and torch.equal(a.parent, b.parent)
    assert not torch.equal(a.responses, c.responses)


def test_bad_input_is_refused_naming_it(small):
    with pytest.raises(ValueError, match="group_size"):
        sample_tree_vllm(small.llm, PROMPTS, group_size=0, sampling=sampling())
    with pytest.raises(ValueError, match="prompts"):
        sample_tree_vllm(small.llm, [[2], []], group_size=2, sampling=sampling())
    chance = SamplingConfig(max_new_tokens=4, eos_token_id=EOS, chance=ChanceToken(position=1, token_ids=(2, 3)))
    with pytest.raises(ValueError, match="chance"):
        sample_tree_vllm(small.llm, PROMPTS, group_size=2, sampling=chance)
    with pytest.raises(ValueError, match="entropy_top_k"):
        sample_tree_vllm(small.llm, PROMPTS, group_size=2, sampling=sampling(), entropy_top_k=0)


def test_load_weights_makes_the_engine_sample_the_new_policy(small):
    from transformers import AutoModelForCausalLM

    moved = AutoModelForCausalLM.from_pretrained(small.path, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    try:
        load_weights(small.llm, moved)
        roll = sample_tree_vllm(small.llm, PROMPTS, group_size=4, sampling=sampling(), tree=TREES["entropy"], seed=9)
        mask = roll.response_mask.bool()
        new = policy_logp(moved, roll).gather(-1, roll.responses[..., None])[..., 0]
        old = policy_logp(small.model, roll).gather(-1, roll.responses[..., None])[..., 0]
        assert torch.allclose(roll.logprobs[mask], new[mask], atol=ATOL_LOGP, rtol=0)
        assert (roll.logprobs[mask] - old[mask]).abs().max() > 0.05  # the check can tell the two apart
    finally:
        load_weights(small.llm, small.model)


# ----------------------------------------------------------------------------------- the trainer
REWARD = "def reward(completion, answer):\n    return float(len(completion) % 3)\n"


def test_train_generator_vllm_samples_the_updated_policy(small, tmp_path, monkeypatch):
    """`tempo-rl train --generator vllm --rollout tree`: every step's rollout is a tree whose
    vLLM log-probs equal the trainer's policy at that step (so weights were synced after each update)."""
    from tempo_rl.cli import main

    seen: list[tuple[float, int]] = []
    real = vllm_rollout.sampler_for_run

    def recording(run):
        sampler = real(run)
        sample = sampler.sample

        def checked(*args, **kwargs):
            roll = sample(*args, **kwargs)
            mask = roll.response_mask.bool()
            with torch.no_grad():
                logp, _ = forward_logprobs(run.model, roll)
            seen.append((float((roll.logprobs[mask] - logp[mask]).abs().max()), int((roll.parent >= 0).sum())))
            return roll

        sampler.sample = checked
        return sampler

    monkeypatch.setattr(vllm_rollout, "sampler_for_run", recording)
    (tmp_path / "rw.py").write_text(REWARD)
    args = ["train", "--generator", "vllm", "--rollout", "tree", "--steps", "3", "--tiny-warmup-steps", "0"]
    args += ["--tiny-dir", str(tmp_path / "tiny"), "--output-dir", str(tmp_path / "run"), "--no-progress"]
    args += ["--prompts-per-step", "2", "--group-size", "4", "--mini-batches", "2", "--eval-every", "0"]
    args += ["--reward", f"{tmp_path / 'rw.py'}:reward", "--lr", "0.01", "--max-zero-variance-steps", "0"]
    assert main(args) == 0
    assert len(seen) == 3
    assert all(gap < ATOL_LOGP for gap, _ in seen), seen
    assert all(forks > 0 for _, forks in seen), seen
    assert (tmp_path / "tiny-vllm" / "config.json").is_file()


def test_train_generator_vllm_refuses_a_task_with_an_environment_token(tmp_path, capsys):
    from tempo_rl.cli import main

    code = main(["train", "--generator", "vllm", "--dataset", "luck", "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "environment token" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- TRL
def trl_trainer(tmp_path: Path, model_path: Path, rollout_func, **overrides):
    from datasets import Dataset

    from tempo_rl.integrations.trl import TempoGRPOTrainer
    from tests.integrations import tiny
    from tests.integrations.vllm_tiny import build_tokenizer

    args = tiny.trl_config(tmp_path / "run", group=4, per_device_batch=8, max_completion_length=12, **overrides)
    prompts = Dataset.from_dict({"prompt": ["a b c", "d e f", "a c e", "b d f"]})
    return TempoGRPOTrainer(
        model=str(model_path),
        reward_funcs=tiny.REWARD_FUNCS,
        args=args,
        train_dataset=prompts,
        processing_class=build_tokenizer(),
        rollout_func=rollout_func,
    )


def recorded_generations(trainer) -> list[dict]:
    out: list[dict] = []
    generate = trainer._generate_and_score_completions

    def keep(inputs):
        batch = generate(inputs)
        out.append({k: batch[k].detach().clone() for k in ("completion_ids", "completion_mask", "old_per_token_logps")
                    if batch.get(k) is not None})  # fmt: skip
        return batch

    trainer._generate_and_score_completions = keep
    return out


def checked(func, gaps: list[float]):
    """`func` recording, per call, max |its log-prob - the trainer's forward of that token| (float32)."""

    def rollout(prompts, trainer):
        out = func(prompts, trainer)
        model = trainer.accelerator.unwrap_model(trainer.model)
        for prompt, completion, logps in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
            gaps.append(float((want - torch.tensor(logps)).abs().max()))
        return out

    return rollout


@pytest.mark.parametrize("engine", ["colocated", "own"])
def test_trl_rollout_func_samples_trees_from_the_current_policy(small, tmp_path, engine):
    from tempo_rl.integrations.trl_vllm import tree_rollout_func

    model_path = save_small_vocab_model(tmp_path / "model")
    tree = TreeConfig(n_roots=1, fork_at="group_entropy")
    gaps: list[float] = []
    if engine == "colocated":
        func = checked(tree_rollout_func(tree), gaps)
        kw = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=64)
    else:
        func, kw = checked(tree_rollout_func(tree, llm=small.llm), gaps), {}
    trainer = trl_trainer(tmp_path, model_path, func, bf16=False, **kw)  # float32 training: exact log-probs
    gens = recorded_generations(trainer)
    try:
        trainer.train()
    finally:
        if engine == "own":
            load_weights(small.llm, small.model)
    assert len(gens) == 2 and len(gaps) == 16
    # TRL 1.16 builds its colocated engine without a dtype, and vLLM's CPU platform downcasts a float32
    # checkpoint to bfloat16: that engine samples the bfloat16-rounded policy
    used = trainer.vllm_generation.llm if engine == "colocated" else small.llm
    bf16 = used.llm_engine.model_config.dtype == torch.bfloat16
    assert bf16 == (engine == "colocated")
    tol = BF16_LOGP if bf16 else ATOL_LOGP
    assert max(gaps) < tol, gaps  # every step samples the policy as updated
    if engine == "colocated":  # TRL's own measure of the same gap
        key = "sampling/sampling_logp_difference/max"
        logs = [h[key] for h in trainer.state.log_history if key in h]
        assert len(logs) == 2 and max(logs) < tol, logs
    for batch in gens:
        ids = batch["completion_ids"]
        for g in range(0, len(ids), 4):  # each group of 4 is a tree: every branch shares a prefix with the root
            rows = ids[g : g + 4]
            shared = [int((rows[k] == rows[0]).long().cumprod(0).sum()) for k in range(1, 4)]
            assert min(shared) >= 1, rows


# ----------------------------------------------------------------------------------- the benchmark
def test_bench_vllm_rollout_writes_rows_and_a_plot(small, tmp_path):
    import json

    from tempo_rl.benchmarks import bench_vllm_rollout

    out, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["--groups", "4", "--lengths", "12", "--prompts", "2", "--prompt-len", "8", "--hidden", "128"]
    bench_vllm_rollout.main(args + ["--layers", "1", "--vocab", "64", "--out", str(out), "--plot", str(png)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["arm"] for r in rows] == list(bench_vllm_rollout.ARMS)
    independent, *trees = rows
    assert independent["tokens_per_group"] == 4 * 12  # no EOS: every response has the full length
    assert all(r["tokens_per_group"] < independent["tokens_per_group"] for r in trees)
    assert png.stat().st_size > 0
