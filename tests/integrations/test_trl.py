"""TempoGRPOTrainer: trains with every supported loss type, feeds the loss exactly
`tempo_rl.tempo_advantages`, gives the same advantages on two processes as on one, and trains on the
tree (`tempo_tree_forward`: one process, two DDP processes, a LoRA model) like the rows."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integrations.conftest import require

require("trl")

import tempo_rl  # noqa: E402
from tempo_rl.integrations.trl import (  # noqa: E402
    TempoGRPOTrainer,
    _local_batch,
    _rewards_and_groups,
)
from tests.integrations import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GROUP = 3


class Recording(TempoGRPOTrainer):
    """Keeps each generation batch and each batch the loss receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated: list[dict[str, torch.Tensor]] = []
        self.fed: list[dict[str, torch.Tensor]] = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        keep = ("completion_ids", "completion_mask", "advantages")
        self.generated.append({k: output[k].detach().clone() for k in keep})
        return output

    def _compute_loss(self, model, inputs):
        self.fed.append({k: inputs[k].detach().clone() for k in ("completion_ids", "advantages")})
        return super()._compute_loss(model, inputs)


def make_trainer(tmp_path: Path, peft_config=None, **overrides) -> Recording:
    args = tiny.trl_config(tmp_path / "run", group=GROUP, per_device_batch=2 * GROUP, **overrides)
    return Recording(
        model=tiny.save_model(tmp_path / "model"),
        reward_funcs=tiny.REWARD_FUNCS,
        args=args,
        train_dataset=tiny.prompts_dataset(),
        processing_class=tiny.build_tokenizer(tmp_path / "tok"),
        peft_config=peft_config,
    )


def expected_advantages(batch: dict[str, torch.Tensor], trainer: Recording) -> torch.Tensor:
    """The oracle: tempo_rl's public API on the same completions and TRL's weighted rewards."""
    mask = batch["completion_mask"]  # no truncation masking here: exactly each completion's tokens
    ids = [row[: int(n)].tolist() for row, n in zip(batch["completion_ids"], mask.sum(1))]
    rewards = tiny.expected_rewards(ids)
    groups = torch.arange(len(ids)) // GROUP
    scale, eps, td = trainer.args.scale_rewards, trainer.args.tempo_eps, trainer.args.tempo_td_coef
    adv = tempo_rl.tempo_advantages(
        batch["completion_ids"], mask, rewards, groups, norm_by_std=scale == "group", eps=eps, td_coef=td
    )
    if scale == "batch":
        adv = adv / (rewards.std() + eps)
    return adv


CASES = {
    "dapo": {"loss_type": "dapo"},
    "grpo-beta": {"loss_type": "grpo", "beta": 0.04},
    "dr_grpo-unnormalised": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    "bnpo-batch-std": {"loss_type": "bnpo", "scale_rewards": "batch"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_trains_two_steps_on_tempo_advantages(tmp_path, case):
    trainer = make_trainer(tmp_path, **CASES[case])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()

    assert math.isfinite(result.training_loss)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    for name, param in trainer.model.named_parameters():
        if name in before:
            assert not torch.equal(param.detach(), before[name]), f"{name} did not change"

    assert len(trainer.generated) == 2 and len(trainer.fed) == 2
    for batch, fed in zip(trainer.generated, trainer.fed):
        assert batch["advantages"].shape == batch["completion_ids"].shape  # (B, L): token advantages
        assert torch.equal(batch["advantages"], expected_advantages(batch, trainer))
        # The loss gets the same rows, shuffled by TRL.
        rows = {tuple(i.tolist()) + tuple(a.tolist()) for i, a in zip(batch["completion_ids"], batch["advantages"])}
        assert {tuple(i.tolist()) + tuple(a.tolist()) for i, a in zip(fed["completion_ids"], fed["advantages"])} <= rows

    logged = [log for log in trainer.state.log_history if "tempo/branch_token_fraction" in log]
    assert logged and all(0.0 <= log["tempo/branch_token_fraction"] <= 1.0 for log in logged)
    assert all(log["tempo/nodes_per_group"] >= 1.0 for log in logged)


def test_td_coef_zero_gives_trl_grpo(tmp_path):
    trainer = make_trainer(tmp_path, tempo_td_coef=0.0, max_steps=1)
    trainer.train()
    (batch,) = trainer.generated
    mask = batch["completion_mask"]
    ids = [row[: int(n)].tolist() for row, n in zip(batch["completion_ids"], mask.sum(1))]
    grpo = tempo_rl.grpo_advantages(
        batch["completion_ids"], mask, tiny.expected_rewards(ids), torch.arange(len(ids)) // GROUP, eps=1e-4
    )
    assert torch.equal(batch["advantages"], grpo)


def test_unscored_completion_gets_zero_and_leaves_the_group():
    per_func = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 2.0], [3.0, float("nan")]])
    rewards, groups = _rewards_and_groups(per_func, torch.tensor([1.0, 0.5]), group_size=2)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 3.0]
    assert groups.tolist() == [0, -2, 1, 1]
    with pytest.raises(ValueError, match="num_generations"):
        _rewards_and_groups(per_func[:3], torch.tensor([1.0, 0.5]), group_size=2)


