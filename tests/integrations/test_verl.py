"""The "tempo" estimator inside an installed verl: loaded by verl's plugin mechanism, called the
way verl calls estimators, and fed the response token ids by the tempo_* v1 trainer modes."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from tests.integrations.conftest import require

require("verl")

from omegaconf import OmegaConf  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl.trainer.ppo.v1 import get_trainer_cls, trainer_base  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

import tempo_rl  # noqa: E402
from tempo_rl.integrations.verl import compute_tempo_outcome_advantage, response_tokens  # noqa: E402

# Two prompts, interleaved; responses share prefixes and branch at different depths.
RESPONSES = [[5, 6, 7, 2], [5, 6, 8, 2], [9, 2], [5, 2], [9, 3, 3, 2], [9, 3, 2]]
UIDS = ["p0", "p0", "p1", "p0", "p1", "p1"]
REWARDS = [1.0, 0.0, 0.5, 0.25, 2.0, -1.0]


def padded(rows: list[list[int]], width: int = 6) -> torch.Tensor:
    return torch.tensor([row + [0] * (width - len(row)) for row in rows])


def lengths() -> torch.Tensor:
    return torch.tensor([len(r) for r in RESPONSES])


def prefix_mask(width: int = 6) -> torch.Tensor:
    return (torch.arange(width)[None, :] < lengths()[:, None]).long()


def token_level_rewards(width: int = 6) -> torch.Tensor:
    """verl's layout: the outcome reward on each response's last token."""
    out = torch.zeros(len(RESPONSES), width)
    out[torch.arange(len(RESPONSES)), lengths() - 1] = torch.tensor(REWARDS)
    return out


def test_verl_loads_the_plugin_on_import():
    probe = (
        "import sys, verl\n"
        "assert 'tempo_rl.integrations.verl' in sys.modules, 'plugin not loaded by verl'\n"
        "from verl.trainer.ppo import core_algos\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from tempo_rl.integrations.verl import compute_tempo_outcome_advantage as f\n"
        "assert core_algos.get_adv_estimator_fn('tempo') is f\n"
        "for mode in ('sync', 'colocate_async', 'separate_async'):\n"
        "    assert issubclass(get_trainer_cls('tempo_' + mode), get_trainer_cls(mode))\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("norm", [True, False])
def test_compute_advantage_equals_the_api(norm):
    data = DataProto.from_dict(
        tensors={
            "responses": padded(RESPONSES),
            "response_mask": prefix_mask(),
            "token_level_rewards": token_level_rewards(),
        },
        non_tensors={"uid": np.array(UIDS, dtype=object)},
    )
    with response_tokens(data.batch["responses"]):
        out = compute_advantage(data, adv_estimator="tempo", config=AlgoConfig(norm_adv_by_std_in_grpo=norm))
    expected = tempo_rl.tempo_advantages(
        padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS, norm_by_std=norm
    )
    assert torch.equal(out.batch["advantages"], expected)
    assert torch.equal(out.batch["returns"], expected)


def test_tool_tokens_are_masked_not_cut_from_the_tree():
    """Multi-turn: verl's response_mask is 0 on tool output inside the response."""
    loss_mask = prefix_mask().clone()
    loss_mask[4, 1:3] = 0  # tool output in the middle of response 4
    loss_mask[0, 3] = 0  # tool output at the end of response 0
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "tempo_td_coef": 0.5})
    with response_tokens(padded(RESPONSES), lengths()):
        adv, _ = core_algos.get_adv_estimator_fn("tempo")(
            token_level_rewards=token_level_rewards(),
            response_mask=loss_mask,
            index=np.array(UIDS, dtype=object),
            config=config,
        )
    expected = tempo_rl.tempo_advantages(
        padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS, loss_mask=loss_mask, td_coef=0.5
    )
    assert torch.equal(adv, expected)


