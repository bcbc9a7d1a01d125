"""The examples run as shipped: the YAML config, the JSONL data and the TRL-style reward module drive
`tempo-rl train` on a tiny local model (only the model and the GPU options are overridden). The TRL
and verl scripts are exercised in tests/integrations/, in their engines' own environments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tempo_rl import cli
from tempo_rl.trainer.config import load_file
from tempo_rl.trainer.data import load_jsonl
from tempo_rl.trainer.tiny import build_model, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=2, heads=2, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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


def test_tempo_rl_train_runs_the_example_config(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root, as the README runs it
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