def test_tool_output_keeps_its_place_in_the_tree_without_advantage():
    ids = [[4, 5, 6, 1], [4, 1]]
    output = {
        "completion_ids": torch.tensor([[4, 5, 6, 1, 0], [4, 1, 0, 0, 0]]),  # padded to 5, as TRL may
        "tool_mask": torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1]]),  # 5, 6: tool output
    }
    local = _local_batch(output, ids)
    assert local["response_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert local["loss_mask"].tolist() == [[1, 0, 0, 1, 0], [1, 1, 0, 0, 0]]


def test_unsupported_aggregation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        make_trainer(tmp_path, multi_objective_aggregation="normalize_then_sum")


def test_loss_never_forms_the_logits(tmp_path):
    """TEMPO's (B, T) advantages reach a loss scored through TRL's fused LM head: every forward of
    training runs with fused_lm_head=True and returns per-token log-probs, no (B, T, V) logits."""
    trainer = make_trainer(tmp_path)
    calls = []
    fused_forward = trainer.model.forward

    def recording_forward(*args, **kwargs):
        out = fused_forward(*args, **kwargs)
        if trainer.model.training and torch.is_grad_enabled():
            calls.append((kwargs.get("fused_lm_head", False), getattr(out, "logits", None)))
        return out

    trainer.model.forward = recording_forward
    trainer.train()
    assert calls and all(fused and logits is None for fused, logits in calls)
    assert trainer.fed and all(batch["advantages"].dim() == 2 for batch in trainer.fed)


def test_use_liger_kernel_accepted_where_trl_keeps_its_own_loss(tmp_path):
    """TRL 1.16 has no Liger GRPO loss path (use_liger_kernel only swaps layer kernels): accepted."""
    from trl import GRPOTrainer

    from tempo_rl.integrations.trl import _check_supported

    assert not hasattr(GRPOTrainer, "compute_liger_loss")
    _check_supported(tiny.trl_config(tmp_path, group=GROUP, per_device_batch=2 * GROUP, use_liger_kernel=True))


def test_liger_grpo_loss_is_refused_naming_what_works(tmp_path, monkeypatch):
    """A TRL that computes the loss with Liger's (B,)-advantage GRPO loss is refused; the message
    names the options that save the logits' memory with (B, T) advantages."""
    from trl import GRPOTrainer

    from tempo_rl.integrations.trl import _check_supported

    monkeypatch.setattr(GRPOTrainer, "compute_liger_loss", lambda self, *a: None, raising=False)
    args = tiny.trl_config(tmp_path, group=GROUP, per_device_batch=2 * GROUP, use_liger_kernel=True)
    with pytest.raises(ValueError, match=r"use_liger_kernel.*fused_policy_loss \(fused_loss=True\)"):
        _check_supported(args)


def run_fixed_rollouts(out: Path, nproc: int, mode: str = "") -> list[dict[str, torch.Tensor]]:
    """Runs trl_distributed.py; returns per step the rows of all ranks in rank order."""
    return _stack_steps(_run_ranks(out, nproc, mode))


def _run_ranks(out: Path, nproc: int, mode: str = "") -> list[dict]:
    """Runs trl_distributed.py (with `mode`, see there) on `nproc` processes; each rank's record."""
    script = str(ROOT / "tests" / "integrations" / "trl_distributed.py")
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, script, str(out), *([mode] if mode else [])]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        # A port the OS just handed out, not a fixed one another process on the machine may hold.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(port), script, str(out)]
        cmd += [mode] if mode else []
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(nproc)]
    assert all(r["world"] == nproc for r in ranks)
    return ranks


