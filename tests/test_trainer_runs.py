"""A user's first runs: TRL-style rewards from their own directory, YAML options, output dirs that are
never mixed, resume that checks its config, trainer state without pickle, and errors before the model
loads. Each test drives `tempo-rl train` the way a user does (the CLI, or the installed script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempo_rl import cli
from tempo_rl.trainer import checkpoint, loading
from tempo_rl.trainer import train as train_mod
from tempo_rl.trainer.tiny import build_model, build_tokenizer

SCRIPT = Path(sys.executable).parent / "tempo-rl"

TRL_REWARDS = '''
def digits(prompts, completions, answer, **kwargs):
    """TRL's form: batched, dataset columns as keyword lists."""
    return [float(sum(ch.isdigit() for ch in c)) / 8 for c in completions]

def broken(prompts, completions, **kwargs):
    raise RuntimeError("grader down")

def constant(completion, answer):
    return 1.0
'''


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A user's directory with their reward module in it, as the working directory."""
    (tmp_path / "my_rewards.py").write_text(TRL_REWARDS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def _args(tiny_path, out="out", *extra):
    return [
        "train",
        "--model",
        tiny_path,
        "--output-dir",
        str(out),
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--max-new-tokens",
        "5",
        "--mini-batches",
        "2",
        "--eval-every",
        "0",
        "--no-progress",
        "--threads",
        "1",
        "--lr",
        "1e-3",
        "--reward",
        "my_rewards:digits",
        *extra,
    ]


def _train(args, capsys):
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- the installed script
def test_script_from_users_dir_with_trl_reward_and_yaml_lr(tiny_path, scratch):
    """`tempo-rl` (not `python -m`) finds a reward module in the working directory, and YAML's `lr: 1e-4`
    (a string to PyYAML) is the float 1e-4."""
    (scratch / "run.yaml").write_text(
        f"model: {tiny_path}\nlr: 1e-4\ngroup_size: '4'\nreward: my_rewards:digits\n"
        "steps: 2\nprompts_per_step: 2\nmax_new_tokens: 5\nmini_batches: 2\n"
        "eval_every: 0\nthreads: 1\nprogress: false\noutput_dir: out\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(SCRIPT), "train", "--config", "run.yaml"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((scratch / "out" / "config.json").read_text())
    assert saved["lr"] == 1e-4 and saved["group_size"] == 4 and saved["reward"] == ["my_rewards:digits"]
    rows = [json.loads(line) for line in open(scratch / "out" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and any(r["reward_mean"] > 0 for r in rows)


# ----------------------------------------------------------------------------- rewards that cannot teach
def test_all_rewards_failing_stops_with_nonzero_exit(tiny_path, scratch, capsys):
    rc, _, err = _train(_args(tiny_path, "out", "--reward", "my_rewards:broken"), capsys)
    assert rc == 1 and "every reward call failed at step 1" in err and "broken" in err


def test_flat_groups_for_n_steps_stop_with_nonzero_exit(tiny_path, scratch, capsys):
    rc, _, err = _train(
        _args(tiny_path, "out", "--reward", "my_rewards:constant", "--max-zero-variance-steps", "2"), capsys
    )
    assert rc == 1 and "for 2 steps in a row" in err and "rewards were all equal" in err
    rows = [json.loads(line) for line in open(scratch / "out" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]  # the steps that ran are logged


def test_several_weighted_rewards_log_each_mean(tiny_path, scratch, capsys):
    rc, _, err = _train(
        _args(tiny_path, "out", "--reward", "my_rewards:digits", "my_rewards:constant", "--reward-weights", "1", "0.5"),
        capsys,
    )
    assert rc == 0, err
    row = json.loads(open(scratch / "out" / "metrics.jsonl").readline())
    assert row["reward/constant"] == 1.0
    assert row["reward_mean"] == pytest.approx(row["reward/digits"] + 0.5)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--mini-batches", "0", "mini_batches (--mini-batches): Input should be greater than or equal to 1"),
        ("--grad-accum", "0", "grad_accum"),
        ("--prompts-per-step", "0", "prompts_per_step"),
        ("--steps", "0", "steps"),
        ("--top-p", "0", "top_p (--top-p): Input should be greater than 0"),
        ("--clip-low", "5", "clip_low (--clip-low): Input should be less than 1"),
        ("--kl-coef", "-1", "kl_coef"),
        ("--lr", "nan", "lr (--lr): Input should be a finite number"),
        ("--group-size", "1", "group_size"),
    ],
)
def test_out_of_range_option_is_refused_before_loading(tiny_path, scratch, capsys, monkeypatch, flag, value, match):
    monkeypatch.setattr(loading, "load_policy", _must_not_load)
    rc, _, err = _train(_args(tiny_path, "out", flag, value), capsys)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "yaml_line, match",
    [
        ("steps: 1.5", "steps (--steps): Input should be a valid integer"),
        ("group_size: four", "group_size"),
        ("lr: -1e-4", "lr (--lr): Input should be greater than 0"),
    ],
)
def test_bad_yaml_values_name_the_field(tiny_path, scratch, capsys, monkeypatch, yaml_line, match):
    monkeypatch.setattr(loading, "load_policy", _must_not_load)
    (scratch / "run.yaml").write_text(yaml_line + "\n")
    rc, _, err = _train(["train", "--config", "run.yaml", "--model", tiny_path, "--output-dir", "out"], capsys)
    assert rc == 2 and match in err


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was reported")


# ----------------------------------------------------------------------------- output dirs and resume
def test_new_run_refuses_a_used_output_dir(tiny_path, scratch, capsys):
    assert _train(_args(tiny_path, "out", "--save-every", "1"), capsys)[0] == 0
    before = (scratch / "out" / "metrics.jsonl").read_text()
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    assert rc == 2 and "--resume latest" in err and "--overwrite" in err
    assert (scratch / "out" / "metrics.jsonl").read_text() == before  # nothing lost
    assert _train(_args(tiny_path, "out", "--overwrite", "--steps", "1"), capsys)[0] == 0
    assert len((scratch / "out" / "metrics.jsonl").read_text().splitlines()) == 1
    assert [p.name for p in checkpoint.list_checkpoints(scratch / "out" / "checkpoints")] == ["step_000001"]


@pytest.mark.parametrize("flag, value", [("--seed", "3"), ("--group-size", "2"), ("--lr", "5e-4")])
def test_resume_refuses_changed_run_options_unless_forced(tiny_path, scratch, capsys, flag, value):
    assert _train(_args(tiny_path, "out", "--save-every", "1"), capsys)[0] == 0
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", "latest", flag, value), capsys)
    assert rc == 2 and "--force-resume" in err and flag.lstrip("-").replace("-", "_") in err
    rc, _, err = _train(
        _args(tiny_path, "out", "--steps", "3", "--resume", "latest", flag, value, "--force-resume"), capsys
    )
    assert rc == 0, err


def test_resume_with_a_different_model_is_refused(tiny_path, scratch, capsys, tmp_path_factory):
    other = tmp_path_factory.mktemp("other") / "model"
    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=2, heads=2, seed=1).save_pretrained(other)
    tok.save_pretrained(other)
    assert _train(_args(tiny_path, "out", "--save-every", "1"), capsys)[0] == 0
    args = _args(tiny_path, "out", "--steps", "3", "--resume", "latest")
    args[args.index(tiny_path)] = str(other)
    rc, _, err = _train(args, capsys)
    assert rc == 2 and "model=" in err


def test_rotation_follows_write_order_and_latest_is_the_last_written(tiny_path, scratch, capsys):
    """Resuming from step 1 while step 2 exists (--discard-later): the new run's checkpoints are kept,
    not pruned for having smaller step numbers than the abandoned one."""
    assert _train(_args(tiny_path, "out", "--save-every", "1", "--keep-checkpoints", "3"), capsys)[0] == 0
    ckpts = scratch / "out" / "checkpoints"
    rc, _, err = _train(
        _args(
            tiny_path,
            "out",
            "--steps",
            "2",
            "--resume",
            str(ckpts / "step_000001"),
            "--save-every",
            "1",
            "--keep-checkpoints",
            "1",
            "--discard-later",
        ),
        capsys,
    )
    assert rc == 0, err
    assert [p.name for p in checkpoint.list_checkpoints(ckpts)] == ["step_000002"]
    state = checkpoint.load_state(ckpts / "step_000002")
    assert state["step"] == 2


def test_write_order_beats_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000005", "step_000002"):
        (root / name).mkdir(parents=True)
        (root / name / checkpoint.STATE_FILE).write_text("{}")
        checkpoint._record(root, name)
    assert checkpoint.resolve("latest", root).name == "step_000002"


def test_torn_last_metrics_line_does_not_block_resume(tiny_path, scratch, capsys):
    assert _train(_args(tiny_path, "out", "--save-every", "1"), capsys)[0] == 0
    metrics = scratch / "out" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "reward_me')  # killed mid-write
    ckpt = scratch / "out" / "checkpoints" / "step_000001"
    rc, _, err = _train(_args(tiny_path, "out", "--steps", "3", "--resume", str(ckpt), "--discard-later"), capsys)
    assert rc == 0, err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_trainer_state_is_json_and_safetensors_and_round_trips_exactly(tiny_path, scratch, capsys):
    assert _train(_args(tiny_path, "out", "--save-every", "1", "--ppo-epochs", "2"), capsys)[0] == 0
    ckpt = scratch / "out" / "checkpoints" / "step_000002"
    assert sorted(p.name for p in ckpt.glob("trainer_state*")) == ["trainer_state.json", "trainer_state.safetensors"]
    state = checkpoint.load_state(ckpt)
    assert state["step"] == 2 and isinstance(state["rng"]["python"], tuple)
    assert state["rng"]["numpy"][1].dtype.name == "uint32"
    assert isinstance(state["optimizer"]["state"][0]["exp_avg"], torch.Tensor)
    tensors: dict = {}
    again = checkpoint.decode(json.loads(json.dumps(checkpoint.encode(state, tensors))), tensors)
    assert again["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(again["rng"]["torch"], state["rng"]["torch"])


def test_a_planted_pickle_is_never_loaded(tiny_path, scratch, capsys):
    """An old-style trainer_state.pt carrying a payload: resume refuses it and the payload never runs."""
    ckpt = scratch / "out" / "checkpoints" / "step_000001"
    ckpt.mkdir(parents=True)
    marker = scratch / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"step": 1, "x": Payload()}, ckpt / "trainer_state.pt")
    rc, _, err = _train(_args(tiny_path, "out", "--resume", str(ckpt)), capsys)
    assert rc == 2 and "pickle" in err
    assert not marker.exists()
    source = "".join(p.read_text() for p in Path(train_mod.__file__).parent.glob("*.py"))
    assert "weights_only=False" not in source


# ----------------------------------------------------------------------------- errors up front
def test_missing_dataset_is_reported_before_the_model_loads(tiny_path, scratch, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load_policy", _must_not_load)
    rc, _, err = _train(_args(tiny_path, "out", "--dataset", "data/nope.jsonl"), capsys)
    assert rc == 2 and "dataset 'data/nope.jsonl'" in err


def test_missing_reward_module_is_reported_before_the_model_loads(tiny_path, scratch, capsys, monkeypatch):
    monkeypatch.setattr(loading, "load_policy", _must_not_load)
    rc, _, err = _train(_args(tiny_path, "out", "--reward", "not_there:fn"), capsys)
    assert rc == 2 and "reward 'not_there:fn': cannot import" in err


def test_missing_model_dir_says_what_is_expected(scratch, capsys):
    rc, _, err = _train(_args("models/Qwen3-1.7B", "out"), capsys)
    assert rc == 2 and "model 'models/Qwen3-1.7B': no such directory" in err and "Repo id" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_cuda_device_on_cpu_torch_is_a_clear_error(tiny_path, scratch, capsys):
    rc, _, err = _train(_args(tiny_path, "out", "--device", "cuda"), capsys)
    assert rc == 2 and "device 'cuda'" in err and "--device cpu" in err


def test_missing_extra_names_the_install_command(tiny_path, scratch, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tokenizers" else real(name, *a))
    rc, _, err = _train(_args(tiny_path, "out"), capsys)
    assert rc == 2 and "'tokenizers'" in err and "pip install -e '.[train]'" in err


def test_report_to_a_missing_library_names_its_extra(tiny_path, scratch, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    rc, _, err = _train(_args(tiny_path, "out", "--report-to", "wandb"), capsys)
    assert rc == 2 and "pip install -e '.[wandb]'" in err


def test_trains_on_a_parquet_dataset_of_chat_prompts(tmp_path_factory, scratch, capsys):
    """TRL's conversational layout (prompt = messages) in Parquet, named answer column, chat template."""
    import datasets

    model = tmp_path_factory.mktemp("chat") / "model"
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    build_model(len(tok), hidden=32, layers=2, heads=2, seed=0).save_pretrained(model)
    tok.save_pretrained(model)
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{a}="}], "solution": str(2 * a)} for a in range(10, 40)]
    datasets.Dataset.from_list(rows).to_parquet(str(scratch / "train.parquet"))
    rc, _, err = _train(
        _args(
            str(model), "out", "--dataset", "train.parquet", "--answer-column", "solution", "--dump-rollouts-every", "1"
        ),
        capsys,
    )
    assert rc == 0, err
    dumped = [json.loads(line) for line in open(scratch / "out" / "rollouts.jsonl")]
    assert all(d["prompt"].endswith("=") for d in dumped)


def test_report_to_wandb_goes_through_the_library(tiny_path, scratch, capsys, monkeypatch):
    """--report-to wandb calls wandb.init / log / finish (a stand-in module records the calls)."""
    import importlib.machinery
    import types

    calls = []
    run = types.SimpleNamespace(
        log=lambda row, step: calls.append(("log", step, sorted(row))), finish=lambda: calls.append(("finish",))
    )
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw["config"]["lr"])) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rc, _, err = _train(_args(tiny_path, "out", "--report-to", "wandb"), capsys)
    assert rc == 0, err
    assert calls[0] == ("init", 1e-3) and calls[-1] == ("finish",)
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == [1, 2] and "reward_mean" in logged[0][2]


# ----------------------------------------------------------------------------- evaluation
def test_own_dataset_without_eval_set_holds_out_prompts_training_never_sees(scratch):
    from tempo_rl.trainer.config import TrainConfig

    (scratch / "data.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(50))
    )
    train, evals = loading.train_and_eval_examples(TrainConfig(dataset="data.jsonl", eval_prompts=256))
    assert len(evals) == 5 and len(train) == 45
    assert not {e.prompt for e in evals} & {e.prompt for e in train}


def test_accuracy_uses_the_documented_threshold(tiny_path, scratch, capsys):
    rc, out, err = _train(
        _args(tiny_path, "out", "--accuracy-threshold", "0", "--eval-every", "2", "--eval-prompts", "4"), capsys
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in open(scratch / "out" / "metrics.jsonl")]
    assert all(r["accuracy"] == 1.0 for r in rows if "accuracy" in r)  # every reward is >= 0
    assert all(r["eval_accuracy"] == 1.0 for r in rows if "eval_accuracy" in r)
    assert "eval accuracy (sampled, reward >= 0)" in out
    help_text = train_mod.TrainConfig.__dataclass_fields__["eval_dataset"].metadata["help"]
    assert "greedy" not in help_text  # the default evaluation samples; --eval-greedy says so itself
