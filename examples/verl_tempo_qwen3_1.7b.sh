#!/usr/bin/env bash
# TEMPO in verl, the authors' recipe for Qwen3-1.7B (arXiv 2509.18314): n = 7 responses per prompt,
# lr 1e-6, PPO clip 0.2 / 0.28, responses up to 8192 tokens, no KL term; 512 prompts per step with
# BATCH=512 on your own training set.
#
# Tested with verl 0.9.1 (`pip install 'verl[verl-core]==0.9.1'`); the script stops, naming the version
# found, outside verl >= 0.9.1, < 0.10 (the trainer-mode registry it hooks into is verl 0.9's).
#
#   pip install -e .                     # tempo-rl, from the repository root, into verl's environment
#   bash examples/verl_tempo_qwen3_1.7b.sh [more Hydra overrides]
#
# Two settings make verl use TEMPO:
#   algorithm.adv_estimator=tempo         the estimator, registered through tempo-rl's verl.plugins entry point
#   trainer.v1.trainer_mode=tempo_sync    a v1 trainer mode that hands the response token ids to the estimator
#                                         (verl's estimator interface passes rewards, masks and uids only;
#                                         TEMPO needs the ids to build each group's prefix tree). With verl's
#                                         async modes use tempo_colocate_async / tempo_separate_async.
#
# Everything the run writes (the parquet data, verl's checkpoints and Hydra's outputs/) goes under
# RUN_DIR, by default runs/verl-tempo-qwen3-1.7b in the directory the script is started from.
# Data: TRAIN_FILES / VAL_FILES (verl parquet). By default examples/data/arithmetic.jsonl is converted
# with examples/verl_prepare_data.py into RUN_DIR/data: 44 training rows, so BATCH defaults to 32
# prompts per step (x 7 responses, each of the 4 mini-batches 7 responses per GPU on GPUS=8), which
# checks the pipeline; for the recipe point TRAIN_FILES at a MATH-style
# training set and set BATCH=512. The script refuses a BATCH larger than the training file.
# The reward is compute_score in examples/rewards.py (exact match of the final answer).
# ppo_mini_batch_size (4 updates per step) and the memory settings are this script's choices, not the recipe's.
# DRY_RUN=1 prints the overrides and exits (it needs neither verl nor the data).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

MODEL=${MODEL:-Qwen/Qwen3-1.7B}
GPUS=${GPUS:-8}
BATCH=${BATCH:-32}
RUN_DIR=${RUN_DIR:-runs/verl-tempo-qwen3-1.7b}
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$PWD/$RUN_DIR"  # absolute: verl runs from inside it
DATA_DIR=${DATA_DIR:-$RUN_DIR/data}
TRAIN_FILES=${TRAIN_FILES:-$DATA_DIR/train.parquet}
VAL_FILES=${VAL_FILES:-$DATA_DIR/test.parquet}

ARGS=(
  algorithm.adv_estimator=tempo
  trainer.use_v1=true
  trainer.v1.trainer_mode=tempo_sync
  +algorithm.tempo_td_coef=1.0
  algorithm.norm_adv_by_std_in_grpo=true
  algorithm.use_kl_in_reward=false
  data.train_files="$TRAIN_FILES"
  data.val_files="$VAL_FILES"
  data.train_batch_size="$BATCH"
  data.max_prompt_length=1024
  data.max_response_length=8192
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.ppo_mini_batch_size=$((BATCH / 4))
  actor_rollout_ref.actor.clip_ratio_low=0.2
  actor_rollout_ref.actor.clip_ratio_high=0.28
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.use_kl_loss=false
  actor_rollout_ref.actor.use_dynamic_bsz=true
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=7
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  reward.custom_reward_function.path="$ROOT/examples/rewards.py"
  reward.custom_reward_function.name=compute_score
  trainer.n_gpus_per_node="$GPUS"
  trainer.nnodes=1
  trainer.logger=[console]
  trainer.project_name=tempo-rl
  trainer.experiment_name=qwen3-1.7b-tempo
  trainer.default_local_dir="$RUN_DIR/checkpoints"
  trainer.save_freq=50
  trainer.test_freq=10
)

if (( BATCH < 4 || BATCH % 4 )); then
  echo "verl_tempo_qwen3_1.7b.sh: BATCH=$BATCH must be a multiple of 4 (4 PPO mini-batches per step)" >&2
  exit 2
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${ARGS[@]}" "$@"
  exit 0
fi
python - <<'PY' || exit 2
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    found = version("verl")
except PackageNotFoundError:
    sys.exit("verl_tempo_qwen3_1.7b.sh: verl is not installed: pip install 'verl[verl-core]==0.9.1'")
parts = tuple(int(p) for p in found.split("+")[0].split(".")[:3] if p.isdigit())
if not (0, 9, 1) <= parts < (0, 10):
    sys.exit(f"verl_tempo_qwen3_1.7b.sh: tested with verl >= 0.9.1, < 0.10; found verl {found}")
PY
if [[ ! -f "$TRAIN_FILES" && "$TRAIN_FILES" == "$DATA_DIR/train.parquet" ]]; then
  python "$ROOT/examples/verl_prepare_data.py" "$ROOT/examples/data/arithmetic.jsonl" "$DATA_DIR"
fi
python - "$TRAIN_FILES" "$BATCH" <<'PY' || exit 2
import sys

import pyarrow.parquet as pq

path, batch = sys.argv[1], int(sys.argv[2])
rows = pq.ParquetFile(path).metadata.num_rows
if batch > rows:
    sys.exit(f"verl_tempo_qwen3_1.7b.sh: BATCH={batch} prompts per step, but {path} has {rows} rows")
PY
mkdir -p "$RUN_DIR" && cd "$RUN_DIR"  # verl's checkpoints and Hydra's outputs/ land here, not in the repository
exec python -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
