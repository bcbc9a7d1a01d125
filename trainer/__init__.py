"""RL trainer for Hugging Face causal LMs using TEMPO / GRPO advantages."""
