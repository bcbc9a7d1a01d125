"""A verl plug-in for test_verl_cpu.py: the trainer mode "tempo_capture_sync", verl's `tempo_sync`
that saves, at each step, the rows the actor is about to train on (token ids, masks, rewards, uids
and the advantages verl hands to the loss) to `$TEMPO_CAPTURE_DIR/step_<k>.pt`.

Loaded in every verl process through `VERL_USE_EXTERNAL_MODULES`, after tempo_rl.integrations.verl_cpu.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from verl.trainer.ppo.v1 import get_trainer_cls, trainer_base

import tempo_rl.integrations.verl  # noqa: F401  (registers tempo_sync; verl loads entry points after these modules)

FIELDS = ["uid", "responses", "response_mask", "rm_scores", "advantages"]


def _rows(value) -> list:
    """One entry per row: nested (ragged) tensors are unbound, plain ones split."""
    if isinstance(value, torch.Tensor):
        return [t.clone() for t in value.unbind(0)]
    return list(value)


class CaptureSyncTrainer(get_trainer_cls("tempo_sync")):  # type: ignore[misc]
    """verl's tempo_sync trainer, saving what `_update_actor` trains on."""

    def _update_actor(self, batch, metrics):
        data = trainer_base.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=FIELDS)
        step = len(list(Path(os.environ["TEMPO_CAPTURE_DIR"]).glob("step_*.pt"))) + 1
        rows = {name: _rows(data[name]) for name in FIELDS}
        torch.save(rows, Path(os.environ["TEMPO_CAPTURE_DIR"]) / f"step_{step}.pt")
        return super()._update_actor(batch, metrics)


trainer_base.register_trainer("tempo_capture_sync")(CaptureSyncTrainer)
