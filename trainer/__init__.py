"""RL trainer for Hugging Face causal LMs using TEMPO / GRPO advantages.

`train.py` holds the loop (`tempo-rl train`), `compare.py` the TEMPO-vs-GRPO study
(`tempo-rl compare`); see the README section "Training with TEMPO".
"""
