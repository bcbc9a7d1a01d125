"""TEMPO inside other RL engines, one line to switch on.

- `tempo_rl.integrations.trl`: `TempoGRPOTrainer`, a drop-in `trl.GRPOTrainer` (TRL 1.x) that
  trains on TEMPO's (B, L) token advantages instead of GRPO's per-sequence ones.
- `tempo_rl.integrations.verl`: the `tempo` advantage estimator for verl, registered through
  verl's `verl.plugins` entry point, with `tempo_*` v1 trainer modes that hand it the response
  token ids.

Neither engine is a dependency of tempo-rl: each module imports its engine when imported.
"""
