#!/usr/bin/env bash
# TEMPO in SkyRL (skyrl-train 0.3.x; tested with 0.3.1): SkyRL's GSM8K GRPO recipe with the
# advantage estimator switched to "tempo". Needs SkyRL's GPU environment (vLLM, FSDP2) and data
# prepared with SkyRL's examples/gsm8k/gsm8k_dataset.py into $DATA_DIR.
# DRY_RUN=1 prints the Hydra overrides instead of launching (the tests compose them with SkyRL's config).
set -euo pipefail
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
NUM_GPUS=${NUM_GPUS:-4}

OVERRIDES=(
  "data.train_data=['$DATA_DIR/train.parquet']"
  "data.val_data=['$DATA_DIR/validation.parquet']"
  trainer.algorithm.advantage_estimator=tempo
  +trainer.algorithm.tempo_td_coef=1.0
  trainer.algorithm.grpo_norm_by_std=true
  "trainer.policy.model.path=$MODEL"
  trainer.placement.colocate_all=true
  trainer.strategy=fsdp2
  "trainer.placement.policy_num_gpus_per_node=$NUM_GPUS"
  "trainer.placement.ref_num_gpus_per_node=$NUM_GPUS"
  "generator.num_inference_engines=$NUM_GPUS"
  generator.inference_engine_tensor_parallel_size=1
  generator.n_samples_per_prompt=5
  trainer.train_batch_size=1024
  trainer.policy_mini_batch_size=256
  trainer.micro_forward_batch_size_per_gpu=64
  trainer.micro_train_batch_size_per_gpu=64
  trainer.policy.optimizer_config.lr=1.0e-6
  trainer.algorithm.use_kl_loss=true
  generator.backend=vllm
  generator.batched=true
  environment.env_class=gsm8k
  trainer.logger=tensorboard
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${OVERRIDES[@]}"
  exit 0
fi
exec python -m tempo_rl.integrations.skyrl "${OVERRIDES[@]}" "$@"
