"""`tempo_rl.advantage_step`: every option of `StepOptions` reaches every engine that calls it.

The trainer, the TRL trainer, the verl, SkyRL, AReaL and OpenRLHF integrations and
`tempo-rl bench --scale` build their `StepOptions` from their own configuration. The integration
modules are imported here against minimal stand-ins for the engines (their own tests, in
tests/integrations, run them for real), so their engine-free code paths run in this suite.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import sys
import types
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import tempo_rl
from tempo_rl import StepOptions, advantage_step
from tempo_rl.trainer import train as train_mod
from tempo_rl.trainer.config import TrainConfig
from tempo_rl.trainer.rollout import Rollout

RESPONSES = torch.tensor([[5, 6, 7, 0], [5, 6, 8, 9], [5, 9, 0, 0], [4, 4, 0, 0], [4, 4, 1, 0], [4, 2, 2, 2]])
LENGTHS = torch.tensor([3, 4, 2, 2, 3, 4])
MASK = (torch.arange(4)[None, :] < LENGTHS[:, None]).long()
REWARDS = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])

# A value other than the default for every option: a new option must be added here, and so to
# every caller below.
OTHER = dict(
    estimator="grpo",
    td_coef=0.5,
    norm_by_std=False,
    eps=1e-3,
    backend="torch",
    tree_stats=False,
    trust_check=True,
    trust_groups=2,
    trust_atol=1e-4,
    trust_seed=7,
    log_branch_snr=True,
    metrics_prefix="x/",
)


def test_every_option_is_covered():
    assert set(OTHER) == {f.name for f in dataclasses.fields(StepOptions)}


# ----------------------------------------------------------------------------- the stand-in engines
@pytest.fixture
def trl(monkeypatch):
    @dataclass
    class GRPOConfig:
        scale_rewards: str = "group"
        multi_objective_aggregation: str = "sum_then_normalize"

    engine = types.ModuleType("trl")
    engine.GRPOConfig, engine.GRPOTrainer = GRPOConfig, type("GRPOTrainer", (), {})
    utils = types.ModuleType("accelerate.utils")
    utils.gather = lambda x: x
    utils.DistributedType = enum.Enum("DistributedType", {"NO": "NO", "MULTI_CPU": "MULTI_CPU", "FSDP": "FSDP"})
    for name, module in {
        "trl": engine,
        "accelerate": types.ModuleType("accelerate"),
        "accelerate.utils": utils,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield _fresh_import(monkeypatch, "tempo_rl.integrations.trl")
    sys.modules.pop("tempo_rl.integrations.trl", None)


@pytest.fixture
def verl(monkeypatch):
    algos = types.ModuleType("verl.trainer.ppo.core_algos")
    algos.register_adv_est = lambda name: lambda fn: fn
    for name in ("verl", "verl.trainer", "verl.trainer.ppo"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", algos)
    sys.modules["verl.trainer.ppo"].core_algos = algos  # type: ignore[attr-defined]
    yield _fresh_import(monkeypatch, "tempo_rl.integrations.verl")
    sys.modules.pop("tempo_rl.integrations.verl", None)


def _stand_ins(monkeypatch, modules: dict[str, dict]) -> None:
    """Put modules named `modules` (with the given attributes) in sys.modules, parents first."""
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def skyrl(monkeypatch):
    def register(name):
        return lambda fn: fn

    ray = {"remote": lambda *a, **k: lambda fn: fn}
    _stand_ins(
        monkeypatch,
        {
            "ray": ray,
            "skyrl_train": {},
            "skyrl_train.trainer": {"RayPPOTrainer": type("RayPPOTrainer", (), {})},
            "skyrl_train.entrypoints": {},
            "skyrl_train.entrypoints.main_base": {"BasePPOExp": type("BasePPOExp", (), {}), "config_dir": "."},
            "skyrl_train.utils": {},
            "skyrl_train.utils.ppo_utils": {"register_advantage_estimator": register},
        },
    )
    yield _fresh_import(monkeypatch, "tempo_rl.integrations.skyrl")
    sys.modules.pop("tempo_rl.integrations.skyrl", None)


@pytest.fixture
def areal(monkeypatch):
    @dataclass
    class PPOActorConfig:
        reward_norm: object = None

    @dataclass
    class GRPOConfig:
        actor: PPOActorConfig = dataclasses.field(default_factory=PPOActorConfig)

    _stand_ins(
        monkeypatch,
        {
            "areal": {},
            "areal.api": {},
            "areal.api.cli_args": {"GRPOConfig": GRPOConfig, "PPOActorConfig": PPOActorConfig},
            "areal.trainer": {},
            "areal.trainer.ppo": {},
            "areal.trainer.ppo.actor": {"PPOActor": type("PPOActor", (), {})},
            "areal.trainer.rl_trainer": {"PPOTrainer": type("PPOTrainer", (), {})},
            "areal.utils": {"stats_tracker": types.SimpleNamespace(scalar=lambda **kw: None)},
            "areal.utils.environ": {"is_single_controller": lambda: False},
        },
    )
    yield _fresh_import(monkeypatch, "tempo_rl.integrations.areal")
    sys.modules.pop("tempo_rl.integrations.areal", None)


@pytest.fixture
def openrlhf(monkeypatch):
    _stand_ins(
        monkeypatch,
        {
            "openrlhf": {},
            "openrlhf.models": {},
            "openrlhf.models.utils": {"compute_reward": None},
            "openrlhf.trainer": {},
            "openrlhf.trainer.ppo_utils": {},
            "openrlhf.trainer.ppo_utils.experience": {"Experience": object},
            "openrlhf.trainer.ppo_utils.experience_maker": {
                "RemoteExperienceMaker": type("RemoteExperienceMaker", (), {})
            },
            "openrlhf.trainer.ppo_utils.length_penalty": {"apply_length_penalties": None},
        },
    )
    yield _fresh_import(monkeypatch, "tempo_rl.integrations.openrlhf")
    sys.modules.pop("tempo_rl.integrations.openrlhf", None)


def _fresh_import(monkeypatch, name: str):
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


# ----------------------------------------------------------------------------- each caller's options
def trainer_options(o: StepOptions) -> StepOptions:
    estimator = "tempo" if o.estimator == "tempo" else ("grpo" if o.norm_by_std else "dr_grpo")
    cfg = TrainConfig(
        estimator=estimator,
        td_coef=o.td_coef,
        backend=o.backend,
        trust_groups=o.trust_groups,
        trust_atol=o.trust_atol,
        seed=3,
    )
    return train_mod.step_options(cfg, step=o.trust_seed - 3, trust=o.trust_check)


def tempo_keys(o: StepOptions) -> dict:
    """The `tempo_*` keys TRL, verl and SkyRL read, as each engine's config names them."""
    return {
        "tempo_td_coef": o.td_coef,
        "tempo_eps": o.eps,
        "tempo_backend": o.backend,
        "tempo_trust_check": o.trust_check,
        "tempo_trust_groups": o.trust_groups,
        "tempo_log_branch_snr": o.log_branch_snr,
    }


