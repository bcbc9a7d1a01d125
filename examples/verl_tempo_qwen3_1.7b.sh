#!/usr/bin/env bash
# TEMPO in verl (0.9.x), the authors' recipe for Qwen3-1.7B (arXiv 2509.18314): 512 prompts per step,
# n = 7 responses each, lr 1e-6, PPO clip 0.2 / 0.28, responses up to 8192 tokens, no KL term.
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
# Data: TRAIN_FILES / VAL_FILES (verl parquet). By default the example JSONL is converted with
# examples/verl_prepare_data.py; it has 48 rows, enough to check the pipeline with BATCH=16, not for the
# recipe's 512-prompt batches: point TRAIN_FILES at your own MATH-style training set for that.
# The reward is compute_score in examples/rewards.py (exact match of the final answer).
# ppo_mini_batch_size (4 updates per step) and the memory settings are this script's choices, not the recipe's.
# DRY_RUN=1 prints the overrides and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-Qwen/Qwen3-1.7B}
GPUS=${GPUS:-8}
BATCH=${BATCH:-512}
DATA_DIR=${DATA_DIR:-data/verl-arithmetic}
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
  reward.custom_reward_function.path=examples/rewards.py
  reward.custom_reward_function.name=compute_score
  trainer.n_gpus_per_node="$GPUS"
  trainer.nnodes=1
  trainer.logger=[console]
  trainer.project_name=tempo-rl
  trainer.experiment_name=qwen3-1.7b-tempo
  trainer.save_freq=50
  trainer.test_freq=10
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${ARGS[@]}" "$@"
  exit 0
fi
if [[ ! -f "$TRAIN_FILES" && "$TRAIN_FILES" == "$DATA_DIR/train.parquet" ]]; then
  python examples/verl_prepare_data.py examples/data/arithmetic.jsonl "$DATA_DIR"
fi
exec python -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