def _stack_steps(ranks: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Per step, the rows of all ranks in rank order."""
    steps = []
    for s in range(2):
        parts = [r["steps"][s] for r in ranks]
        width = max(p["advantages"].shape[1] for p in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        steps.append({k: torch.cat([pad(p[k]) for p in parts]) for k in parts[0]})
    return steps


@pytest.mark.slow
def test_two_processes_give_the_advantages_of_one(tmp_path):
    one = run_fixed_rollouts(tmp_path / "one", 1)
    two = run_fixed_rollouts(tmp_path / "two", 2)
    for a, b in zip(one, two):
        width = max(a["advantages"].shape[1], b["advantages"].shape[1])
        a = {k: torch.nn.functional.pad(v, (0, width - v.shape[1])) for k, v in a.items()}
        b = {k: torch.nn.functional.pad(v, (0, width - v.shape[1])) for k, v in b.items()}
        mask = a["completion_mask"].bool()
        assert torch.equal(a["completion_mask"], b["completion_mask"])
        assert torch.equal(a["completion_ids"] * mask, b["completion_ids"] * mask)  # same data
        assert torch.equal(a["advantages"], b["advantages"])  # bitwise, split group included
        ids = [row[: int(n)].tolist() for row, n in zip(a["completion_ids"], mask.sum(1))]
        oracle = tempo_rl.tempo_advantages(
            a["completion_ids"], mask, tiny.expected_rewards(ids), torch.arange(len(ids)) // 4, eps=1e-4
        )
        assert torch.equal(a["advantages"], oracle)


def test_trl_example_script_trains_on_a_tiny_model(tmp_path):
    """examples/trl_tempo_grpo.py as shipped (its JSONL data and reward module), on a tiny local model."""
    import importlib.util

    model_dir = tmp_path / "model"
    tiny.save_model(model_dir)
    tiny.build_tokenizer(model_dir)
    spec = importlib.util.spec_from_file_location("trl_tempo_grpo", ROOT / "examples" / "trl_tempo_grpo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parse_args(
        [
            "--model",
            str(model_dir),
            "--output-dir",
            str(tmp_path / "run"),
            "--cpu",
            "--num-generations",
            "3",
            "--per-device-batch",
            "6",
            "--max-completion-length",
            "6",
            "--max-steps",
            "2",
            "--learning-rate",
            "1e-2",
        ]
    )
    trainer = example.build_trainer(args, save_strategy="no")
    assert type(trainer).__name__ == "TempoGRPOTrainer"
    assert [f.__name__ for f in trainer.reward_funcs] == ["correct", "boxed"]
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(math.isfinite(row["loss"]) for row in logged)


def _load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("trl_tempo_grpo", ROOT / "examples" / "trl_tempo_grpo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_trl_example_runs_offline_on_the_tiny_policy_and_dumps_rollouts(tmp_path):
    """The documented CPU command (`--model tiny --cpu`): the project's tiny policy, built here (a short
    warm-up), on the built-in `add` task; its reward varies, trees branch, every logged row carries
    the same tempo/* keys, and --dump-rollouts-every writes what `tempo-rl inspect` reads."""
    from tempo_rl.viz import Settings, build_views, load_tokenizer, read_rollouts

    example = _load_example()
    tiny_dir, run = tmp_path / "tiny-base", tmp_path / "run"
    argv = ["--model", "tiny", "--cpu", "--tiny-dir", str(tiny_dir), "--tiny-warmup-steps", "300"]
    argv += ["--output-dir", str(run), "--max-steps", "8", "--dump-rollouts-every", "1"]
    threads = torch.get_num_threads()
    try:
        trainer = example.train(example.parse_args(argv))  # on one thread, as the command runs
    finally:
        torch.set_num_threads(threads)
    assert [f.__name__ for f in trainer.reward_funcs] == ["correct"] and (tiny_dir / "config.json").is_file()

    rows = [row for row in trainer.state.log_history if "loss" in row]
    assert len(rows) == 2  # 8 steps, one logged row per generation batch of 4 steps
    keys = [sorted(k for k in row if k.startswith("tempo/")) for row in rows]
    assert keys[0] == keys[1] and "tempo/td_coef" in keys[0] and len(keys[0]) == 7
    assert any(row["reward_std"] > 0 for row in rows), "the embedded task's reward varies on the tiny policy"
    assert all(row["tempo/branch_token_fraction"] > 0 for row in rows)

    dumped = read_rollouts(run / "rollouts.jsonl", load_tokenizer(tiny_dir))
    assert sorted({r.step for r in dumped}) == [0, 4]  # TRL's global step at each generation
    assert len(dumped) == 2 * 64 and {r.reward for r in dumped} <= {0.0, 1.0}
    assert all(r.prompt and r.prompt.endswith("=") and r.ids for r in dumped)
    views = build_views(dumped, Settings())
    assert len(views) == 2 * 8  # 8 groups of 8 completions per dumped batch


def test_metric_keys_are_the_same_on_steps_with_and_without_branching(tmp_path):
    """TRL logs one row per step: a step whose groups never branch (identical completions) carries the
    same tempo/* keys as one that branches, with the undefined depths at 0.0."""

    def rollout(prompts, trainer):
        step = trainer.state.global_step
        ids = [[2, 3, tiny.EOS] if step == 0 else [2, 3 + i % GROUP, tiny.EOS] for i in range(len(prompts))]
        prompt_ids = trainer.processing_class(prompts, add_special_tokens=False)["input_ids"]
        return {"prompt_ids": prompt_ids, "completion_ids": ids, "logprobs": None}

    trainer = TempoGRPOTrainer(
        model=tiny.save_model(tmp_path / "model"),
        reward_funcs=tiny.REWARD_FUNCS,
        args=tiny.trl_config(tmp_path / "run", group=GROUP, per_device_batch=2 * GROUP),
        train_dataset=tiny.prompts_dataset(),
        processing_class=tiny.build_tokenizer(tmp_path / "tok"),
        rollout_func=rollout,
    )
    trainer.train()
    rows = [row for row in trainer.state.log_history if "loss" in row]
    flat, branching = ({k: v for k, v in row.items() if k.startswith("tempo/")} for row in rows)
    assert flat.keys() == branching.keys() and len(flat) == 7
    assert flat["tempo/branch_nodes_per_group"] == flat["tempo/first_branch_depth"] == 0.0
    assert branching["tempo/branch_nodes_per_group"] > 0 and flat["tempo/td_coef"] == 1.0


def test_lora_trains_the_adapters_on_tempo_advantages(tmp_path):
    """peft_config as with GRPOTrainer: only the LoRA weights change, and the loss gets TEMPO's advantages."""
    from peft import LoraConfig

    trainer = Recording(
        model=tiny.save_model(tmp_path / "model"),
        reward_funcs=tiny.REWARD_FUNCS,
        args=tiny.trl_config(tmp_path / "run", group=GROUP, per_device_batch=2 * GROUP, beta=0.04),
        train_dataset=tiny.prompts_dataset(),
        processing_class=tiny.build_tokenizer(tmp_path / "tok"),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)
    for batch in trainer.generated:
        assert torch.equal(batch["advantages"], expected_advantages(batch, trainer))


def test_dump_option_is_checked():
    from tempo_rl.integrations.trl import _check_supported

    with pytest.raises(ValueError, match="tempo_dump_rollouts_every must be an int >= 0, got -1"):
        _check_supported(
            tiny.trl_config(Path("unused"), group=GROUP, per_device_batch=GROUP, tempo_dump_rollouts_every=-1)
        )


def test_branch_snr_diagnostic_is_logged_when_asked():
    """tempo_log_branch_snr=True adds tempo_rl.branch_snr_stats's metrics over the scored rows."""
    import types
    from collections import defaultdict, deque

    ids = [[5, 6, 7], [5, 6, 8], [5, 9], [4, 4], [4, 4, 1], [3]]
    width = max(map(len, ids))
    completion_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    rewards = torch.tensor([[1.0], [0.0], [0.5], [2.0], [0.0], [1.0]])  # (B, 1): one reward function
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), num_generations=GROUP, num_generations_eval=GROUP,
        accelerator=types.SimpleNamespace(num_processes=1, process_index=0), reward_weights=torch.ones(1),
        scale_rewards="group", tempo_options=tempo_rl.StepOptions(
            eps=1e-4, backend="torch", trust_check=True, trust_groups=2, log_branch_snr=True
        ),
        _metrics=defaultdict(lambda: defaultdict(list)), _logs={"advantages": deque(maxlen=64)},
    )  # fmt: skip
    fake._log_tempo = types.MethodType(TempoGRPOTrainer._log_tempo, fake)
    TempoGRPOTrainer._tempo_advantages(fake, {"completion_ids": completion_ids}, ids, rewards)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]
    want = tempo_rl.branch_snr_stats(completion_ids, mask, rewards[:, 0], torch.arange(6) // GROUP).as_metrics("tempo/")
    assert want["tempo/branch_nodes"] > 0
    assert {k: v[0] for k, v in fake._metrics["train"].items() if k in want} == want


def _tree_batch(trainer: Recording) -> tuple[torch.Tensor, torch.Tensor, int]:
    """TRL's scoring layout: left-padded prompts of two lengths, GROUP right-padded completions each,
    forking at depth 0, mid-way and never (identical rows), one empty completion."""
    prompts = [[2, 3, 4], [3, 4], [2, 3, 4], [3, 4], [2, 3, 4], [3, 4]]
    completions = [[2, 2, 3, 1], [2, 5], [2, 2, 4], [2, 5], [3], []]
    width_p, width_c = 3, 4
    ids = torch.zeros(len(prompts), width_p + width_c, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids[row, width_p - len(p) : width_p] = torch.tensor(p)
        mask[row, width_p - len(p) : width_p] = 1
        ids[row, width_p : width_p + len(c)] = torch.tensor(c, dtype=torch.long)
        mask[row, width_p : width_p + len(c)] = 1
    return ids, mask, width_c


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_tree_forward_scores_like_trl(tmp_path, temperature):
    """tempo_tree_forward=True: TRL's own scoring call gives the log-probs, entropies and parameter
    gradients of TRL's per-row fused-head forward, to float32 rounding, in chunks of rows. (Under
    TRL's default bf16 autocast on CPU the two backward passes sum shared gradients in a different
    order and agree to bf16 rounding only, so exactness is checked in float32.)"""
    trainer = make_trainer(tmp_path, tempo_tree_forward=True, temperature=temperature, bf16=False)
    ids, mask, keep = _tree_batch(trainer)
    completion_mask = mask[:, -keep:].float()
    results = {}
    for tree in (False, True):
        trainer.tempo_tree_forward = tree
        trainer.model.zero_grad()
        logp, entropy, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, keep, batch_size=4, compute_entropy=True
        )
        (logp * completion_mask).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[tree] = (logp.detach() * completion_mask, entropy * completion_mask, grads)
    (rows_lp, rows_ent, rows_g), (tree_lp, tree_ent, tree_g) = results[False], results[True]
    torch.testing.assert_close(tree_lp, rows_lp, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(tree_ent, rows_ent, atol=2e-6, rtol=1e-5)
    assert tree_g.keys() == rows_g.keys() and len(rows_g) > 0
    for name in rows_g:
        torch.testing.assert_close(tree_g[name], rows_g[name], atol=1e-5, rtol=1e-4, msg=name)


def test_tree_forward_trains_like_trl(tmp_path):
    """One TRL step with and without tempo_tree_forward: the same generated batch, the same loss and
    the same updated parameters to float32 rounding; the tree path was the one that scored."""
    calls = []
    real = tempo_rl.tree_logprobs_and_entropy

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    runs = {}
    for tree in (False, True):
        trainer = make_trainer(tmp_path / str(tree), tempo_tree_forward=tree, max_steps=1, beta=0.04, bf16=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempo_rl, "tree_logprobs_and_entropy", counting)
            trainer.train()
        loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
        runs[tree] = (trainer.generated[0], loss, {n: p.detach() for n, p in trainer.model.named_parameters()})
        assert (len(calls) > 0) == tree
    (rows_batch, rows_loss, rows_params), (tree_batch, tree_loss, tree_params) = runs[False], runs[True]
    assert torch.equal(tree_batch["completion_ids"], rows_batch["completion_ids"])
    assert math.isfinite(tree_loss) and tree_loss == pytest.approx(rows_loss, rel=1e-5, abs=1e-6)
    for name in rows_params:
        torch.testing.assert_close(tree_params[name], rows_params[name], atol=1e-5, rtol=1e-4, msg=name)


def test_tree_forward_refuses_what_it_cannot_do_exactly(tmp_path):
    with pytest.raises(ValueError, match="entropy_coef"):
        make_trainer(tmp_path, tempo_tree_forward=True, entropy_coef=0.01)
    trainer = make_trainer(tmp_path, tempo_tree_forward=True)
    ids, mask, keep = _tree_batch(trainer)
    with pytest.raises(ValueError, match="pixel_values"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, pixel_values=torch.zeros(1))


def test_tree_forward_refuses_only_sharded_setups():
    """One process and DDP (accelerate's MULTI_* types) keep every parameter whole in every process,
    so the LM head can run outside the forward; FSDP and DeepSpeed are refused, naming the option."""
    from accelerate.utils import DistributedType

    from tempo_rl.integrations.trl import _check_tree_forward

    args = tiny.trl_config(Path("unused"), group=GROUP, per_device_batch=2 * GROUP, tempo_tree_forward=True)
    for accepted in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        _check_tree_forward(args, accepted)
    for refused in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match=f"tempo_tree_forward=True .* not {refused.value}"):
            _check_tree_forward(args, refused)


def test_tree_forward_trains_a_lora_model_like_trl(tmp_path):
    """TRL + PEFT LoRA (adapters on every projection, random B so every adapter matrix learns): one
    step with and without tempo_tree_forward gives the same loss and the same adapters to float32
    rounding; the base weights stay frozen; the tree path was the one that scored."""
    from peft import LoraConfig

    calls = []
    real = tempo_rl.tree_logprobs_and_entropy
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    runs = {}
    for tree in (False, True):
        torch.manual_seed(0)  # the same random adapters in both runs
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, lora_dropout=0.0)
        trainer = make_trainer(
            tmp_path / str(tree), peft_config=lora, tempo_tree_forward=tree, max_steps=1, beta=0.04, bf16=False
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempo_rl, "tree_logprobs_and_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
            trainer.train()
        assert (len(calls) > 0) == tree
        loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
        after = {n: p.detach() for n, p in trainer.model.named_parameters()}
        runs[tree] = (before, after, loss, trainer.generated[0])
    (rows_before, rows_after, rows_loss, rows_batch), (tree_before, tree_after, tree_loss, tree_batch) = (
        runs[False],
        runs[True],
    )
    assert rows_before.keys() == tree_before.keys()
    assert all(torch.equal(rows_before[n], tree_before[n]) for n in rows_before)
    assert torch.equal(tree_batch["completion_ids"], rows_batch["completion_ids"])
    assert math.isfinite(tree_loss) and tree_loss == pytest.approx(rows_loss, rel=1e-5, abs=1e-6)
    adapters = [n for n in rows_after if "lora_" in n]
    assert len(adapters) == 2 * len(targets)
    for name in rows_after:
        trained = "lora_" in name
        assert torch.equal(tree_after[name], tree_before[name]) != trained, name  # adapters move, the rest not
        torch.testing.assert_close(tree_after[name], rows_after[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_tree_forward_on_two_processes_trains_like_the_rows(tmp_path):
    """tempo_tree_forward=True on two gloo processes (torchrun; TRL wraps the model in DDP), two steps
    in float32 with a KL term: the same completions as the per-row run, the tree scored, and every
    parameter after training equals the per-row run's to float32 rounding, on both ranks."""
    rows = _run_ranks(tmp_path / "rows", 2, "rows")
    tree = _run_ranks(tmp_path / "tree", 2, "tree")
    assert all(r["tree_calls"] == 0 for r in rows) and all(r["tree_calls"] > 0 for r in tree)
    for a, b in zip(_stack_steps(rows), _stack_steps(tree)):
        assert torch.equal(a["completion_mask"], b["completion_mask"])
        assert torch.equal(a["completion_ids"] * a["completion_mask"], b["completion_ids"] * b["completion_mask"])
    start = dict(tiny.build_model().named_parameters())
    for name, want in rows[0]["params"].items():
        assert not torch.equal(want, start[name].detach()), name  # the run trained it
        assert torch.equal(tree[0]["params"][name], tree[1]["params"][name]), name  # DDP kept the ranks equal
        torch.testing.assert_close(tree[0]["params"][name], want, atol=1e-5, rtol=1e-4, msg=name)
