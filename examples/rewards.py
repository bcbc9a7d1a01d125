"""Reward functions for the examples, in TRL's form: `fn(prompts, completions, **columns) -> list[float]`.

The same module serves all three ways in:

    tempo-rl train --reward examples/rewards.py:correct examples/rewards.py:boxed --reward-weights 1 0.1
    TempoGRPOTrainer(reward_funcs=[correct, boxed], ...)         # examples/trl_tempo_grpo.py
    verl: custom_reward_function.path=examples/rewards.py ...    # examples/verl_tempo_qwen3_1.7b.sh

`answer` is the dataset column of that name, passed by keyword as TRL does; TRL's conversational
completions (lists of messages) are read through their last message.
"""

from __future__ import annotations

from tempo_rl.trainer.rewards import numeric_match


def _text(completion) -> str:
    if isinstance(completion, list):  # TRL conversational format: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"] if completion else ""
    return completion


def correct(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the final answer (the last \\boxed{}, else the last number) equals `answer` exactly
    as a rational number, else 0.0."""
    return [numeric_match(_text(c), str(a)) for c, a in zip(completions, answer)]


def boxed(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion puts an answer in \\boxed{...}, as the prompts ask."""
    return [float("\\boxed{" in _text(c)) for c in completions]


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """verl's custom reward signature (`custom_reward_function.name=compute_score`): the same check."""
    return numeric_match(solution_str, str(ground_truth))
