"""The "tempo" estimator inside an installed skyrl-train: registered in SkyRL's registry, called the
way SkyRL's trainer calls estimators, on batches built by SkyRL's own `convert_to_training_input`."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integrations.conftest import require

require("skyrl_train")

from hydra import compose, initialize_config_dir  # noqa: E402
from skyrl_train.entrypoints.main_base import config_dir  # noqa: E402
from skyrl_train.utils.ppo_utils import AdvantageEstimatorRegistry  # noqa: E402

import tempo_rl  # noqa: E402
from tempo_rl.integrations.skyrl import (  # noqa: E402
    TempoPPOExp,
    TempoRayPPOTrainer,
    compute_tempo_outcome_advantage,
    response_tokens,
)

# Two prompts, interleaved; responses share prefixes and branch at different depths.
PROMPTS = [[11, 12], [11, 12], [13], [11, 12], [13], [13]]
RESPONSES = [[5, 6, 7, 2], [5, 6, 8, 2], [9, 2], [5, 2], [9, 3, 3, 2], [9, 3, 2]]
UIDS = ["p0", "p0", "p1", "p0", "p1", "p1"]
REWARDS = [1.0, 0.0, 0.5, 0.25, 2.0, -1.0]
WIDTH = 4


def padded(rows: list[list[int]], width: int = WIDTH) -> torch.Tensor:
    return torch.tensor([row + [0] * (width - len(row)) for row in rows])


def prefix_mask(width: int = WIDTH) -> torch.Tensor:
    lengths = torch.tensor([len(r) for r in RESPONSES])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def skyrl_config(*overrides: str):
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_base_config", overrides=list(overrides))


def trainer(cfg, dp_size: int = 1) -> TempoRayPPOTrainer:
    """A TempoRayPPOTrainer with only what advantages need (no Ray workers, no inference engines)."""
    out = object.__new__(TempoRayPPOTrainer)
    out.cfg = cfg
    out.tokenizer = types.SimpleNamespace(pad_token_id=0)
    out.all_metrics = {}
    out.policy_model = types.SimpleNamespace(
        actor_infos=[types.SimpleNamespace(rank=types.SimpleNamespace(dp_size=dp_size))]
    )
    out.critic_model = out.ref_model = None
    return out


def training_input(t: TempoRayPPOTrainer):
    """SkyRL's own conversion of generator output: per-token rewards, reward on the last token."""
    rewards = [[0.0] * (len(r) - 1) + [x] for r, x in zip(RESPONSES, REWARDS)]
    output = {
        "prompt_token_ids": PROMPTS,
        "response_ids": RESPONSES,
        "rewards": rewards,
        "loss_masks": [[1] * len(r) for r in RESPONSES],
    }
    data = t.convert_to_training_input(output, UIDS)
    data["values"] = None  # what SkyRL's forward pass leaves without a critic
    return data


def test_tempo_is_in_skyrls_registry():
    assert "tempo" in AdvantageEstimatorRegistry.list_available()
    assert AdvantageEstimatorRegistry.get("tempo").__wrapped__ is compute_tempo_outcome_advantage


@pytest.mark.parametrize("norm,td_coef", [(True, 1.0), (False, 0.5)])
def test_trainer_writes_tempo_advantages(norm, td_coef):
    cfg = skyrl_config(
        "trainer.algorithm.advantage_estimator=tempo",
        f"trainer.algorithm.grpo_norm_by_std={norm}",
        f"+trainer.algorithm.tempo_td_coef={td_coef}",
    )
    t = trainer(cfg)
    data = t.compute_advantages_and_returns(training_input(t))
    expected = tempo_rl.tempo_advantages(
        padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS, norm_by_std=norm, td_coef=td_coef
    )
    assert data["advantages"].dtype == data["rewards"].dtype
    assert torch.equal(data["advantages"], expected)
    assert torch.equal(data["returns"], expected)
    stats = tempo_rl.tree_stats(padded(RESPONSES), prefix_mask(), UIDS)
    assert t.all_metrics["tempo/branch_token_fraction"] == stats.branch_token_fraction


def test_non_branch_tokens_are_grpo_bitwise():
    """Where no group branches, the trainer's TEMPO advantage is GRPO's (TEMPO with td_coef 0), bit for
    bit; SkyRL's own GRPO computes the group mean in another order and agrees to float32 rounding."""
    t = trainer(skyrl_config("trainer.algorithm.advantage_estimator=tempo"))
    tempo = t.compute_advantages_and_returns(training_input(t))["advantages"]
    args = (padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS)
    grpo = tempo_rl.tempo_advantages(*args, td_coef=0.0)
    non_branch = (tempo_rl.tempo_advantages(*args) == grpo) & prefix_mask().bool()
    assert non_branch.any() and not non_branch.all()
    assert torch.equal(tempo[non_branch], grpo[non_branch])
    t_grpo = trainer(skyrl_config("trainer.algorithm.advantage_estimator=grpo"))
    skyrl_grpo = t_grpo.compute_advantages_and_returns(training_input(t_grpo))["advantages"]
    torch.testing.assert_close(grpo, skyrl_grpo, rtol=0, atol=4 * torch.finfo(torch.float32).eps)


