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


# ----------------------------------------------------------------------------- TRL-style and several rewards
from tempo_rl.trainer.config import UsageError  # noqa: E402
from tempo_rl.trainer.rewards import (  # noqa: E402
    RewardFunction,
    check_reward_arguments,
    load_reward_functions,
    score_batch,
)


def trl_length(prompts, completions, **kwargs):
    """TRL's signature: batched, dataset columns as keyword lists."""
    return [float(len(c)) for c in completions]


def trl_uses_column(prompts, completions, solution, **kwargs):
    return [1.0 if c == s else 0.0 for c, s in zip(completions, solution)]


def trl_skips_odd(completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def _exits(completion, answer):
    import sys

    sys.exit(0)


def _huge(completion, answer):
    return 1e39


def _text(completion, answer):
    return "yes"


def _fn(f, weight=1.0):
    from tempo_rl.trainer.rewards import is_batched

    return RewardFunction(f.__name__, f, weight, is_batched(f))


def test_trl_batched_reward_gets_prompts_completions_and_columns():
    out = score_batch([_fn(trl_uses_column)], ["p1", "p2"], ["a", "b"], {"answer": ["1", "2"], "solution": ["a", "x"]})
    assert out.total == [1.0, 0.0] and out.failures == 0


def test_trl_reward_is_called_once_per_batch_not_per_sample():
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [0.5] * len(completions)

    out = score_batch([_fn(counting)], ["p"] * 3, ["a", "b", "c"], {"answer": ["1"] * 3})
    assert calls == [3] and out.total == [0.5, 0.5, 0.5]


def test_several_rewards_are_summed_with_weights_and_none_adds_nothing():
    fns = [_fn(trl_length, 0.5), _fn(trl_skips_odd, 2.0), _fn(numeric_match, 1.0)]
    out = score_batch(fns, ["p"] * 2, ["12", "3"], {"answer": ["12", "4"]})
    assert out.total == [0.5 * 2 + 2.0 * 1.0 + 1.0, 0.5 * 1 + 0.0 + 0.0]
    assert out.per_function["trl_skips_odd"] == [1.0, None]


@pytest.mark.parametrize(
    "bad, why",
    [(_exits, "sys.exit"), (_huge, "finite"), (_text, "not a number"), (_raises, "broken grader"), (_nan, "finite")],
)
def test_failing_per_sample_reward_scores_zero_with_one_warning_naming_it(caplog, bad, why):
    with caplog.at_level(logging.WARNING, logger="tempo_rl.trainer"):
        out = score_batch(
            [_fn(bad), _fn(trl_length)],
            ["p0", "p1", "p2"],
            ["a", "bb", "ccc"],
            {"answer": ["1"] * 3},
            where=" at step 7",
        )
    assert out.total == [1.0, 2.0, 3.0]  # the good function still counts
    assert out.failures == 3 and not out.all_failed
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert bad.__name__ in warnings[0] and why in warnings[0] and "sample 0" in warnings[0]
    assert "step 7" in warnings[0]


def test_batched_reward_of_wrong_length_fails_every_sample(caplog):
    def short(prompts, completions, **kwargs):
        return [1.0]

    with caplog.at_level(logging.WARNING, logger="tempo_rl.trainer"):
        out = score_batch([_fn(short)], ["p", "q"], ["a", "b"], {"answer": ["1", "2"]})
    assert out.all_failed and out.total == [0.0, 0.0]
    assert "returned 1 values for 2 completions" in caplog.text


def test_weighted_sum_beyond_float32_scores_zero(caplog):
    def big(completion, answer):
        return 3e38

    out = score_batch([_fn(big, 1.0), _fn(big, 1.0)], ["p"], ["a"], {"answer": ["1"]})
    assert out.total == [0.0] and "beyond float32" in caplog.text


def test_load_reward_from_cwd_module_and_from_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_cwd.py").write_text(
        "def fn(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "graders.py").write_text("def exact(completion, answer):\n    return float(completion == answer)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    fns = load_reward_functions(["my_rewards_cwd:fn", "sub/graders.py:exact"], [1.0, 0.5])
    assert [(f.name, f.weight, f.batched) for f in fns] == [("fn", 1.0, True), ("exact", 0.5, False)]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_such_module_x:fn", "cannot import"),
        ("missing.py:fn", "no file"),
        ("tempo_rl.trainer.rewards:nothing", "has no 'nothing'"),
        ("nonsense", "module:function"),
    ],
)
def test_load_reward_errors_name_the_reward(spec, match):
    with pytest.raises(UsageError, match=match):
        load_reward_functions([spec])


