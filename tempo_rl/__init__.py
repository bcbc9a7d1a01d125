"""tempo-rl: TEMPO (Tree-Estimated Mean Prefix Value) advantages for RL on LLMs.

    import tempo_rl
    adv = tempo_rl.tempo_advantages(responses, response_mask, rewards, group_ids)  # (B, L)

See README.md and proofs_notes/ for the definition and its properties.
"""

from .api import BACKENDS, available_backends, grpo_advantages, tempo_advantages, tree_stats
from .policy_loss import fused_policy_loss

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "__version__",
    "available_backends",
    "fused_policy_loss",
    "grpo_advantages",
    "tempo_advantages",
    "tree_stats",
]
