"""TEMPO inside an installed OpenRLHF: `TempoExperienceMaker.compute_advantages_and_returns` on
experiences built as OpenRLHF's vLLM sample generator builds them and batched by its own
`split_rollout_samples`, compared with OpenRLHF's `group_norm` and with `tempo_rl.tempo_advantages`."""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import types

import pytest
import torch

from tests.integrations.conftest import require

# flash-attn's CUDA kernels cannot be built on CPU; its Triton backend lets OpenRLHF's modules import.
os.environ.setdefault("FLASH_ATTENTION_TRITON_AMD_ENABLE", "TRUE")
require("openrlhf")

from openrlhf.trainer.ppo_utils.experience import Experience  # noqa: E402
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker  # noqa: E402
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController  # noqa: E402
from openrlhf.utils.config import hierarchize  # noqa: E402

import tempo_rl  # noqa: E402
from tempo_rl.integrations import openrlhf as tempo_openrlhf  # noqa: E402
from tempo_rl.integrations.openrlhf import TempoExperienceMaker, split_argv, step_options  # noqa: E402

# Two prompts of different lengths, three samples each, in rollout order (OpenRLHF's groups are
# consecutive: index // n_samples_per_prompt).
PROMPTS = [[11, 12, 13], [11, 12, 13], [11, 12, 13], [21], [21], [21]]
RESPONSES = [[5, 6, 7, 2], [5, 6, 8, 2], [5, 2], [9, 2], [9, 3, 3, 2], [9, 3, 2]]
REWARDS = [1.0, 0.0, 0.25, 0.5, 2.0, -1.0]
N = 3
EPS = 4 * torch.finfo(torch.float32).eps


def sample(i: int, tool_output: int | None = None) -> Experience:
    """One sample as OpenRLHF's `_process_response_into_experience` builds it: the action mask is
    over `sequences[1:]`; `tool_output` marks a response token as environment output."""
    seq = PROMPTS[i] + RESPONSES[i]
    action = torch.zeros(len(seq), dtype=torch.long)
    action[len(PROMPTS[i]) :] = 1
    if tool_output is not None:
        action[len(PROMPTS[i]) + tool_output] = 0
    return Experience(
        sequences=torch.tensor([seq]),
        attention_mask=torch.ones(1, len(seq), dtype=torch.long),
        action_mask=action[1:].unsqueeze(0),
        rewards=torch.tensor([REWARDS[i]]),
        response_length=torch.tensor([len(RESPONSES[i])]),
        info={},
    )


def openrlhf_args(**overrides) -> types.SimpleNamespace:
    flat = {
        "algo.advantage.estimator": "group_norm",
        "algo.advantage.no_std_norm": False,
        "algo.advantage.gamma": 1.0,
        "algo.kl.use_loss": False,
        "rollout.n_samples_per_prompt": N,
        "rollout.micro_batch_size": 4,  # micro-batches cut across the groups: 4 + 2 samples
        "train.dynamic_batch_enable": False,
        "reward.clip_range": (-10.0, 10.0),
        "reward.overlong_buffer_len": None,
        "reward.stop_properly_penalty_coef": None,
    }
    flat.update(overrides)
    return hierarchize(argparse.Namespace(**flat))


def make(cls, kl_coef: float = 0.0, tempo_options=None, **overrides) -> RemoteExperienceMaker:
    strategy = types.SimpleNamespace(args=openrlhf_args(**overrides))
    kwargs = {} if cls is RemoteExperienceMaker else {"tempo_options": tempo_options}
    return cls(
        None, None, None, None, FixedKLController(kl_coef), strategy, types.SimpleNamespace(pad_token_id=0), **kwargs
    )


def experiences(maker: RemoteExperienceMaker, kl: float = 0.0, tool_output: tuple[int, int] | None = None):
    samples = [sample(i, tool_output[1] if tool_output and tool_output[0] == i else None) for i in range(len(PROMPTS))]
    batches = maker.split_rollout_samples(samples)  # OpenRLHF's concatenation (right-padded) and index
    for b in batches:
        b.kl = torch.full(b.action_mask.shape, kl) * b.action_mask
    return batches


def per_sample(batches, field: str = "advantages") -> list[torch.Tensor]:
    """Each sample's values at its response tokens, in rollout order."""
    out: dict[int, torch.Tensor] = {}
    for b in batches:
        for row, i in enumerate(b.index):
            start = len(PROMPTS[i]) - 1
            out[i] = getattr(b, field)[row, start : start + len(RESPONSES[i])]
    return [out[i] for i in range(len(PROMPTS))]


