"""RL trainer for Hugging Face causal LMs using TEMPO / GRPO advantages.

`train.py` holds the loop (`tempo-rl train`); the studies that compare estimators with it live
outside the package, in the repository's experiments/ (docs: engines/train.md).
"""
