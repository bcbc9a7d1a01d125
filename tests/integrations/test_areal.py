"""TEMPO inside an installed AReaL: `TempoPPOActor.compute_advantages` on trajectories laid out as
AReaL's RLVR workflow writes them, batched by AReaL's own `batched_call`."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

from tests.integrations.conftest import require

require("areal")

from areal.api.cli_args import NormConfig, PPOActorConfig  # noqa: E402
from areal.trainer.ppo.actor import PPOActor  # noqa: E402

import tempo_rl  # noqa: E402
from tempo_rl.integrations import areal as tempo_areal  # noqa: E402
from tempo_rl.integrations.areal import TempoPPOActor, TempoPPOActorConfig  # noqa: E402

# Two prompts of different lengths, three responses each (AReaL's group_size consecutive rows).
PROMPTS = [[11, 12, 13], [11, 12, 13], [11, 12, 13], [21], [21], [21]]
RESPONSES = [[5, 6, 7, 2], [5, 6, 8, 2], [5, 2], [9, 2], [9, 3, 3, 2], [9, 3, 2]]
REWARDS = [1.0, 0.0, 0.25, 0.5, 2.0, -1.0]
GROUP = 3
GROUP_IDS = [i // GROUP for i in range(len(RESPONSES))]


def trajectories(tool_output: tuple[int, int] | None = None) -> list[dict[str, torch.Tensor]]:
    """One dict per response, as `areal.workflow.rlvr.RLVRWorkflow` returns them (batch dim 1).
    `tool_output=(row, token)` sets that response token's loss mask to 0 (multi-turn tool output)."""
    out = []
    for i, (prompt, response, reward) in enumerate(zip(PROMPTS, RESPONSES, REWARDS)):
        seq = prompt + response
        loss_mask = [0] * len(prompt) + [1] * len(response)
        if tool_output is not None and tool_output[0] == i:
            loss_mask[len(prompt) + tool_output[1]] = 0
        res = {
            "input_ids": torch.tensor(seq, dtype=torch.int32),
            "loss_mask": torch.tensor(loss_mask, dtype=torch.int32),
            "logprobs": torch.linspace(-1.0, -0.1, len(seq)) * torch.tensor(loss_mask),
            "versions": torch.zeros(len(seq), dtype=torch.int32),
            "attention_mask": torch.ones(len(seq), dtype=torch.bool),
            "rewards": torch.tensor(reward, dtype=torch.float32),
        }
        out.append({k: v.unsqueeze(0) for k, v in res.items()})
    return out


def actor_config(cls=TempoPPOActorConfig, *, std_level="group", adv_norm=None, kl_ctl=0.0, **tempo) -> PPOActorConfig:
    return cls(
        experiment_name="test",
        trial_name="t0",
        reward_norm=NormConfig(mean_level="group", std_level=std_level, group_size=GROUP),
        adv_norm=adv_norm,
        kl_ctl=kl_ctl,
        recompute_logprob=False,
        use_decoupled_loss=False,
        **tempo,
    )


def advantages(actor: PPOActor, trajs) -> list[torch.Tensor]:
    return [d["advantages"][0] for d in actor.compute_advantages(trajs)]


def expected_rows(adv: torch.Tensor) -> list[torch.Tensor]:
    """(B, L) per response token -> AReaL's per-row layout: token p's advantage at p - 1."""
    rows = []
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        row = torch.zeros(len(prompt) + len(response))
        row[len(prompt) - 1 : len(prompt) - 1 + len(response)] = adv[i, : len(response)]
        rows.append(row)
    return rows


def assert_close_on_actions(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Compare where AReaL's rolled loss mask is 1 (its GAE loop leaves values on prompt positions)."""
    for i, (g, w) in enumerate(zip(got, want)):
        actions = slice(len(PROMPTS[i]) - 1, len(PROMPTS[i]) - 1 + len(RESPONSES[i]))
        torch.testing.assert_close(g[actions], w[actions], rtol=0, atol=4 * torch.finfo(torch.float32).eps)


def tree_inputs():
    width = max(map(len, RESPONSES))
    responses = torch.tensor([r + [0] * (width - len(r)) for r in RESPONSES])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in RESPONSES])[:, None]).long()
    return responses, mask, torch.tensor(REWARDS), GROUP_IDS


