"""A reward for test_verl_cpu.py in verl's custom-reward form: the share of the word "a" in the
response, so sampled responses of one prompt score differently and the advantages are not zero."""

from __future__ import annotations


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    words = solution_str.split()
    return sum(w == ground_truth for w in words) / max(len(words), 1)