def trl_options(module, o: StepOptions) -> StepOptions:
    args = types.SimpleNamespace(
        scale_rewards="group" if o.norm_by_std else "none", tempo_log_tree_stats=o.tree_stats, **tempo_keys(o)
    )
    return module.step_options(args)


def verl_options(module, o: StepOptions) -> StepOptions:
    config = {"norm_adv_by_std_in_grpo": o.norm_by_std, **tempo_keys(o)}
    return module.step_options(config, with_metrics=o.tree_stats)


def skyrl_options(module, o: StepOptions) -> StepOptions:
    return module.step_options(tempo_keys(o), o.norm_by_std, with_metrics=o.tree_stats)


def areal_options(module, o: StepOptions) -> StepOptions:
    norm = types.SimpleNamespace(
        mean_level="group",
        std_level="group" if o.norm_by_std else None,
        mean_leave1out=False,
        std_unbiased=True,
        eps=o.eps,
    )
    config = types.SimpleNamespace(
        reward_norm=norm,
        tempo_td_coef=o.td_coef,
        tempo_backend=o.backend,
        tempo_trust_check=o.trust_check,
        tempo_trust_groups=o.trust_groups,
        tempo_log_branch_snr=o.log_branch_snr,
    )
    return module.step_options(config)


def openrlhf_options(module, o: StepOptions) -> StepOptions:
    options = {
        "td_coef": o.td_coef,
        "eps": o.eps,
        "backend": o.backend,
        "trust_check": o.trust_check,
        "trust_groups": o.trust_groups,
        "log_branch_snr": o.log_branch_snr,
    }
    return module.step_options(options, norm_by_std=o.norm_by_std)


