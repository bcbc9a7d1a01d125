"""Reward functions on tricky answers, and reward functions that fail."""

import logging
import time

import pytest

from tempo_rl.trainer.rewards import (
    choice_match,
    extract_answer,
    last_boxed,
    load_reward,
    numeric_match,
    parse_number,
    safe_reward,
)


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("so the total is \\boxed{1,234}", "1234"),
        ("x = 0.5", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "3/4"),
        ("\\boxed{ - 3 }", "-3"),
        ("it costs $1,000.", "1000"),
        ("7+8=15,4+3+1=8;85", "85"),  # the demo task: the last number is the answer
        ("first 12, then \\boxed{7} and later 9", "7"),  # \boxed wins over later numbers
        ("\\boxed{\\frac{6}{8}}", "0.75"),
        ("answer: 2.50", "5/2"),
        ("= 100", "100.0"),
    ],
)
def test_numeric_match_accepts_equivalent_answers(completion, answer):
    assert numeric_match(completion, answer) == 1.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("85;86", "85"),  # the last number counts
        ("1,234", "1,235"),
        ("12,34", "1234"),  # not a thousands separator: the last number is 34
        ("\\boxed{}", "0"),
        ("no number here", "3"),
        ("3/0", "3"),
        ("\\boxed{\\frac{1}{0}}", "1"),
        ("0.333", "1/3"),  # exact rationals, no tolerance
    ],
)
def test_numeric_match_rejects(completion, answer):
    assert numeric_match(completion, answer) == 0.0


def test_boxed_braces_are_balanced():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} \\boxed{2}") == "2"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_answer("nothing") is None
    assert parse_number("-\\frac{1}{4}") == parse_number("-0.25")


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("The answer is (B)", "B", 1.0),
        ("I think A. Actually C", "C", 1.0),
        ("\\boxed{D}", "(D)", 1.0),
        ("Because of this, B", "B", 1.0),  # the B of "Because" is inside a word
        ("Between A and B, A", "B", 0.0),
        ("no letter", "A", 0.0),
    ],
)
def test_choice_match(completion, answer, expected):
    assert choice_match(completion, answer) == expected


def _raises(completion, answer):
    raise RuntimeError("broken grader")


def _hangs(completion, answer):
    time.sleep(30)
    return 1.0


def _nan(completion, answer):
    return float("nan")


def test_reward_that_raises_scores_zero_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tempo_rl.trainer"):
        assert safe_reward(_raises, "x", "1") == 0.0
    assert "broken grader" in caplog.text


def test_reward_that_hangs_times_out(caplog):
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="tempo_rl.trainer"):
        assert safe_reward(_hangs, "x", "1", time_limit=0.2) == 0.0
    assert time.perf_counter() - t0 < 5
    assert "timed out" in caplog.text


def test_reward_that_returns_nan_scores_zero():
    assert safe_reward(_nan, "x", "1") == 0.0


def test_load_reward_by_name_and_module_function():
    assert load_reward("numeric") is numeric_match
    assert load_reward("tempo_rl.trainer.rewards:choice_match") is choice_match
    with pytest.raises(ValueError, match="module:function"):
        load_reward("nonsense")