def test_reward_weights_must_match():
    with pytest.raises(UsageError, match="reward_weights"):
        load_reward_functions(["numeric", "choice"], [1.0])


def test_batched_reward_needing_a_missing_column_is_refused_up_front():
    with pytest.raises(UsageError, match="'solution'"):
        check_reward_arguments([_fn(trl_uses_column)], ["answer"])
    check_reward_arguments([_fn(trl_uses_column)], ["answer", "solution"])


# ----------------------------------------------------------------------------- answers keep their type
def test_a_list_answer_reaches_a_batched_reward_as_a_list(tmp_path):
    """The probe's `x in answer`: with the answer stringified it was substring matching."""
    from tempo_rl.trainer.data import load_dataset, reward_columns

    seen = []

    def contains(prompts, completions, answer, **kwargs):
        seen.extend(answer)
        return [float(c in a) for c, a in zip(completions, answer)]

    path = tmp_path / "lists.jsonl"
    path.write_text('{"prompt": "p", "answer": ["38", "x"]}\n{"prompt": "q", "answer": ["38", "x"]}\n')
    columns = reward_columns(load_dataset(str(path)))
    out = score_batch([_fn(contains)], ["p", "q"], ["3", "38"], columns)
    assert seen == [["38", "x"], ["38", "x"]] and out.total == [0.0, 1.0]


def test_a_per_sample_reward_gets_the_answer_as_it_is():
    got = []

    def typed(completion, answer):
        got.append(answer)
        return 1.0

    score_batch([_fn(typed)], ["p", "q"], ["a", "b"], {"answer": [85, {"k": 1}]})
    assert got == [85, {"k": 1}]


def test_builtin_rewards_read_numbers_and_refuse_what_they_cannot_score(tmp_path):
    from tempo_rl.trainer.data import load_dataset
    from tempo_rl.trainer.rewards import check_answers, numeric_match

    assert numeric_match("so 85", 85) == 1.0 and numeric_match("so 0.5", 0.5) == 1.0
    rows = [
        '{"prompt": "a", "answer": "1"}',
        '{"prompt": "b", "answer": ["38", "x"]}',
        '{"prompt": "c", "answer": NaN}',
    ]
    path = tmp_path / "typed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    examples = load_dataset(str(path))
    with pytest.raises(
        UsageError, match=r"typed.jsonl:2: answer \['38', 'x'\] \(list; 2 row\(s\) in all\).*'numeric_match'"
    ):
        check_answers(load_reward_functions(["numeric"]), examples)
    for bad in ("", True, {"k": 1}, float("nan")):
        assert numeric_match("1", bad) == 0.0
    check_answers([_fn(trl_length)], examples)  # a function of the user's own takes any answer


def test_a_reward_returning_a_meta_tensor_scores_zero_with_a_warning(caplog):
    import torch

    def meta_per_sample(completion, answer):
        return torch.tensor(1.0, device="meta")

    def meta_batched(prompts, completions, **kwargs):
        return torch.ones(len(completions), device="meta")

    with caplog.at_level(logging.WARNING):
        out = score_batch([_fn(meta_per_sample), _fn(meta_batched)], ["p"], ["a"], {"answer": ["1"]})
    assert out.total == [0.0] and out.failures == 2 and caplog.text.count("meta device") == 2


def test_a_million_copies_of_one_reward_get_distinct_names_in_linear_time():
    from tempo_rl.trainer.rewards import unique_name

    taken: dict = {}
    assert [unique_name(n, taken) for n in ["a", "a", "a_2", "a", "b"]] == ["a", "a_2", "a_2_2", "a_3", "b"]
    taken = {}
    names = [unique_name("numeric", taken) for _ in range(100_000)]  # quadratic: 5e9 comparisons
    assert len(set(names)) == 100_000 and names[-1] == "numeric_100000"
    assert len(load_reward_functions(["numeric"] * 1024)) == 1024
