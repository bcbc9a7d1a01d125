"""The examples run as shipped: the YAML config, the JSONL data and the TRL-style reward module drive
`tempo-rl train` on a tiny local model (only the model and the GPU options are overridden). The TRL
and verl scripts are exercised in tests/integrations/, in their engines' own environments; here the
verl launch script's defaults are checked against the shipped data, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tempo_rl import cli
from tempo_rl.trainer.config import load_file
from tempo_rl.trainer.data import load_jsonl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_example_dataset_is_well_formed():
    rows = load_jsonl(EXAMPLES / "data" / "arithmetic.jsonl")
    assert len(rows) >= 40 and all(r.columns["operation"] in {"add", "sub", "mul", "div"} for r in rows)


def test_example_rewards_score_right_and_wrong_answers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_rewards", EXAMPLES / "rewards.py")
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    completions = ["6 x 22 = 132, so \\boxed{132}", "it is 130", [{"role": "assistant", "content": "\\boxed{132}"}]]
    assert rewards.correct(["p"] * 3, completions, answer=["132"] * 3) == [1.0, 0.0, 1.0]
    assert rewards.boxed(["p"] * 3, completions) == [1.0, 0.0, 1.0]
    assert rewards.compute_score("arithmetic", "\\boxed{132}", "132") == 1.0


def test_example_config_is_valid_as_shipped():
    from tempo_rl.trainer.config import TrainConfig

    cfg = TrainConfig(**load_file(EXAMPLES / "train_tempo.yaml")).validate()
    assert cfg.lr == 1e-6 and cfg.reward_weights == [1.0, 0.1] and cfg.clip_high == 0.28


def _with_context(tiny_path: str, where: Path, positions: int) -> str:
    """A copy of the tiny policy that declares `positions` positions (its rotary embeddings take any),
    so the example's prompts (about 110 of its character tokens) fit the context the trainer checks."""
    import shutil

    shutil.copytree(tiny_path, where)
    config = json.loads((where / "config.json").read_text())
    (where / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))
    return str(where)


def test_tempo_rl_train_runs_the_example_config(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root, as the README runs it
    tiny_path = _with_context(tiny_path, tmp_path / "model", 256)
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--config",
            str(EXAMPLES / "train_tempo.yaml"),
            "--model",
            tiny_path,
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--no-chat-template",
            "--no-gradient-checkpointing",
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--group-size",
            "4",
            "--max-new-tokens",
            "8",
            "--mini-batches",
            "1",
            "--grad-accum",
            "2",
            "--eval-every",
            "2",
            "--eval-prompts",
            "2",
            "--save-every",
            "0",
            "--dump-rollouts-every",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "--output-dir",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"reward/correct", "reward/boxed"} <= set(rows[1])
    dumped = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    assert all(d["prompt"].endswith("Put the final answer in \\boxed{}.") for d in dumped)


# ----------------------------------------------------------------------------- the verl launch script
VERL_SCRIPT = EXAMPLES / "verl_tempo_qwen3_1.7b.sh"


def _verl_script(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is this one
    return subprocess.run(
        ["bash", str(VERL_SCRIPT)],
        cwd=cwd,
        env={**os.environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _fake_verl(where: Path, version: str) -> str:
    """A directory that makes importlib.metadata report verl `version` (no code: the script stops first)."""
    info = where / f"verl-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: verl\nVersion: {version}\n")
    return str(where)


def test_verl_script_defaults_fit_the_shipped_data_and_write_outside_the_repository(tmp_path):
    done = _verl_script(tmp_path, DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    overrides = dict(line.split("=", 1) for line in done.stdout.splitlines())
    batch, mini = int(overrides["data.train_batch_size"]), int(overrides["actor_rollout_ref.actor.ppo_mini_batch_size"])
    train_file = Path(overrides["data.train_files"])
    for key in ("data.train_files", "data.val_files", "trainer.default_local_dir"):
        assert Path(overrides[key]).is_relative_to(tmp_path / "runs"), (key, overrides[key])
    assert Path(overrides["reward.custom_reward_function.path"]) == EXAMPLES / "rewards.py"
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    import pandas as pd

    spec = importlib.util.spec_from_file_location("verl_prepare_data", EXAMPLES / "verl_prepare_data.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    assert prepare.main([str(EXAMPLES / "data" / "arithmetic.jsonl"), str(train_file.parent)]) == 0
    rows = len(pd.read_parquet(train_file))
    assert 0 < batch <= rows and batch % mini == 0 and batch // mini == 4
    gpus, n = int(overrides["trainer.n_gpus_per_node"]), int(overrides["actor_rollout_ref.rollout.n"])
    assert (batch * n) % gpus == 0 and (mini * n) % gpus == 0  # responses split evenly over the GPUs


@pytest.mark.parametrize(
    "version, env, message",
    [
        (None, {}, "verl is not installed"),
        ("0.8.3", {}, "tested with verl >= 0.9.1, < 0.10; found verl 0.8.3"),
        ("0.10.0", {}, "tested with verl >= 0.9.1, < 0.10; found verl 0.10.0"),
        ("0.9.1", {"BATCH": "64"}, "BATCH=64 prompts per step, but"),
    ],
)
def test_verl_script_stops_in_one_line_outside_what_it_was_tested_with(tmp_path, version, env, message):
    path = _fake_verl(tmp_path / "site", version) if version else str(tmp_path / "empty")
    done = _verl_script(tmp_path, PYTHONPATH=path, **env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert not (ROOT / "data").exists()  # never into the repository


def _trl_example():
    spec = importlib.util.spec_from_file_location("trl_tempo_grpo", EXAMPLES / "trl_tempo_grpo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_trl_example_defaults_to_the_real_model_and_sizes_the_tiny_one_for_cpu():
    example = _trl_example()
    real = example.parse_args([])
    assert real.model == "Qwen/Qwen3-1.7B" and real.dataset.endswith("arithmetic.jsonl")
    assert (real.learning_rate, real.max_completion_length) == (1e-6, 1024)
    tiny = example.parse_args(["--model", "tiny", "--cpu", "--learning-rate", "3e-4"])
    assert (tiny.dataset, tiny.max_completion_length, tiny.learning_rate) == ("add", 24, 3e-4)  # given flags win
    assert tiny.per_device_batch * tiny.steps_per_generation == 8 * tiny.num_generations  # 8 prompts a batch


def test_trl_example_without_a_gpu_says_to_add_cpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _trl_example().main(["--model", "tiny"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "trl_tempo_grpo.py: no GPU here; add --cpu (with a small model: --model tiny)"
    )