# What each engine fixes itself rather than exposing: the value it always uses.
ENGINE_FIXED = dict(estimator="tempo", trust_atol=1e-5, trust_seed=0, metrics_prefix="tempo/")
FIXED = {
    "trainer": dict(eps=1e-6, tree_stats=True, log_branch_snr=True, metrics_prefix=""),
    "trl": ENGINE_FIXED,
    "verl": ENGINE_FIXED,
    "skyrl": ENGINE_FIXED,
    "areal": dict(ENGINE_FIXED, tree_stats=True),
    "openrlhf": dict(ENGINE_FIXED, tree_stats=True),
}


@pytest.mark.parametrize("caller", sorted(FIXED))
@pytest.mark.parametrize("option", sorted(OTHER))
def test_each_option_reaches_each_caller(caller, option, request):
    engine = request.getfixturevalue(caller) if caller != "trainer" else None
    build = {
        "trainer": trainer_options,
        "trl": lambda o: trl_options(engine, o),
        "verl": lambda o: verl_options(engine, o),
        "skyrl": lambda o: skyrl_options(engine, o),
        "areal": lambda o: areal_options(engine, o),
        "openrlhf": lambda o: openrlhf_options(engine, o),
    }[caller]
    base = StepOptions(**FIXED[caller])
    if caller == "trainer":
        base = dataclasses.replace(base, estimator="grpo", trust_seed=3)  # Dr. GRPO is the trainer's grpo
    if option in FIXED[caller]:
        assert getattr(build(base), option) == FIXED[caller][option]
        return
    value = OTHER[option] if getattr(base, option) != OTHER[option] else StepOptions().__getattribute__(option)
    wanted = dataclasses.replace(base, **{option: value})
    assert build(wanted) == wanted


# ----------------------------------------------------------------------------- each caller end to end
def _direct(options: StepOptions, scored=None):
    return advantage_step(RESPONSES, MASK, REWARDS, GROUPS, scored=scored, options=options)


def _assert_same(got_adv, got_metrics, want):
    assert torch.equal(got_adv, want.advantages)
    assert got_metrics == want.metrics


ALL_ON = dict(td_coef=0.5, backend="torch", trust_check=True, trust_groups=2, log_branch_snr=True)


def test_trainer_step_is_advantage_step():
    cfg = TrainConfig(td_coef=0.5, backend="torch", trust_groups=2)
    roll = Rollout(RESPONSES[:, :1], torch.ones(6, 1, dtype=torch.long), RESPONSES, MASK, GROUPS, [""] * 6)
    got = train_mod.compute_advantages(roll, REWARDS, cfg, step=0, trust=True)
    want = _direct(train_mod.step_options(cfg, step=0, trust=True))
    assert got.trust is not None and got.trust.groups_checked == 2
    _assert_same(got.advantages, got.metrics, want)
    assert {"branch_nodes", "nodes_per_group"} <= set(got.metrics)


def test_trl_step_is_advantage_step(trl):
    ids = [row[:n] for row, n in zip(RESPONSES.tolist(), LENGTHS.tolist())]
    options = StepOptions(eps=1e-4, **ALL_ON)
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        num_generations=3,
        num_generations_eval=3,
        accelerator=types.SimpleNamespace(num_processes=1, process_index=0),
        reward_weights=torch.ones(1),
        scale_rewards="group",
        tempo_options=options,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _logs={"advantages": deque(maxlen=64)},
    )
    fake._log_tempo = types.MethodType(trl.TempoGRPOTrainer._log_tempo, fake)
    adv = trl.TempoGRPOTrainer._tempo_advantages(fake, {"completion_ids": RESPONSES}, ids, REWARDS[:, None])
    logged = {k: v[0] for k, v in fake._metrics["train"].items()}
    _assert_same(adv, logged, _direct(options, scored=torch.ones(6, dtype=torch.bool)))
    assert fake._metrics["train"]["tempo/td_coef"] == [0.5]


def test_trl_leaves_unscored_rows_out_of_the_statistics(trl):
    rewards = REWARDS[:, None].clone()
    rewards[5] = float("nan")  # no reward function scored the last completion
    total, group_ids = trl._rewards_and_groups(rewards, torch.ones(1), 3)
    assert group_ids.tolist() == [0, 0, 0, 1, 1, -6]
    result = advantage_step(RESPONSES, MASK, total, group_ids, scored=group_ids >= 0, options=StepOptions())
    assert result.tree is not None and set(result.tree.groups) == {0, 1}
    assert (result.advantages[5] == 0).all()


