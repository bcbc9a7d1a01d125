#!/usr/bin/env bash
# TEMPO in OpenRLHF (0.11.x; tested with 0.11.2): OpenRLHF's GRPO recipe (group_norm, KL as a loss)
# with the estimator switched to "tempo". Needs OpenRLHF's GPU environment (Ray, vLLM, DeepSpeed) and
# a prompt dataset with a reward function (--reward.remote_url or an agent function).
# DRY_RUN=1 prints the arguments instead of launching (the tests parse them with OpenRLHF's parser).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
DATA=${DATA:-OpenRLHF/prompt-collection-v0.1}
REWARD=${REWARD:-examples/rewards.py}
SAVE=${SAVE:-./checkpoint/qwen2.5-1.5b-tempo}

ARGS=(
  --actor.model_name_or_path "$MODEL"
  --reward.remote_url "$REWARD"
  --data.prompt_dataset "$DATA"
  --data.input_key context_messages
  --data.apply_chat_template
  --ckpt.output_dir "$SAVE"
  --actor.num_gpus_per_node 8
  --vllm.num_engines 4
  --vllm.tensor_parallel_size 2
  --train.colocate_all
  --rollout.n_samples_per_prompt 8
  --rollout.batch_size 128
  --train.batch_size 1024
  --rollout.max_new_tokens 1024
  --actor.adam.lr 1e-6
  --algo.advantage.estimator tempo
  --tempo.td_coef 1.0
  --algo.kl.use_loss
  --algo.kl.init_coef 0.001
  --algo.kl.estimator k3
  --ds.zero_stage 3
  --ds.param_dtype bf16
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${ARGS[@]}"
  exit 0
fi
exec python -m tempo_rl.integrations.openrlhf "${ARGS[@]}" "$@"
