"""TEMPO in AReaL (1.0.x; tested with 1.0.4): AReaL's GSM8K GRPO example with TempoPPOTrainer.

    python examples/areal_tempo_grpo.py --config examples/areal_tempo_grpo.yaml [key=value ...]

A training run needs AReaL's GPU environment: rollouts come from SGLang or vLLM servers. The YAML
sets `scheduler.type: local` (AReaL's trainer spawns its workers itself) and `actor.attn_impl`
(`actor.attn_impl=sdpa` without flash-attn). On CPU the trainer builds TEMPO's FSDP actor and then
needs the rollout servers (docs/engines/areal.md has the CPU overrides). The only changes
from AReaL's own example are the config class (TempoGRPOConfig: the actor carries `tempo_*`
options) and the trainer class (TempoPPOTrainer in place of areal.PPOTrainer).
"""

from __future__ import annotations

import sys

from areal.api.cli_args import load_expr_config
from areal.dataset import get_custom_dataset
from areal.utils.hf_utils import load_hf_tokenizer

from tempo_rl.integrations.areal import TempoGRPOConfig, TempoPPOTrainer


def main(argv: list[str]) -> None:
    config, _ = load_expr_config(argv, TempoGRPOConfig)
    tokenizer = load_hf_tokenizer(config.tokenizer_path)
    train_dataset = get_custom_dataset(split="train", dataset_config=config.train_dataset, tokenizer=tokenizer)
    workflow_kwargs = dict(
        reward_fn="areal.reward.gsm8k.gsm8k_reward_fn",
        gconfig=config.gconfig,
        tokenizer=config.tokenizer_path,
    )
    with TempoPPOTrainer(config, train_dataset=train_dataset) as trainer:
        trainer.train(workflow="areal.workflow.rlvr.RLVRWorkflow", workflow_kwargs=workflow_kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
