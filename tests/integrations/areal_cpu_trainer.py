"""examples/areal_tempo_grpo.yaml started on CPU as far as it goes without an inference server:
AReaL's own trainer (`TempoPPOTrainer`, single-controller, `scheduler.type: local`) spawns its actor
worker, builds TEMPO's FSDP actor there on CPU (gloo, `actor.attn_impl=sdpa`, a tiny random model),
and stops where it would start the SGLang rollout servers. The actor worker then computes a batch's
advantages through AReaL's controller.

Run by tests/integrations/test_areal.py: `python areal_cpu_trainer.py WORKDIR`; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from areal.api.cli_args import load_expr_config
from areal.infra.rpc.rtensor import RTensor
from datasets import Dataset

from tempo_rl.integrations.areal import TempoGRPOConfig, TempoPPOTrainer
from tests.integrations import tiny

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "areal_tempo_grpo.yaml"
GROUP = 3


class RolloutNeedsAServer(Exception):
    """Raised where AReaL's trainer starts its SGLang / vLLM rollout servers (GPU only)."""

    def __init__(self, trainer: TempoPPOTrainer):
        super().__init__("rollout servers")
        self.trainer = trainer


class UpToRollout(TempoPPOTrainer):
    def _init_rollout(self, *args, **kwargs):
        raise RolloutNeedsAServer(self)


def cpu_overrides(work: Path, model: Path) -> list[str]:
    """The example's overrides for one CPU process (docs/engines/areal.md)."""
    return [
        f"actor.path={model}",
        "actor.dtype=float32",
        "actor.attn_impl=sdpa",
        "actor.backend=fsdp:d1",
        "rollout.backend=sglang:d1",
        "cluster.n_gpus_per_node=1",
        f"cluster.fileroot={work / 'areal'}",
        f"cluster.name_resolve.nfs_record_root={work / 'name_resolve'}",
        f"gconfig.n_samples={GROUP}",
        "train_dataset.batch_size=2",
    ]


def batch() -> list[dict[str, torch.Tensor]]:
    """Two prompts x GROUP responses, laid out as AReaL's RLVR workflow returns them."""
    rows = [
        ([2, 3], [4, 5, 1]),
        ([2, 3], [4, 2, 1]),
        ([2, 3], [5, 1]),
        ([3], [2, 1]),
        ([3], [2, 4, 4, 1]),
        ([3], [2, 4, 1]),
    ]
    rewards = [1.0, 0.0, 0.25, 0.5, 2.0, -1.0]
    out = []
    for (prompt, response), reward in zip(rows, rewards):
        seq = prompt + response
        loss = [0] * len(prompt) + [1] * len(response)
        out.append(
            {
                "input_ids": torch.tensor([seq], dtype=torch.int32),
                "loss_mask": torch.tensor([loss], dtype=torch.int32),
                "logprobs": torch.zeros(1, len(seq)),
                "versions": torch.zeros(1, len(seq), dtype=torch.int32),
                "attention_mask": torch.ones(1, len(seq), dtype=torch.bool),
                "rewards": torch.tensor([reward]),
            }
        )
    return out


def main(work: Path) -> None:
    model = work / "model"
    tiny.build_tokenizer(model)
    tiny.save_model(model)
    config, _ = load_expr_config(["--config", str(EXAMPLE), *cpu_overrides(work, model)], TempoGRPOConfig)
    dataset = Dataset.from_dict({"messages": [[{"role": "user", "content": "a b c"}]] * 4, "answer": ["a"] * 4})
    try:
        UpToRollout(config, train_dataset=dataset)
        raise AssertionError("the trainer was built without rollout servers")
    except RolloutNeedsAServer as stop:
        trainer = stop.trainer
    try:
        engine = f"{trainer.actor.train_engine.__module__}.{trainer.actor.train_engine.__name__}"
        # group_size keeps each prompt's rows together when AReaL's controller dispatches the batch.
        advantages = RTensor.localize(trainer.actor.compute_advantages(batch(), group_size=GROUP))
        torch.save(advantages, work / "advantages.pt")
        print(json.dumps({"engine": engine, "workers": len(trainer.actor.workers)}))
    finally:
        trainer.actor.destroy()
        trainer.scheduler.delete_workers(None)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
