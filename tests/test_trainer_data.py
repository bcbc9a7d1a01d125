"""The demo task, its tokenizer, and JSONL loading."""

import random

import pytest

from tempo_rl.trainer.data import add_examples, add_solution, batch_for_step, load_dataset, load_jsonl
from tempo_rl.trainer.rewards import numeric_match
from tempo_rl.trainer.tiny import _noisy_solution, build_tokenizer


def test_add_solution_works_the_columns():
    assert add_solution(47, 38) == "7+8=15,4+3+1=8;85"
    assert add_solution(95, 15) == "5+5=10,9+1+1=11;110"
    assert add_solution(12, 34) == "2+4=6,1+3=4;46"


def test_add_examples_always_carry_and_solutions_score_one():
    for ex in add_examples(200, seed=3):
        a, b = map(int, ex.prompt[:-1].split("+"))
        assert a % 10 + b % 10 >= 10
        assert numeric_match(add_solution(a, b), ex.answer) == 1.0


def test_forgotten_carry_is_ten_short():
    rng = random.Random(0)
    text = _noisy_solution(47, 38, rng, forget_carry=1.0, slip=0.0)
    assert text == "7+8=15,4+3=7;75" and numeric_match(text, "85") == 0.0


def test_character_tokenizer_round_trips():
    tok = build_tokenizer()
    text = "7+8=15,4+3+1=8;85 \\boxed{1/2}"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_batch_for_step_is_a_function_of_seed_and_step():
    examples = add_examples(100, seed=0)
    assert batch_for_step(examples, 5, 8, 1) == batch_for_step(examples, 5, 8, 1)
    assert batch_for_step(examples, 5, 8, 1) != batch_for_step(examples, 6, 8, 1)


def test_jsonl_loading(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"prompt": "1+1=", "answer": 2}\n\n{"prompt": "p", "answer": "A"}\n')
    rows = load_jsonl(good)
    assert [r.answer for r in rows] == ["2", "A"] and load_dataset(str(good)) == rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="neither"):
        load_dataset("no-such-task")
