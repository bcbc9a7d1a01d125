"""Trainer end to end on a tiny random model: smoke, exact resume, trust check, CLI."""

import json
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

import tempo_rl
import tempo_rl.step
from tempo_rl import cli
from tempo_rl.trainer import train as train_mod
from tempo_rl.trainer import update
from tempo_rl.trainer.config import TrainConfig
from tempo_rl.trainer.loading import load_policy
from tempo_rl.trainer.rollout import Rollout, response_mask_after_eos
from tempo_rl.trainer.scoring import score_logprobs
from tempo_rl.trainer.tiny import build_tokenizer


def digit_reward(completion: str, answer: str) -> float:
    """A dense reward so a random policy's groups have unequal rewards (non-zero advantages)."""
    return float(sum(c.isdigit() for c in completion))


def _cfg(tiny_path, out, **kw):
    base = dict(
        model=tiny_path,
        output_dir=str(out),
        steps=2,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=6,
        mini_batches=2,
        grad_accum=2,
        lr=1e-3,
        lr_warmup_steps=1,
        eval_every=0,
        save_final=False,
        progress=False,
        tensorboard=False,
        threads=1,
        reward=f"{__name__}:digit_reward",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_smoke_two_steps_change_every_parameter(tiny_path, tmp_path):
    model = load_policy(tiny_path, torch.device("cpu"))[1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(tiny_path, tmp_path, save_final=True, kl_coef=0.1, estimator="tempo")
    history = train_mod.train(cfg)
    assert len(history) == 2
    for row in history:
        for key in (
            "loss",
            "reward_mean",
            "grad_norm",
            "entropy",
            "approx_kl",
            "kl_ref",
            "clip_fraction",
            "branch_token_fraction",
            "nodes_per_group",
            "adv_absmax",
            "tokens_per_s",
            "time_step_s",
        ):
            assert row[key] == row[key] and abs(row[key]) != float("inf"), key
    after = load_file(str(tmp_path / "checkpoints" / "step_000002" / "model.safetensors"))
    assert set(before) <= set(after)  # tied lm_head is one parameter, saved once
    for name, p in before.items():
        assert not torch.equal(after[name], p), f"{name} did not change"


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_other_estimators_run(tiny_path, tmp_path, estimator):
    history = train_mod.train(_cfg(tiny_path, tmp_path, steps=1, estimator=estimator, aggregation="sequence-mean"))
    assert history[0]["loss"] == history[0]["loss"]


def test_resume_is_exact(tiny_path, tmp_path):
    common = dict(steps=4, ppo_epochs=2, keep_checkpoints=5)
    train_mod.train(_cfg(tiny_path, tmp_path / "straight", save_every=2, **common))
    train_mod.train(_cfg(tiny_path, tmp_path / "split", **{**common, "steps": 2}, save_final=True))
    train_mod.train(_cfg(tiny_path, tmp_path / "split", save_final=True, resume="latest", **{**common}))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_000004" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    straight = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    split = [json.loads(l) for l in open(tmp_path / "split" / "metrics.jsonl")]
    assert [r["reward_mean"] for r in straight] == [r["reward_mean"] for r in split]


def test_checkpoint_save_leaves_no_temporary(tiny_path, tmp_path):
    train_mod.train(_cfg(tiny_path, tmp_path, steps=1, save_final=True))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000001", "written.json"]
    saved = tmp_path / "checkpoints" / "step_000001"
    assert (saved / "model.safetensors").is_file() and (saved / "trainer_state.json").is_file()
    assert (saved / "trainer_state.safetensors").is_file() and not list(saved.glob("*.pt"))


def _small_rollout():
    responses = torch.tensor([[5, 6, 2, 0], [5, 7, 8, 2], [9, 2, 0, 0], [9, 9, 2, 0]])
    mask = response_mask_after_eos(responses, 2)
    return Rollout(
        torch.ones(4, 1, dtype=torch.long),
        torch.ones(4, 1, dtype=torch.long),
        responses,
        mask,
        torch.tensor([0, 0, 1, 1]),
        [""] * 4,
    )


@pytest.mark.parametrize("offset, fails", [(0.0, False), (1e-3, True)])
def test_trust_check_stops_on_mismatch(offset, fails):
    roll, rewards = _small_rollout(), torch.tensor([1.0, 0.0, 1.0, 0.0])
    options = train_mod.step_options(TrainConfig(backend="torch"), step=0, trust=True)
    adv = train_mod.compute_advantages(roll, rewards, TrainConfig(backend="torch")).advantages
    adv[3, 1] += offset  # group 1, row 3, token 1
    args = (roll.responses, roll.response_mask, rewards, roll.group_ids)
    if fails:
        with pytest.raises(tempo_rl.AdvantageMismatch, match="group 1, row 3, token 1"):
            with mock.patch.object(tempo_rl.step, "tempo_advantages_with_stats", return_value=(adv, None)):
                tempo_rl.advantage_step(*args, options=options)
    else:
        report = tempo_rl.advantage_step(*args, options=options).trust
        assert report is not None and report.groups_checked == 2 and report.max_abs_diff <= 1e-6


def test_response_mask_includes_first_eos_only():
    r = torch.tensor([[4, 2, 2, 0], [4, 4, 4, 4], [2, 5, 2, 0]])
    assert response_mask_after_eos(r, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_cli_train_end_to_end(tiny_path, tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        f"model: {tiny_path}\nsteps: 5\nprompts_per_step: 2\ngroup_size: 4\nmax_new_tokens: 5\n"
        f"reward: {__name__}:digit_reward\nthreads: 1\n"
    )
    out = tmp_path / "out"
    rc = cli.main(
        [
            "train",
            "--config",
            str(cfg_file),
            "--steps",
            "2",
            "--output-dir",
            str(out),
            "--eval-every",
            "2",
            "--eval-prompts",
            "4",
            "--dump-rollouts-every",
            "1",
            "--no-progress",
            "--no-tensorboard",
            "--estimator",
            "grpo",
        ]
    )
    assert rc == 0
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval_accuracy" in rows[0] and "eval_accuracy" in rows[2]
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 2 and saved["group_size"] == 4 and saved["estimator"] == "grpo"  # flag > file
    dumped = [json.loads(l) for l in open(out / "rollouts.jsonl")]
    # every group of every dumped step, each line with its prompt: 2 steps x 2 prompts x 4 responses
    assert len(dumped) == 16 and set(dumped[0]) == {"group_id", "prompt", "response", "text", "reward", "step"}
    assert {(r["step"], r["group_id"]) for r in dumped} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert (out / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    assert "reward_mean" in capsys.readouterr().out


def test_cli_rejects_unknown_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1}')
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_bf16_autocast_with_activation_checkpointing(tiny_path, tmp_path):
    history = train_mod.train(
        _cfg(tiny_path, tmp_path, steps=1, dtype="bfloat16", gradient_checkpointing=True, kl_coef=0.05)
    )
    assert history[0]["loss"] == history[0]["loss"] and history[0]["grad_norm"] > 0


def test_overwritten_run_restarts_its_metrics(tiny_path, tmp_path):
    for _ in range(2):
        train_mod.train(_cfg(tiny_path, tmp_path, steps=1, overwrite=True))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_failed_save_leaves_previous_checkpoint(tiny_path, tmp_path, monkeypatch):
    from tempo_rl.trainer import checkpoint

    train_mod.train(_cfg(tiny_path, tmp_path, steps=1, save_final=True))
    before = (tmp_path / "checkpoints" / "step_000001" / "model.safetensors").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(checkpoint, "write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(_cfg(tiny_path, tmp_path, steps=2, save_final=True, resume="latest"))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_000001"]
    assert (tmp_path / "checkpoints" / "step_000001" / "model.safetensors").read_bytes() == before
    assert checkpoint.resolve("latest", tmp_path / "checkpoints").name == "step_000001"


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean"])
@pytest.mark.parametrize("with_old", [False, True])
def test_fused_loss_equals_unfused(tiny_path, aggregation, with_old):
    """One micro-batch through tempo_rl.fused_policy_loss (the default) and through full logits
    (fused_loss=False): same loss, metrics and gradient of every parameter, KL on."""
    from tempo_rl.trainer.rollout import SamplingConfig, sample_groups

    model, tok = load_policy(tiny_path, torch.device("cpu"))[1], build_tokenizer()
    cfg = TrainConfig(model=tiny_path, kl_coef=0.1, aggregation=aggregation)
    torch.manual_seed(0)
    sampling = SamplingConfig(max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    roll = sample_groups(model, tok, ["1+2=", "34+5="], sampling, group_size=3)
    adv = torch.randn(roll.responses.shape)  # (B, Lr) token advantages
    ref = score_logprobs(model, roll, cfg, None) + 0.1 * torch.randn(roll.responses.shape)
    old = None
    if with_old:
        old = score_logprobs(model, roll, cfg, None) - 0.3 * torch.randn(roll.responses.shape)
    # the micro-batch is half of a mini-batch: the divisor is twice its own count
    denom = 2.0 * (roll.n_tokens if aggregation == "token-mean" else roll.responses.shape[0])
    results = []
    for fn in (update.micro_loss_unfused, update.micro_loss_fused):
        model.zero_grad(set_to_none=True)
        loss, metrics = fn(model, roll, update.MicroTargets(adv, old, ref, denom), cfg, None)
        loss.backward()
        results.append((loss.detach(), metrics, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, m0, g0), (l1, m1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for key in m0:
        torch.testing.assert_close(torch.as_tensor(m1[key]), torch.as_tensor(m0[key]).float(), rtol=1e-4, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
