"""verl's own trainer, `python -m verl.trainer.main_ppo`, trains TEMPO on CPU: 2 gloo ranks under
Ray, a tiny random Qwen2 built from a config, rollouts from the "hf" rollout and a reward that varies
(tempo_rl.integrations.verl_cpu), 3 steps. The advantages the actor trained on are
`tempo_rl.tempo_advantages` of the same rows, bit for bit; with td_coef 0 the estimator is verl's
own GRPO to float32 rounding; the parameters moved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integrations.conftest import require

require("verl")

from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402

import tempo_rl  # noqa: E402
from tests.integrations import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STEPS, PROMPTS, GROUP, RESPONSE_LEN = 3, 2, 4, 6
# The chat template joins the messages' words; the word-level tokenizer knows a, b, c, d.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def _model_dir(path: Path) -> Path:
    """tiny.py's tokenizer with a chat template, and a one-layer random Llama (verl's agent loop checks
    Qwen models' chat-template tokens, which a word-level tokenizer does not have)."""
    tokenizer = tiny.build_tokenizer(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    model = tiny.build_model(family="llama", vocab_size=len(tokenizer))
    model.save_pretrained(path)
    return path


def _data(path: Path) -> tuple[Path, Path]:
    import pandas as pd

    rows = [
        {
            "data_source": "tempo_cpu",
            "prompt": [{"role": "user", "content": " ".join(tiny.WORDS[(i + k) % 4] for k in range(3))}],
            "reward_model": {"style": "rule", "ground_truth": "a"},
            "extra_info": {"index": i},
        }
        for i in range(PROMPTS * STEPS)
    ]
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path / "train.parquet")
    pd.DataFrame(rows[:PROMPTS]).to_parquet(path / "test.parquet")
    return path / "train.parquet", path / "test.parquet"


def overrides(model: Path, train: Path, test: Path, out: Path, td_coef: float) -> list[str]:
    """main_ppo's command line for a CPU run (docs/engines/verl.md, "On CPU")."""
    return [
        "algorithm.adv_estimator=tempo",
        "trainer.use_v1=true",
        "trainer.v1.trainer_mode=tempo_capture_sync",
        f"+algorithm.tempo_td_coef={td_coef}",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={train}",
        f"data.val_files={test}",
        f"data.train_batch_size={PROMPTS}",
        "data.max_prompt_length=8",
        f"data.max_response_length={RESPONSE_LEN}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.model.use_remove_padding=false",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=0.05",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.checkpoint.save_contents=[hf_model]",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.n={GROUP}",
        "actor_rollout_ref.rollout.temperature=1.0",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=1",
        "reward.num_workers=1",
        f"reward.custom_reward_function.path={ROOT / 'tests' / 'integrations' / 'verl_reward.py'}",
        "reward.custom_reward_function.name=compute_score",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=2",
        "+ray_kwargs.ray_init.num_gpus=2",
        "+ray_kwargs.ray_init.num_cpus=8",
        "+ray_kwargs.ray_init.include_dashboard=false",
        f"trainer.total_training_steps={STEPS}",
        f"trainer.save_freq={STEPS}",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={out / 'checkpoints'}",
    ]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One main_ppo run: its captured rows per step and the model before and after."""
    tmp = tmp_path_factory.mktemp("verl_cpu")
    model = _model_dir(tmp / "model")
    train, test = _data(tmp / "data")
    capture = tmp / "capture"
    capture.mkdir()
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": "tempo_rl.integrations.verl_cpu,tests.integrations.verl_capture",
        "TEMPO_CAPTURE_DIR": str(capture),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides(model, train, test, tmp, td_coef=1.0)]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)  # a cap: busy machines
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    steps = [torch.load(capture / f"step_{k}.pt") for k in range(1, STEPS + 1)]
    return {"steps": steps, "model": model, "checkpoints": tmp / "checkpoints", "log": proc.stdout}


def _padded(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])  # (B, L)


def _batch(step: dict) -> tuple:
    """(responses (B, L), response_mask (B, L), scores (B,), uids, advantages (B, L)) of a captured step."""
    responses, mask = _padded(step["responses"]), _padded(step["response_mask"])
    scores = torch.stack([r.sum() for r in step["rm_scores"]])  # the outcome reward: the row sum, as verl's GRPO
    advantages = _padded(step["advantages"])
    width = mask.shape[1]
    return responses[:, :width], mask, scores, [str(u) for u in step["uid"]], advantages


def test_main_ppo_trains_the_steps_on_tempo_advantages_bitwise(cpu_run):
    assert len(cpu_run["steps"]) == STEPS
    for step in cpu_run["steps"]:
        responses, mask, scores, uids, advantages = _batch(step)
        assert len(uids) == PROMPTS * GROUP and len(set(uids)) == PROMPTS
        assert scores.unique().numel() > 1  # the reward varies, so the advantages are not all zero
        expected = tempo_rl.tempo_advantages(responses, mask, scores, uids, td_coef=1.0)
        assert torch.equal(advantages, expected)
        assert advantages.abs().sum() > 0


def test_with_td_coef_zero_the_estimator_is_verls_grpo(cpu_run):
    """On the rows verl trained on: verl's registered "tempo" with tempo_td_coef 0 against verl's own
    "grpo" estimator (another order of the group sums: float32 rounding)."""
    for step in cpu_run["steps"]:
        responses, mask, scores, uids, _ = _batch(step)
        rewards = torch.zeros(mask.shape)
        rewards[torch.arange(len(uids)), mask.sum(1) - 1] = scores  # (B, L) verl's layout
        index = np.array(uids, dtype=object)
        config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "tempo_td_coef": 0.0})
        tempo, _ = core_algos.get_adv_estimator_fn("tempo")(
            token_level_rewards=rewards, response_mask=mask, index=index, config=config, responses=responses
        )
        grpo, _ = core_algos.get_adv_estimator_fn("grpo")(
            token_level_rewards=rewards, response_mask=mask, index=index, config=config
        )
        torch.testing.assert_close(tempo, grpo, rtol=0, atol=8 * torch.finfo(torch.float32).eps)


def test_the_parameters_moved(cpu_run):
    from safetensors.torch import load_file

    before = load_file(cpu_run["model"] / "model.safetensors")
    saved = cpu_run["checkpoints"] / f"global_step_{STEPS}" / "actor" / "huggingface" / "model.safetensors"
    after = load_file(saved)
    assert before.keys() == after.keys()
    moved = [name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))]
    assert len(moved) == len(before), f"unchanged: {sorted(set(before) - set(moved))}"


@pytest.mark.parametrize("found", ["0.10.0", "0.8.2"])
def test_outside_the_supported_verl_the_plugin_names_the_version(found):
    probe = (
        f"import verl; verl.__version__ = {found!r}\n"
        "try:\n    import tempo_rl.integrations.verl_cpu\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    line = out.stdout.strip()
    assert line.count("\n") == 0, out.stderr[-2000:]
    assert "supports verl >= 0.9.1, < 0.10" in line and line.endswith(f"found verl {found}")
