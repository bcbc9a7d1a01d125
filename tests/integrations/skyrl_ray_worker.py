"""The SkyRL integration under Ray, as in every SkyRL run: imported in a process where Ray is up and in
a Ray worker, and the registered "tempo" estimator called inside the worker on a SkyRL batch.

Run by tests/integrations/test_skyrl.py: `python skyrl_ray_worker.py OUT.pt`. The remote function
lives in `__main__`, so Ray copies it by value and the worker imports the integration itself.
"""

from __future__ import annotations

import sys
import types

import ray
import torch

# Two prompts, interleaved, as in test_skyrl.py; the batch goes through SkyRL's own conversion.
PROMPTS = [[11, 12], [11, 12], [13], [11, 12], [13], [13]]
RESPONSES = [[5, 6, 7, 2], [5, 6, 8, 2], [9, 2], [5, 2], [9, 3, 3, 2], [9, 3, 2]]
UIDS = ["p0", "p0", "p1", "p0", "p1", "p1"]
REWARDS = [1.0, 0.0, 0.5, 0.25, 2.0, -1.0]


@ray.remote(num_cpus=1)
def advantages_in_worker(cfg) -> dict:
    """In a fresh Ray worker: import the integration, run SkyRL's advantage step on a SkyRL batch."""
    assert "tempo_rl.integrations.skyrl" not in sys.modules
    from skyrl_train.utils.ppo_utils import AdvantageEstimatorRegistry

    from tempo_rl.integrations.skyrl import TempoRayPPOTrainer

    t = object.__new__(TempoRayPPOTrainer)  # only what advantages need: no workers, no inference engines
    t.cfg, t.all_metrics = cfg, {}
    t.tokenizer = types.SimpleNamespace(pad_token_id=0)
    t.policy_model = types.SimpleNamespace(actor_infos=[types.SimpleNamespace(rank=types.SimpleNamespace(dp_size=1))])
    t.critic_model = t.ref_model = None
    output = {
        "prompt_token_ids": PROMPTS,
        "response_ids": RESPONSES,
        "rewards": [[0.0] * (len(r) - 1) + [x] for r, x in zip(RESPONSES, REWARDS)],
        "loss_masks": [[1] * len(r) for r in RESPONSES],
    }
    data = t.convert_to_training_input(output, UIDS)
    data["values"] = None
    data = t.compute_advantages_and_returns(data)  # SkyRL's method: AdvantageEstimatorRegistry.get("tempo")
    return {
        "advantages": data["advantages"].clone(),
        "metrics": dict(t.all_metrics),
        "registered": AdvantageEstimatorRegistry.list_available(),
    }


def main(out_path: str) -> None:
    from hydra import compose, initialize_config_dir

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        from skyrl_train.entrypoints.main_base import config_dir

        import tempo_rl.integrations.skyrl  # noqa: F401  (registers "tempo" with Ray up: pickles it)

        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name="ppo_base_config", overrides=["trainer.algorithm.advantage_estimator=tempo"])
        torch.save(ray.get(advantages_in_worker.remote(cfg)), out_path)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
