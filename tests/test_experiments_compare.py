"""The pieces of `python -m experiments.compare`: best-lr selection, steps to target, report, gradient agreement."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest

from experiments import compare
from tempo_rl.trainer.config import TrainConfig
from tempo_rl.trainer.tiny import build_model, build_tokenizer
from tests.test_entry_points import assert_tables_have_headers


def _history(accs, every=5):
    return [
        {
            "step": every * (i + 1),
            "eval_accuracy": a,
            "time_step_s": 0.2,
            "time_advantage_s": 0.002,
            "advantage_time_fraction": 0.01,
            "branch_token_fraction": 0.1,
            "nodes_per_group": 30.0,
            "reward_mean": a,
        }
        for i, a in enumerate(accs)
    ]


def test_each_estimator_gets_its_own_best_lr(tmp_path):
    # tempo is best at the low rate, grpo at the high one: the selection must not share a rate
    curves = {
        ("tempo", 1e-4): [0.6, 0.8, 0.9],
        ("tempo", 2e-4): [0.5, 0.6, 0.6],
        ("grpo", 1e-4): [0.5, 0.6, 0.7],
        ("grpo", 2e-4): [0.6, 0.85, 0.9],
    }
    results = {(e, lr, s): _history(c) for (e, lr), c in curves.items() for s in (0, 1, 2)}
    summary = compare.summarise(results, ["tempo", "grpo"], [1e-4, 2e-4], [0, 1, 2], target=0.8)
    assert summary["best_lr"] == {"tempo": 1e-4, "grpo": 2e-4}
    assert summary["sweep"]["tempo"]["0.0001"]["steps_to_target"] == [10, 10, 10]
    assert summary["sweep"]["grpo"]["0.0001"]["steps_to_target"] == [None] * 3
    md = compare.markdown(
        summary,
        [{"cosine": 0.99, "norm_ratio": 2.0, "reward_mean": 0.5}],
        TrainConfig(),
        ["tempo", "grpo"],
        [1e-4, 2e-4],
        [0, 1, 2],
        0.8,
        "python -m experiments.compare",
    )
    assert "| tempo | 0.0001 | 10 (10, 10, 10; 3/3 within" in md and "| grpo | 0.0002 | 10 (" in md
    assert compare._fmt_steps([None, 20, None], 60) == "not reached (-, 20, -; 1/3 within 60)"
    compare.plot(results, summary, ["tempo", "grpo"], [1e-4, 2e-4], [0, 1, 2], 0.8, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_gradient_agreement_on_a_tiny_model(tmp_path):
    path = tmp_path / "m"
    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=1, heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    cfg = TrainConfig(
        model=str(path),
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=5,
        reward="tempo_rl.trainer.rewards:numeric_match",
    )
    rows = compare.gradient_agreement(cfg, n_batches=1)
    assert len(rows) == 1
    # a random policy almost never answers right: equal rewards give zero gradients, reported as 0/0 -> 0
    assert all(math.isfinite(v) for v in rows[0].values())


def test_gradient_snr_from_cosines_between_batches():
    grad = [
        {"rollout": "tree", "cos_other_batches_grpo": 0.2, "cos_other_batches_tempo": 0.5},
        {"rollout": "tree", "cos_other_batches_grpo": 0.4, "cos_other_batches_tempo": 0.5},
        {"rollout": "independent", "cos_other_batches_grpo": 0.5, "cos_other_batches_tempo": 0.5},
    ]
    snr = compare.gradient_snr(grad)
    assert list(snr) == ["tree", "independent"]
    assert math.isclose(snr["tree"]["cos_grpo"], 0.3)
    assert math.isclose(snr["tree"]["snr_grpo"], 0.3 / 0.7) and math.isclose(snr["tree"]["snr_tempo"], 1.0)
    assert math.isclose(snr["tree"]["snr_ratio"], 0.7 / 0.3)
    assert snr["independent"]["snr_ratio"] == 1.0
    rows = [{"x": 1.0}, {}, {"x": 3.0}]
    assert compare._mean_of(rows, "x") == 2.0 and compare._mean_of(rows, "y") is None


def test_seconds_to_target_sums_step_times_up_to_the_hit():
    history = _history([0.6, 0.8, 0.9])  # steps 5, 10, 15; 0.2 s each
    assert math.isclose(compare.seconds_to(history, 0.8), 0.4)
    assert compare.seconds_to(history, 0.95) is None
    assert compare._median_or_dash([1.0, None, 3.0]) == "3.0" and compare._median_or_dash([None, None, 1.0]) == "-"


def test_batch_snr_sees_noise_in_the_size_along_one_direction():
    import torch

    gen = torch.Generator().manual_seed(0)
    direction = torch.tensor([3.0, 4.0]) / 5
    scale = 1.0 + 0.5 * torch.randn(20_000, generator=gen)  # mean 1, sd 0.5: SNR = 1 / 0.25 = 4
    snr = compare.batch_snr(scale[:, None] * direction)
    assert abs(snr - 4.0) < 0.2
    grad = [{"rollout": "independent", "cos_other_batches_grpo": 0.5, "cos_other_batches_tempo": 0.5,
             "direct_snr_grpo": 2.0, "direct_snr_tempo": 5.0}]  # fmt: skip
    assert compare.gradient_snr(grad)["independent"]["direct_snr_ratio"] == 2.5


def test_compare_names_a_missing_extra_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever happens, nothing is written into the repository
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    assert compare.main(["--steps", "1", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "'matplotlib'" in capsys.readouterr().err


def test_compare_writes_to_the_working_directory_by_default():
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    out = Path(parser.parse_args([]).out)
    assert not out.is_absolute() and out.parent == Path(".")


BAD_ARGUMENTS = [
    (["--config", "bad.yaml"], "--config bad.yaml: not valid YAML"),
    (["--config", "a_dir"], "--config a_dir: a directory"),
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--jobs", "0"], "argument --jobs: must be at least 1, got 0"),
    (["--grad-batches", "-1"], "argument --grad-batches"),
    (["--eval-every", "-1"], "argument --eval-every"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_refused_before_any_run(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    (tmp_path / "a_dir").mkdir()
    try:
        rc = compare.main([*argv, "--runs-dir", "runs"])
    except SystemExit as e:  # argparse's errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_compare_runs_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    """The study end to end at its smallest: one step, one rate, one seed; its table has a header row."""
    monkeypatch.chdir(tmp_path)
    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=2, heads=2, seed=0).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    base = {"model": str(tmp_path / "model"), "prompts_per_step": 2, "group_size": 2}
    (tmp_path / "base.json").write_text(json.dumps(base))
    argv = ["--config", "base.json", "--steps", "1", "--eval-every", "1", "--lrs", "1e-4", "--seeds", "0"]
    assert compare.main([*argv, "--grad-batches", "0", "--jobs", "1", "--runs-dir", "runs", "--out", "cmp"]) == 0
    md = (tmp_path / "cmp.md").read_text()
    assert_tables_have_headers(md, "cmp.md")
    assert (tmp_path / "cmp.png").is_file()
    out = capsys.readouterr().out
    assert "tempo" in out and "grpo" in out
