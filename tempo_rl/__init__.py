"""tempo-rl: TEMPO (Tree-Estimated Mean Prefix Value) advantages for RL on LLMs.

    import tempo_rl
    adv = tempo_rl.tempo_advantages(responses, response_mask, rewards, group_ids)  # (B, L)

See README.md and proofs_notes/ for the definition and its properties.
"""

from ._validate import Batch, validate
from .api import grpo_advantages, stats_from_table, tempo_advantages, tempo_advantages_with_stats, tree_stats
from .backends import BACKENDS, available_backends, get_backend, resolve_backend
from .policy_loss import fused_policy_loss
from .prefix_values import PrefixValues, branch_snr_stats, predicted_snr_ratio, prefix_values
from .reference.stats import GroupTreeStats, TreeStats
from .step import StepOptions, StepResult, advantage_step
from .tree_forward import tree_logprobs, tree_logprobs_and_entropy, tree_policy_loss, tree_scores
from .trust import AdvantageMismatch, TrustReport, check_against_reference

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AdvantageMismatch",
    "Batch",
    "GroupTreeStats",
    "PrefixValues",
    "StepOptions",
    "StepResult",
    "TreeStats",
    "TrustReport",
    "__version__",
    "advantage_step",
    "available_backends",
    "branch_snr_stats",
    "check_against_reference",
    "fused_policy_loss",
    "get_backend",
    "grpo_advantages",
    "predicted_snr_ratio",
    "prefix_values",
    "resolve_backend",
    "stats_from_table",
    "tempo_advantages",
    "tempo_advantages_with_stats",
    "tree_logprobs",
    "tree_logprobs_and_entropy",
    "tree_policy_loss",
    "tree_scores",
    "tree_stats",
    "validate",
]