def test_verl_step_is_advantage_step(verl):
    options = StepOptions(norm_by_std=False, **ALL_ON)
    config = {"norm_adv_by_std_in_grpo": False, "tempo_td_coef": 0.5, "tempo_backend": "torch"}
    config |= {"tempo_trust_check": True, "tempo_trust_groups": 2, "tempo_log_branch_snr": True}
    scores = torch.zeros(6, 4)
    scores[torch.arange(6), LENGTHS - 1] = REWARDS  # verl: the outcome on the last token
    with verl.response_tokens(RESPONSES, LENGTHS) as metrics:
        adv, returns = verl.compute_tempo_outcome_advantage(scores, MASK, np.array(GROUPS.tolist()), config)
    _assert_same(adv, metrics, _direct(options))
    assert torch.equal(adv, returns) and "tempo/branch_nodes" in metrics


# ----------------------------------------------------------------------------- the step itself
def test_grpo_ignores_td_coef_and_equals_grpo_advantages():
    got = _direct(StepOptions(estimator="grpo", td_coef=0.7, backend="reference")).advantages
    want = tempo_rl.grpo_advantages(RESPONSES, MASK, REWARDS, GROUPS, backend="reference")
    assert torch.equal(got, want)


def test_reference_backend_skips_the_trust_check():
    assert _direct(StepOptions(backend="reference", trust_check=True)).trust is None


METRIC_KEYS = {
    "td_coef",
    "branch_token_fraction",
    "nodes_per_group",
    "branch_nodes_per_group",
    "first_branch_depth",
    "mean_branch_depth",
    "max_depth",
}
SNR_KEYS = {"branch_nodes", "branch_inner_nodes", "branch_node_mean_m", "branch_r_unbiased"}
NO_BRANCH = torch.tensor([[5, 6, 0], [5, 6, 0], [7, 0, 0], [7, 0, 0]])  # two groups of identical rows


@pytest.mark.parametrize("snr", [False, True])
@pytest.mark.parametrize("estimator", ["tempo", "grpo"])
def test_metric_keys_are_the_same_every_step_with_and_without_branching(estimator, snr):
    """A dashboard sees every series every step: a batch where nothing branches (depths, mean m and r
    undefined) logs the keys of one that branches, each a finite float (docs/metrics.md lists them)."""
    options = StepOptions(estimator=estimator, backend="torch", log_branch_snr=snr, metrics_prefix="tempo/")
    branching = _direct(options).metrics
    flat = advantage_step(NO_BRANCH, (NO_BRANCH != 0).long(), [1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1], options=options)
    want = {f"tempo/{k}" for k in METRIC_KEYS | (SNR_KEYS if snr else set())}
    assert set(branching) == set(flat.metrics) == want
    assert flat.metrics["tempo/branch_nodes_per_group"] == 0.0 and branching["tempo/branch_nodes_per_group"] > 0
    assert all(isinstance(v, float) and np.isfinite(v) for v in [*branching.values(), *flat.metrics.values()])
    assert branching["tempo/td_coef"] == (1.0 if estimator == "tempo" else 0.0)


def test_metrics_page_documents_every_key():
    """docs/metrics.md names each metric the engines log, with its prefix."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    for key in METRIC_KEYS | SNR_KEYS:
        assert f"`tempo/{key}`" in page, key


def test_tree_stats_off_gives_no_statistics():
    result = _direct(StepOptions(tree_stats=False))
    assert result.tree is None and result.metrics == {}


@pytest.mark.parametrize(
    "field, value",
    [("estimator", "ppo"), ("trust_groups", 0), ("trust_atol", 0.0)],
    ids=["estimator", "groups", "atol"],
)
def test_bad_options_name_the_argument(field, value):
    with pytest.raises(ValueError, match=field):
        StepOptions(**{field: value})


# ----------------------------------------------------------------------------- bench --scale
def test_bench_scale_runs_at_a_tiny_size(tmp_path, trl, capsys):
    from tempo_rl import cli
    from tempo_rl.benchmarks import bench_scale

    args = ["bench", "--scale", "--prompts", "2", "--length", "16", "--repeats", "1", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert "advantage_step" in (tmp_path / "scale_cpu.md").read_text()
    x = bench_scale.make_inputs(2, bench_scale.GROUP, 16)
    rows = bench_scale.part_trl(x, 1, "torch")  # the TRL row, against the stand-in engine
    assert rows["TRL _tempo_advantages (advantages + stats + logging)"]["median_ms"] > 0