def test_multi_turn_span_comes_from_the_attention_mask():
    """verl's multi-turn response_mask has holes (tool output, here at the end of response 3, the
    token response 0 continues with); its attention mask gives each response's span. The span is
    the tree, verl's response_mask the loss mask."""
    width = 6
    span = prefix_mask(width)
    holey = span.clone()
    holey[0, 1] = 0  # tool output inside response 0
    holey[3, 1] = 0  # response 3 ends in tool output: [5, 2], its 2 a tool token
    attention = torch.cat([torch.ones(len(RESPONSES), 3, dtype=torch.long), span], dim=1)  # (B, P + L)
    data = DataProto.from_dict(
        tensors={
            "responses": padded(RESPONSES, width),
            "response_mask": holey,
            "attention_mask": attention,
            "token_level_rewards": token_level_rewards(width),
        },
        non_tensors={"uid": np.array(UIDS, dtype=object)},
    )
    with pytest.raises(ValueError, match="hole at position 1"):
        tempo_rl.tempo_advantages(padded(RESPONSES, width), holey, torch.tensor(REWARDS), UIDS)
    with response_tokens(data.batch["responses"], attention_mask=data.batch["attention_mask"]):
        out = compute_advantage(data, adv_estimator="tempo", config=AlgoConfig(norm_adv_by_std_in_grpo=True))
    expected = tempo_rl.tempo_advantages(padded(RESPONSES, width), span, torch.tensor(REWARDS), UIDS, loss_mask=holey)
    assert torch.equal(out.batch["advantages"], expected)


def test_without_responses_the_error_names_the_trainer_mode():
    with pytest.raises(ValueError, match="trainer_mode=tempo_sync"):
        compute_tempo_outcome_advantage(token_level_rewards(), prefix_mask(), np.array(UIDS, dtype=object))


@pytest.mark.parametrize("norm,td_coef", [(True, 1.0), (False, 0.5)])
def test_the_estimator_passes_the_contract_check(norm, td_coef):
    """tempo_rl.testing on the registered estimator, called as verl calls it (config an OmegaConf)."""
    import tempo_rl.testing as tt

    estimator = core_algos.get_adv_estimator_fn("tempo")

    def as_verl(token_level_rewards, response_mask, index, config, **tokens):
        return estimator(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            config=OmegaConf.create(config),
            **tokens,
        )

    report = tt.check_implementation(
        tt.verl_estimator(as_verl, name="verl estimator 'tempo'"), norm_by_std=norm, td_coef=td_coef, max_examples=60
    )
    assert report.examples >= 60


class InMemoryQueue:
    """Stands in for the TransferQueue service (a Ray actor) behind verl's kv_batch_get/put."""

    def __init__(self, rows: dict[str, dict]):
        self.rows = rows

    def kv_batch_get(self, keys, partition_id, select_fields):
        return list_of_dict_to_tensordict(
            [{f: self.rows[k][f] for f in select_fields if f in self.rows[k]} for k in keys]
        )

    def kv_batch_put(self, keys, partition_id, fields):
        for name in fields.keys():
            for key, value in zip(keys, fields[name].unbind(0)):
                self.rows[key][name] = value
        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id)


@pytest.mark.parametrize("mode", ["sync", "colocate_async"])
def test_tempo_trainer_mode_feeds_responses_to_the_estimator(monkeypatch, mode):
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(UIDS)]
    rows = {
        key: {
            "uid": uid,
            "responses": torch.tensor(resp),
            "response_mask": torch.ones(len(resp), dtype=torch.long),
            "rm_scores": token_level_rewards()[i, : len(resp)],
        }
        for i, (key, uid, resp) in enumerate(zip(keys, UIDS, RESPONSES))
    }
    queue = InMemoryQueue(rows)
    fake_tq = types.SimpleNamespace(kv_batch_get=queue.kv_batch_get, kv_batch_put=queue.kv_batch_put)
    monkeypatch.setattr(trainer_base, "tq", fake_tq)
    trainer = object.__new__(get_trainer_cls(f"tempo_{mode}"))  # only _compute_advantage runs
    trainer.config = OmegaConf.create(
        {
            "algorithm": {
                "adv_estimator": "tempo",
                "gamma": 1.0,
                "lam": 1.0,
                "norm_adv_by_std_in_grpo": True,
                "use_kl_in_reward": False,
            },
            "actor_rollout_ref": {"rollout": {"n": 3}},
        }
    )
    metrics: dict = {}
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics)

    stored = [rows[k]["advantages"] for k in keys]  # written back by verl, one ragged row per key
    got = torch.stack([torch.nn.functional.pad(a, (0, 4 - len(a))) for a in stored])
    expected = tempo_rl.tempo_advantages(padded(RESPONSES, 4), prefix_mask(4), torch.tensor(REWARDS), UIDS)
    assert torch.equal(got, expected)
    stats = tempo_rl.tree_stats(padded(RESPONSES, 4), prefix_mask(4), UIDS)
    assert metrics["tempo/branch_token_fraction"] == stats.branch_token_fraction
    assert metrics["tempo/nodes_per_group"] == stats.nodes_per_group


