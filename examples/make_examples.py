"""Write the example inputs of `tempo-rl inspect` (run from the repository root):

    .venv/bin/python examples/make_examples.py

- worked_example.jsonl: the worked example group of tempo_rl.reference.example, as text.
- trainer_dump.jsonl: a small synthetic dump in the trainer's format (step, group_id, prompt,
  response as token ids, text, reward): two steps of an arithmetic task, three groups.
- tokenizer.json: the word-level tokenizer whose ids trainer_dump.jsonl uses
  (`tempo-rl inspect examples/trainer_dump.jsonl --tokenizer examples/tokenizer.json`).

The files are deterministic; tests/test_inspect.py checks the committed ones match this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tempo_rl.reference.example import RESPONSES

HERE = Path(__file__).resolve().parent

# (step, group_id, [(response, reward)]): made up, shaped like real samples.
DUMP = [
    (
        50,
        0,
        [
            ("12 + 7 = 19 </s>", 1.0),
            ("12 + 7 = 19 </s>", 1.0),
            ("12 + 7 = 18 </s>", 0.0),
            ("Let me add : 12 + 7 = 19 </s>", 1.0),
            ("Let me add : 12 + 7 = 21 </s>", 0.0),
            ("The answer is 20 </s>", 0.0),
        ],
    ),
    (
        50,
        1,
        [
            ("9 * 3 = 27 </s>", 1.0),
            ("9 * 3 = 24 </s>", 0.0),
            ("9 * 3 is 9 + 9 + 9 = 27 </s>", 1.0),
            ("9 * 3 is 9 + 9 + 9 = 28 </s>", 0.0),
            ("The answer is 27 </s>", 1.0),
        ],
    ),
    (
        100,
        0,
        [
            ("Let me add : 15 + 8 = 23 </s>", 1.0),
            ("Let me add : 15 + 8 = 23 </s>", 1.0),
            ("Let me add : 15 + 8 = 22 </s>", 0.0),
            ("15 + 8 = 23 </s>", 1.0),
        ],
    ),
]


PROMPTS = {(50, 0): "What is 12 + 7?", (50, 1): "What is 9 * 3?", (100, 0): "What is 15 + 8?"}


def vocabulary() -> dict[str, int]:
    words = ["</s>"] + sorted({w for _, _, group in DUMP for text, _ in group for w in text.split()} - {"</s>"})
    return {w: i for i, w in enumerate(words)}


def tokenizer_json(vocab: dict[str, int]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces on decode
    return tok.to_str(pretty=True) + "\n"


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def build() -> dict[str, str]:
    """File name -> contents."""
    vocab = vocabulary()
    worked = [{"group_id": "worked-example", "response": text, "reward": reward} for text, reward in RESPONSES]
    dump = [
        {
            "step": step,
            "group_id": gid,
            "prompt": PROMPTS[step, gid],
            "response": [vocab[w] for w in text.split()],
            "text": text,
            "reward": reward,
        }
        for step, gid, group in DUMP
        for text, reward in group
    ]
    return {
        "worked_example.jsonl": jsonl(worked),
        "trainer_dump.jsonl": jsonl(dump),
        "tokenizer.json": tokenizer_json(vocab),
    }


def main(out: Path = HERE) -> None:
    for name, text in build().items():
        (out / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