@pytest.mark.parametrize("std_level,td_coef", [("group", 1.0), (None, 0.5)])
def test_advantages_equal_the_api(std_level, td_coef):
    actor = TempoPPOActor(actor_config(std_level=std_level, tempo_td_coef=td_coef), engine=None)
    got = advantages(actor, trajectories())
    want = tempo_rl.tempo_advantages(*tree_inputs(), norm_by_std=std_level == "group", eps=1e-5, td_coef=td_coef)
    assert_close_on_actions(got, expected_rows(want))
    assert (
        actor.tempo_metrics["tempo/nodes_per_group"]
        == tempo_rl.tree_stats(*tree_inputs()[:2], GROUP_IDS).nodes_per_group
    )


@pytest.mark.parametrize("kl_ctl", [0.0, 0.1])
def test_non_branch_tokens_are_areals_grpo_bitwise(kl_ctl):
    """AReaL's own GRPO (PPOActor with the group reward_norm) on the same trajectories: TEMPO adds
    exactly 0 at every token where no group branches, KL reward or not."""
    grpo = advantages(PPOActor(actor_config(PPOActorConfig, kl_ctl=kl_ctl), engine=None), trajectories())
    tempo = advantages(TempoPPOActor(actor_config(kl_ctl=kl_ctl), engine=None), trajectories())
    args = tree_inputs()
    td = tempo_rl.tempo_advantages(*args, eps=1e-5) - tempo_rl.tempo_advantages(*args, eps=1e-5, td_coef=0.0)
    branch = expected_rows((td != 0).float())
    changed = 0
    for g, t, b in zip(grpo, tempo, branch):
        assert torch.equal(t[b == 0], g[b == 0])
        changed += int((t != g).sum())
    assert changed > 0


def test_td_coef_zero_is_areals_grpo_with_adv_norm():
    norm = NormConfig(mean_level="batch", std_level="batch")
    grpo = advantages(PPOActor(actor_config(PPOActorConfig, adv_norm=norm), engine=None), trajectories())
    tempo = advantages(TempoPPOActor(actor_config(adv_norm=norm, tempo_td_coef=0.0), engine=None), trajectories())
    for g, t in zip(grpo, tempo):
        assert torch.equal(t, g)


def test_tool_output_stays_in_the_tree_and_gets_no_td_term():
    """A response token with loss mask 0 (tool output) stays in the tree; TEMPO adds nothing there
    (AReaL's own loop carries the next value over it, and its loss masks it)."""
    grpo = advantages(PPOActor(actor_config(PPOActorConfig), engine=None), trajectories(tool_output=(4, 1)))
    got = advantages(TempoPPOActor(actor_config(), engine=None), trajectories(tool_output=(4, 1)))
    responses, mask, rewards, groups = tree_inputs()
    loss = mask.clone()
    loss[4, 1] = 0
    want = expected_rows(tempo_rl.tempo_advantages(responses, mask, rewards, groups, loss_mask=loss, eps=1e-5))
    tool = len(PROMPTS[4]) - 1 + 1
    assert got[4][tool] == grpo[4][tool]
    got[4][tool] = want[4][tool] = 0.0
    assert_close_on_actions(got, want)


@pytest.mark.parametrize(
    "norm,match",
    [(None, "mean_level: group"), (NormConfig(mean_level="group", std_level="batch", group_size=GROUP), "std_level")],
)
def test_unsupported_reward_norm_is_refused(norm, match):
    config = actor_config()
    config.reward_norm = norm
    with pytest.raises(ValueError, match=match):
        TempoPPOActor(config, engine=None)


def test_engine_classes_pickle_by_name():
    cls = tempo_areal.tempo_engine_class("fsdp")
    from areal.engine import FSDPPPOActor

    assert issubclass(cls, FSDPPPOActor) and pickle.loads(pickle.dumps(cls)) is cls
    with pytest.raises(ValueError, match="fsdp, megatron or archon"):
        tempo_areal.tempo_engine_class("deepspeed")