# -- examples/verl_tempo_qwen3_1.7b.sh ---------------------------------------------------------
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"


def _script_overrides(tmp_path, **env) -> list[str]:
    import os

    done = subprocess.run(
        ["bash", str(EXAMPLES / "verl_tempo_qwen3_1.7b.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", "DATA_DIR": str(tmp_path / "data"), **env},
        check=True,
    )
    return done.stdout.split()


def test_verl_example_script_composes_with_verls_config(tmp_path):
    """Every override of the launch script names a key of verl's own `ppo_trainer` config (Hydra refuses
    unknown keys), and the composed config is the recipe: TEMPO, its trainer mode, n = 7, 512 prompts,
    lr 1e-6, clip 0.2 / 0.28, 8192 response tokens."""
    from pathlib import Path

    import verl
    from hydra import compose, initialize_config_dir

    overrides = _script_overrides(tmp_path, BATCH="512")  # the recipe's batch (the default fits the example data)
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert cfg.algorithm.adv_estimator == "tempo" and cfg.algorithm.tempo_td_coef == 1.0
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "tempo_sync"
    assert cfg.trainer.v1.trainer_mode in trainer_base.TRAINER_REGISTRY  # registered by the plugin
    assert cfg.actor_rollout_ref.rollout.n == 7 and cfg.data.train_batch_size == 512
    actor = cfg.actor_rollout_ref.actor
    assert (actor.optim.lr, actor.clip_ratio_low, actor.clip_ratio_high) == (1e-6, 0.2, 0.28)
    assert cfg.data.max_response_length == 8192 and not actor.use_kl_loss
    assert cfg.reward.custom_reward_function.path == str(EXAMPLES / "rewards.py")


def test_verl_example_data_and_reward(tmp_path):
    """The data step writes verl's parquet layout, and the example reward scores its ground truth."""
    import importlib.util

    import pandas as pd

    script = EXAMPLES / "verl_prepare_data.py"
    subprocess.run(
        [sys.executable, str(script), str(EXAMPLES / "data" / "arithmetic.jsonl"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    train, test = pd.read_parquet(tmp_path / "train.parquet"), pd.read_parquet(tmp_path / "test.parquet")
    assert len(train) + len(test) == 48 and len(test) == 4
    row = train.iloc[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("\\boxed{}.")
    spec = importlib.util.spec_from_file_location("example_rewards", EXAMPLES / "rewards.py")
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    truth = row["reward_model"]["ground_truth"]
    assert rewards.compute_score(row["data_source"], f"so \\boxed{{{truth}}}", truth) == 1.0
    assert rewards.compute_score(row["data_source"], "so \\boxed{-1}", truth) == 0.0


def test_branch_snr_diagnostic_is_logged_when_asked():
    """+algorithm.tempo_log_branch_snr=true adds tempo_rl.branch_snr_stats's metrics to tempo/*."""
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "tempo_log_branch_snr": True})
    with response_tokens(padded(RESPONSES), lengths()) as stats:
        core_algos.get_adv_estimator_fn("tempo")(
            token_level_rewards=token_level_rewards(),
            response_mask=prefix_mask(),
            index=np.array(UIDS, dtype=object),
            config=config,
        )
    want = tempo_rl.branch_snr_stats(padded(RESPONSES), prefix_mask(), torch.tensor(REWARDS), UIDS).as_metrics("tempo/")
    assert want["tempo/branch_nodes"] > 0
    assert {k: stats[k] for k in want} == want