def tree_inputs():
    width = max(map(len, RESPONSES))
    responses = torch.tensor([r + [0] * (width - len(r)) for r in RESPONSES])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in RESPONSES])[:, None]).long()
    return responses, mask, torch.tensor(REWARDS), [i // N for i in range(len(RESPONSES))]


@pytest.mark.parametrize("no_std_norm,td_coef", [(False, 1.0), (True, 0.5)])
def test_advantages_equal_the_api(no_std_norm, td_coef):
    maker = make(TempoExperienceMaker, tempo_options=None, **{"algo.advantage.no_std_norm": no_std_norm})
    maker.tempo_options = step_options({"td_coef": td_coef}, norm_by_std=not no_std_norm)
    batches = maker.compute_advantages_and_returns(experiences(maker))
    want = tempo_rl.tempo_advantages(*tree_inputs(), norm_by_std=not no_std_norm, eps=1e-9, td_coef=td_coef)
    for i, got in enumerate(per_sample(batches)):
        assert torch.equal(got, want[i, : len(RESPONSES[i])])
    assert all(b.advantages.dtype == b.rewards.dtype == torch.float32 for b in batches)
    assert all(b.advantages.shape == b.action_mask.shape for b in batches)
    stats = tempo_rl.tree_stats(*tree_inputs()[:2], tree_inputs()[3])
    assert batches[0].info["tempo/nodes_per_group"][0] == stats.nodes_per_group


@pytest.mark.parametrize("kl", [0.0, 0.05])
def test_non_branch_tokens_are_grpo(kl):
    """Where no group branches, TEMPO's advantage is GRPO's (TEMPO with td_coef 0) bit for bit;
    OpenRLHF's own group_norm (with its KL reward) agrees to float32 rounding."""
    tempo_maker = make(TempoExperienceMaker, kl_coef=1.0)
    tempo = per_sample(tempo_maker.compute_advantages_and_returns(experiences(tempo_maker, kl)))
    grpo_maker = make(TempoExperienceMaker, kl_coef=1.0, tempo_options=step_options({"td_coef": 0.0}))
    grpo = per_sample(grpo_maker.compute_advantages_and_returns(experiences(grpo_maker, kl)))
    own_maker = make(RemoteExperienceMaker, kl_coef=1.0)
    own = per_sample(own_maker.compute_advantages_and_returns(experiences(own_maker, kl)))
    args = tree_inputs()
    branch = tempo_rl.tempo_advantages(*args, eps=1e-9) != tempo_rl.tempo_advantages(*args, eps=1e-9, td_coef=0.0)
    changed = 0
    for i, (t, g, o) in enumerate(zip(tempo, grpo, own)):
        off = ~branch[i, : len(RESPONSES[i])]
        assert torch.equal(t[off], g[off])
        changed += int((t != g).sum())
        torch.testing.assert_close(g, o, rtol=0, atol=EPS)
    assert changed > 0


def test_environment_output_stays_in_the_tree_with_zero_advantage():
    maker = make(TempoExperienceMaker)
    batches = maker.compute_advantages_and_returns(experiences(maker, tool_output=(4, 1)))
    responses, mask, rewards, groups = tree_inputs()
    loss = mask.clone()
    loss[4, 1] = 0
    want = tempo_rl.tempo_advantages(responses, mask, rewards, groups, loss_mask=loss, eps=1e-9)
    for i, got in enumerate(per_sample(batches)):
        assert torch.equal(got, want[i, : len(RESPONSES[i])])
    assert per_sample(batches)[4][1] == 0


def test_prompt_and_padding_get_zero():
    maker = make(TempoExperienceMaker)
    for b in maker.compute_advantages_and_returns(experiences(maker)):
        assert torch.equal(b.advantages * (1 - b.action_mask), torch.zeros_like(b.advantages))


def test_launcher_arguments():
    rest, options = split_argv(
        ["--actor.model_name_or_path", "m", "--algo.advantage.estimator", "tempo", "--tempo.td_coef", "0.5"]
    )
    assert rest == ["--actor.model_name_or_path", "m", "--algo.advantage.estimator", "group_norm"]
    assert options["td_coef"] == 0.5 and options["eps"] == 1e-9
    rest, options = split_argv(["--algo.advantage.estimator", "rloo"])
    assert rest == ["--algo.advantage.estimator", "rloo"] and options == {}


def test_setup_hook_swaps_the_trainers_experience_maker(monkeypatch):
    import openrlhf.trainer.ppo_trainer as ppo_trainer

    monkeypatch.setattr(ppo_trainer, "RemoteExperienceMaker", RemoteExperienceMaker)
    monkeypatch.delenv(tempo_openrlhf.OPTIONS_ENV, raising=False)
    tempo_openrlhf.install()
    assert ppo_trainer.RemoteExperienceMaker is RemoteExperienceMaker  # TEMPO off: OpenRLHF's own
    monkeypatch.setenv(tempo_openrlhf.OPTIONS_ENV, '{"td_coef": 0.5}')
    tempo_openrlhf.install()
    assert ppo_trainer.RemoteExperienceMaker is TempoExperienceMaker
    assert step_options().td_coef == 0.5


def test_example_script_arguments_parse_with_openrlhfs_cli():
    """examples/openrlhf_tempo_grpo.sh: its arguments, less TEMPO's, parse with OpenRLHF's own parser."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "openrlhf_tempo_grpo.sh"
    out = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env={**os.environ, "DRY_RUN": "1"}, check=True
    )
    rest, options = split_argv(out.stdout.split())
    assert options["td_coef"] == 1.0
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['train_ppo_ray', '--help']\n"
        "try:\n    runpy.run_module('openrlhf.cli.train_ppo_ray', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
    )
    help_text = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300).stdout
    for arg in rest:
        if arg.startswith("--"):
            assert arg in help_text, arg


def test_missing_engine_is_a_one_line_error():
    probe = (
        "import sys; sys.modules['openrlhf'] = None\n"
        "try:\n    import tempo_rl.integrations.openrlhf\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") == 0 and "openrlhf" in out and "pip install -e '.[openrlhf]'" in out


def test_copy_of_batches_is_untouched_by_openrlhfs_own_maker():
    """Sanity: OpenRLHF's group_norm maker runs on these batches (the comparison above is meaningful)."""
    maker = make(RemoteExperienceMaker)
    batches = experiences(maker)
    out = maker.compute_advantages_and_returns(copy.deepcopy(batches))
    assert all(torch.isfinite(b.advantages).all() for b in out)