def test_trainer_builds_the_tempo_actor_only_for_the_actor():
    from areal.trainer.rl_trainer import PPOTrainer

    from tempo_rl.integrations.areal import TempoGRPOConfig, TempoPPOTrainer

    assert issubclass(TempoPPOTrainer, PPOTrainer)
    assert isinstance(TempoGRPOConfig().actor, TempoPPOActorConfig)


def test_example_config_loads_with_areals_loader(tmp_path):
    """examples/areal_tempo_grpo.yaml loads into TempoGRPOConfig with AReaL's own loader."""
    from pathlib import Path

    from areal.api.cli_args import load_expr_config

    from tempo_rl.integrations.areal import TempoGRPOConfig, step_options

    example = Path(__file__).resolve().parents[2] / "examples" / "areal_tempo_grpo.yaml"
    config, _ = load_expr_config(["--config", str(example), f"cluster.fileroot={tmp_path}"], TempoGRPOConfig)
    assert config.actor.tempo_td_coef == 1.0 and config.actor.reward_norm.group_size == config.gconfig.n_samples
    assert step_options(config.actor).norm_by_std


def test_example_script_imports():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "areal_tempo_grpo.py"
    spec = importlib.util.spec_from_file_location("areal_tempo_grpo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TempoPPOTrainer is tempo_areal.TempoPPOTrainer


def test_example_starts_areals_trainer_with_tempos_actor_on_cpu(tmp_path):
    """examples/areal_tempo_grpo.yaml with the CPU overrides of docs/engines/areal.md: AReaL's own
    trainer (local scheduler) builds TempoFSDPPPOActor in its actor worker on CPU and stops where the
    SGLang rollout servers would start; that worker's advantages are TempoPPOActor's, bit for bit,
    and differ from AReaL's GRPO at branch tokens."""
    import os
    from pathlib import Path

    from areal.api.cli_args import load_expr_config

    from tempo_rl.integrations.areal import TempoGRPOConfig
    from tests.integrations import areal_cpu_trainer as run

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    script = Path(run.__file__)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"engine"')))
    assert report == {"engine": "tempo_rl.integrations.areal.TempoFSDPPPOActor", "workers": 1}
    remote = torch.load(tmp_path / "advantages.pt", weights_only=False)

    config, _ = load_expr_config(
        ["--config", str(run.EXAMPLE), *run.cpu_overrides(tmp_path, tmp_path / "model")], TempoGRPOConfig
    )
    local = TempoPPOActor(config.actor, engine=None).compute_advantages(run.batch())
    areal_grpo = PPOActor(config.actor, engine=None).compute_advantages(run.batch())
    for got, want, grpo in zip(remote, local, areal_grpo):
        assert torch.equal(got["advantages"], want["advantages"])
    assert any(not torch.equal(got["advantages"], grpo["advantages"]) for got, grpo in zip(remote, areal_grpo))


def test_missing_engine_is_a_one_line_error():
    probe = (
        "import sys; sys.modules['areal'] = None\n"
        "try:\n    import tempo_rl.integrations.areal\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") == 0 and "areal" in out and "pip install -e '.[areal]'" in out


def test_a_group_that_lost_a_trajectory_is_refused_naming_the_row():
    """AReaL's grouped workflow keeps a group whose other trajectories failed: with row 2 lost, rows
    0..2 would hold two prompts' responses. Refused, rather than one tree over two prompts."""
    actor = TempoPPOActor(actor_config(), engine=None)
    trajs = trajectories()
    lost = trajs[:2] + trajs[3:] + trajs[3:4]  # row 2 lost; a sixth row so the batch is still 2 x 3
    with pytest.raises(ValueError, match=r"row 2 should be in the group of rows 0\.\.2 .* prompt differs"):
        actor.compute_advantages(lost)
    advantages(actor, trajs)  # whole groups pass


def test_a_row_without_loss_tokens_does_not_misread_its_group():
    """A trajectory with no loss token (nothing to train on) has no response start of its own: its
    group is read from the group's other rows, and the batch is accepted."""
    actor = TempoPPOActor(actor_config(), engine=None)
    for row in (0, 4):  # the group's first row, and a later one
        trajs = trajectories()
        trajs[row] = {**trajs[row], "loss_mask": torch.zeros_like(trajs[row]["loss_mask"])}
        got = advantages(actor, trajs)
        assert all(torch.isfinite(a).all() for a in got)
