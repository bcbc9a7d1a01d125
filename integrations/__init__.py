"""TEMPO inside other RL engines, one line to switch on.

- `tempo_rl.integrations.trl`: `TempoGRPOTrainer`, a drop-in `trl.GRPOTrainer` (TRL 1.x) that
  trains on TEMPO's (B, L) token advantages instead of GRPO's per-sequence ones.
- `tempo_rl.integrations.trl_vllm`: `tree_rollout_func`, a TRL `rollout_func` that samples each
  group as a prefix tree through vLLM (TRL's colocated engine or one given).
- `tempo_rl.integrations.verl`: the `tempo` advantage estimator for verl, registered through
  verl's `verl.plugins` entry point, with `tempo_*` v1 trainer modes that hand it the response
  token ids.
- `tempo_rl.integrations.openrlhf`: `TempoExperienceMaker` for OpenRLHF 0.11.x and the launcher
  `python -m tempo_rl.integrations.openrlhf` (`--algo.advantage.estimator tempo`).
- `tempo_rl.integrations.skyrl`: the `tempo` advantage estimator and `TempoRayPPOTrainer` for
  skyrl-train 0.3.x, launched with `python -m tempo_rl.integrations.skyrl`.
- `tempo_rl.integrations.areal`: `TempoPPOActor` and `TempoPPOTrainer` for AReaL 1.0.x.

None of the engines is a dependency of tempo-rl: each module imports its engine when imported, and
`require_engine` turns a missing engine into a one-line error naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def require_engine(module: str, extra: str) -> ModuleType:
    """Import `module` or raise ImportError naming it and `pip install -e '.[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module
        raise ImportError(
            f"tempo_rl.integrations.{extra} needs {module!r} ({missing!r} is missing): pip install -e '.[{extra}]'"
        ) from None


def config_option(config: Any, key: str, default: Any) -> Any:
    """`config[key]` of an engine's config (a mapping such as OmegaConf's, or an object); `default`
    where the config, the key or its value is missing."""
    if config is None:
        return default
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def tempo_step_options(config: Any, *, norm_by_std: bool, with_metrics: bool = True) -> Any:
    """`tempo_rl.StepOptions` from the `tempo_*` keys of an engine's config (verl's `algorithm`,
    SkyRL's `trainer.algorithm`): tempo_td_coef (1.0), tempo_eps (1e-6), tempo_backend ("auto"),
    tempo_trust_check (False), tempo_trust_groups (4), tempo_log_branch_snr (False); the tree
    statistics and the branch diagnostic only with_metrics."""
    import tempo_rl

    return tempo_rl.StepOptions(
        td_coef=float(config_option(config, "tempo_td_coef", 1.0)),
        norm_by_std=norm_by_std,
        eps=float(config_option(config, "tempo_eps", 1e-6)),
        backend=str(config_option(config, "tempo_backend", "auto")),
        tree_stats=with_metrics,
        trust_check=bool(config_option(config, "tempo_trust_check", False)),
        trust_groups=int(config_option(config, "tempo_trust_groups", 4)),
        log_branch_snr=with_metrics and bool(config_option(config, "tempo_log_branch_snr", False)),
        metrics_prefix="tempo/",
    )