def test_batch_filling_rows_are_groups_of_one_and_left_out_of_the_stats():
    """dp_size 4: SkyRL pads 6 rows to 8 with copies under uids pad0, pad1."""
    t = trainer(skyrl_config("trainer.algorithm.advantage_estimator=tempo"), dp_size=4)
    data = t.compute_advantages_and_returns(training_input(t))
    assert data["advantages"].shape[0] == 8
    assert torch.equal(data["advantages"][6:], torch.zeros(2, WIDTH))  # a group of one has advantage 0
    expected = tempo_rl.tempo_advantages(padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS)
    assert torch.equal(data["advantages"][:6], expected)
    stats = tempo_rl.tree_stats(padded(RESPONSES), prefix_mask(), UIDS)
    assert t.all_metrics["tempo/nodes_per_group"] == stats.nodes_per_group


def test_other_estimators_are_skyrls_own():
    t = trainer(skyrl_config("trainer.algorithm.advantage_estimator=rloo"))
    t.compute_advantages_and_returns(training_input(t))
    assert not any(k.startswith("tempo/") for k in t.all_metrics)


def test_without_responses_the_error_names_the_launcher():
    with pytest.raises(ValueError, match="tempo_rl.integrations.skyrl"):
        compute_tempo_outcome_advantage(torch.zeros(6, WIDTH), prefix_mask(), np.array(UIDS))


def test_step_wise_trajectories_are_refused():
    cfg = skyrl_config("trainer.algorithm.advantage_estimator=tempo", "generator.step_wise_trajectories=true")
    t = trainer(cfg)
    with pytest.raises(ValueError, match="step_wise_trajectories"):
        t.compute_advantages_and_returns(training_input(trainer(skyrl_config())))


def test_estimator_called_directly_with_responses():
    rewards = torch.zeros(6, WIDTH)
    rewards[torch.arange(6), prefix_mask().sum(1) - 1] = torch.tensor(REWARDS)
    with response_tokens(padded(RESPONSES)) as stats:
        adv, ret = AdvantageEstimatorRegistry.get("tempo")(
            token_level_rewards=rewards, response_mask=prefix_mask(), index=np.array(UIDS), config=None
        )
    assert torch.equal(adv, tempo_rl.tempo_advantages(padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS))
    assert stats["tempo/nodes_per_group"] > 0


def test_exp_swaps_only_the_trainer():
    from skyrl_train.entrypoints.main_base import BasePPOExp
    from skyrl_train.trainer import RayPPOTrainer

    assert issubclass(TempoPPOExp, BasePPOExp) and issubclass(TempoRayPPOTrainer, RayPPOTrainer)
    overridden = {k for k in vars(TempoPPOExp) if not k.startswith("__")}
    assert overridden == {"get_trainer"}


def test_example_overrides_compose_with_skyrls_config():
    """Every override of examples/skyrl_tempo_grpo.sh names a key of SkyRL's ppo_base_config."""
    script = Path(__file__).resolve().parents[2] / "examples" / "skyrl_tempo_grpo.sh"
    out = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env={**os.environ, "DRY_RUN": "1"}, check=True
    )
    cfg = skyrl_config(*out.stdout.split())
    assert cfg.trainer.algorithm.advantage_estimator == "tempo" and cfg.trainer.algorithm.tempo_td_coef == 1.0
    assert cfg.generator.n_samples_per_prompt > 1


def test_estimator_runs_inside_a_ray_worker(tmp_path):
    """Every SkyRL run: the integration imported where Ray is up (the driver) and in a Ray worker, where
    SkyRL's registry hands out the estimator it pickled; the worker's advantages are the API's."""
    script = Path(__file__).with_name("skyrl_ray_worker.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert "tempo" in got["registered"]
    expected = tempo_rl.tempo_advantages(padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS)
    assert torch.equal(got["advantages"], expected)
    assert (
        got["metrics"]["tempo/nodes_per_group"]
        == tempo_rl.tree_stats(padded(RESPONSES), prefix_mask(), UIDS).nodes_per_group
    )


def test_missing_engine_is_a_one_line_error():
    probe = (
        "import sys; sys.modules['skyrl_train'] = None\n"
        "try:\n    import tempo_rl.integrations.skyrl\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") == 0 and "skyrl_train" in out and "pip install -e '.[skyrl]'" in out
