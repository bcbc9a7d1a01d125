"""The demo task, its tokenizer, and JSONL loading."""

import json
import random

import pytest

from tempo_rl.trainer.config import UsageError
from tempo_rl.trainer.data import add_examples, add_solution, batch_for_step, hold_out, load_dataset, load_jsonl
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
    assert [r.answer for r in rows] == [2, "A"] and load_dataset(str(good)) == rows  # answers keep their type
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="neither"):
        load_dataset("no-such-task")


# ----------------------------------------------------------------------------- files through `datasets`
ROWS = [{"question": f"{a}+{a}=", "solution": str(2 * a), "level": a % 3} for a in range(10, 30)]
CHAT = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{a}+1="}],
        "answer": str(a + 1),
    }
    for a in range(5)
]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "saved", "saved_dict"])
def test_dataset_formats_with_named_columns(tmp_path, kind):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        ds.to_json(str(path))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind == "saved":
        ds.save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(path))
    rows = load_dataset(str(path), prompt_column="question", answer_column="solution")
    assert [(r.prompt, r.answer) for r in rows] == [(r["question"], r["solution"]) for r in ROWS]
    assert [int(r.columns["level"]) for r in rows] == [r["level"] for r in ROWS]


def test_chat_prompts_are_kept_as_messages(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    rows = load_dataset(str(path))
    assert rows[0].prompt == CHAT[0]["prompt"] and rows[0].answer == "1"


@pytest.mark.parametrize(
    "rows, match", [([{"prompt": "x"}], "'answer'"), ([{"prompt": [{"text": "x"}], "answer": "1"}], "chat messages")]
)
def test_malformed_rows_name_the_row(tmp_path, rows, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UsageError, match=match):
        load_dataset(str(path))


def test_missing_file_says_so():
    with pytest.raises(UsageError, match="no such file"):
        load_dataset("data/train.jsonl")


def test_hold_out_is_disjoint_seeded_and_at_most_a_tenth():
    rows = add_examples(200, seed=0)
    train, evals = hold_out(rows, 256, seed=3)
    assert len(evals) == 20 and len(train) == 180
    assert sorted(map(repr, train + evals)) == sorted(map(repr, rows))  # a split: nothing lost, nothing twice
    assert hold_out(rows, 256, seed=3) == (train, evals) and hold_out(rows, 5, seed=3)[1] != evals


def test_chat_prompts_are_rendered_with_the_chat_template():
    from tempo_rl.trainer.config import TrainConfig
    from tempo_rl.trainer.data import Example
    from tempo_rl.trainer.loading import prompts_for

    class Tok:
        chat_template = "{% for m in messages %}<{{m.role}}>{{m.content}}{% endfor %}"
        bos_token = None

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    texts, chat = prompts_for(Tok(), [Example(CHAT[0]["prompt"], "1"), Example("2+2=", "4")], TrainConfig())
    assert texts == ["<system>Be brief.<user>0+1=<assistant>", "<user>2+2=<assistant>"]
    assert chat is False
    texts, chat = prompts_for(Tok(), [Example("2+2=", "4")], TrainConfig(chat_template=True))
    assert texts == ["2+2="] and chat is True


# ----------------------------------------------------------------------------- text as written
def test_jsonl_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    assert [(r.prompt, r.answer) for r in load_dataset(str(path))] == [("1+1=", "2"), ("2+2=", "4")]


def test_csv_cells_are_text_as_written(tmp_path):
    """pandas' inference made the prompts "None", "null" and "nan" null (refused as not text) and
    "0042" the number 42; a CSV cell is text."""
    path = tmp_path / "words.csv"
    path.write_text("prompt,answer,level\nNone,1,3\nnull,2,x\nnan,3,\n0042,0042,4\n")
    rows = load_dataset(str(path))
    assert [(r.prompt, r.answer, r.columns["level"]) for r in rows] == [
        ("None", "1", "3"),
        ("null", "2", "x"),
        ("nan", "3", ""),
        ("0042", "0042", "4"),
    ]


def test_a_prompt_with_a_lone_surrogate_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "1+1=\\ud800", "answer": "2"}\n')
    with pytest.raises(
        UsageError, match=r"surrogate.jsonl:2: 'prompt' holds '\\ud800' at character 4, a lone surrogate"
    ):
        load_dataset(str(path))
