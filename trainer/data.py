"""Prompts with verifiable answers: a data file or saved dataset, or a built-in task.

Files: JSONL (read directly; a UTF-8 byte order mark is allowed), or JSON, CSV, Parquet files and
directories written by `datasets.Dataset.save_to_disk` (read with the `datasets` library; a CSV
cell is text as written, so "None" or "0042" stays that text). Each row needs a prompt column
(text, or a chat: a list of `{"role", "content"}` messages, as in TRL's conversational datasets) and
an answer column; every other column is kept for batched reward functions. Answers keep their type
(a JSON number, list or dict reaches the reward as one).

The built-in `add` task is the embedded demo. A prompt is "47+38=" and the response works the sum
column by column before answering, e.g. "7+8=15,4+3+1=8;85". Every problem carries (the ones
digits sum to 10 or more), so one token deep in the response decides most of the outcome: after
"4+3" the policy writes "+1" (carries) or "=" (forgets the carry, and the answer is 10 short). The
ones sum is a second, rarer decision point; the rest is fixed format or follows from what came
before. A group's prefix tree branches exactly where samples first disagree: the structure that
TEMPO's TD term reads.

The built-in `chain` task puts the decisions deeper: a prompt adds three two-digit numbers,
"78+87+97=", and the response works the running sum one addition at a time in the `add` format,
"8+7=15,7+8+1=16;165 5+7=12,16+9+1=26;262" (40 tokens). Every step carries, so each step has its
own carry decision, the second one about 30 tokens into the response, and a forgotten carry makes
every later total wrong: correctness hinges on a chain of decisions, the last of them deep.

The built-in `luck` task is `add` behind a coin: the response opens with "coin toss:", the
environment writes H or T (probability 1/2 each; `CHANCE_TOKENS`, a token the policy does not choose
and that carries no loss), and the policy then works the sum, "coin toss:H 7+8=15,4+3+1=8;85". Its
reward (`rewards.luck_reward`) is [H] + 0.5 [answer right]: the coin moves the value of the prefix a
lot before the one decision the policy controls, the carry. That is the offset term of
proofs_notes/tree-rollouts.md, section 5, which predicts TEMPO's gain from it; scored with `numeric`
alone the same task is its control.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tempo_rl.extras import install_command

from .config import UsageError

Chat = list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class Example:
    prompt: str | Chat
    answer: Any  # as the dataset holds it (text, a number, a list, ...): rewards receive it unchanged
    columns: dict[str, Any] = field(default_factory=dict, compare=False)  # the row's other fields
    where: str = field(default="", compare=False)  # the row in its file, for messages ("data.jsonl:3")


def prompt_text(prompt: str | Chat) -> str:
    """A prompt as plain text for logs and dumps (a chat: its messages' contents, one per line)."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def reward_columns(batch: list[Example]) -> dict[str, list[Any]]:
    """Dataset columns of a batch as keyword lists for batched rewards: `answer` and every other field
    (None where a row lacks it). batch: (n,) examples -> column -> (n,) values."""
    names = sorted({k for e in batch for k in e.columns} - {"prompt", "answer"})
    cols: dict[str, list[Any]] = {"answer": [e.answer for e in batch]}
    cols.update({k: [e.columns.get(k) for e in batch] for k in names})
    return cols


def add_solution(a: int, b: int) -> str:
    """The worked response for a+b (two-digit a, b): ones column, tens column with carry, answer."""
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    tens_expr = f"{a // 10}+{b // 10}+{carry}" if carry else f"{a // 10}+{b // 10}"
    return f"{a % 10}+{b % 10}={ones},{tens_expr}={tens};{a + b}"


def add_examples(n: int, seed: int) -> list[Example]:
    """n seeded `add` prompts: two-digit a, b whose ones digits carry (answers 2 or 3 digits)."""
    rng = random.Random(seed)
    return [Example(prompt=f"{a}+{b}=", answer=str(a + b)) for a, b in (carry_pair(rng) for _ in range(n))]


def carry_pair(rng: random.Random) -> tuple[int, int]:
    """Uniform over two-digit pairs with a % 10 + b % 10 >= 10."""
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if a % 10 + b % 10 >= 10:
            return a, b


def chain_terms(rng: random.Random, k: int = 3) -> list[int]:
    """k two-digit terms, uniform among those whose every running-sum step carries (rejection)."""
    while True:
        terms = [rng.randint(10, 99) for _ in range(k)]
        total, carries = terms[0], True
        for b in terms[1:]:
            carries = carries and total % 10 + b % 10 >= 10
            total += b
        if carries:
            return terms


def chain_solution(terms: list[int], carries: list[int] | None = None) -> str:
    """The worked running sum, one `add`-format step per term after the first; `carries[j]` = 0
    forgets step j's carry (every later total then follows from the wrong one)."""
    total, steps = terms[0], []
    for j, b in enumerate(terms[1:]):
        carry = 1 if carries is None else carries[j]
        ones, tens = total % 10 + b % 10, total // 10 + b // 10 + carry
        tens_expr = f"{total // 10}+{b // 10}+1" if carry else f"{total // 10}+{b // 10}"
        steps.append(f"{total % 10}+{b % 10}={ones},{tens_expr}={tens};{tens * 10 + ones % 10}")
        total = tens * 10 + ones % 10
    return " ".join(steps)


def chain_examples(n: int, seed: int, k: int = 3) -> list[Example]:
    """n seeded `chain` prompts of k two-digit terms, every step carrying."""
    rng = random.Random(seed)
    chains = (chain_terms(rng, k) for _ in range(n))
    return [Example(prompt="+".join(map(str, t)) + "=", answer=str(sum(t))) for t in chains]


LUCK_PREAMBLE = "coin toss:"
LUCK_COIN = ("H", "T")
# task -> (text before the environment's token, the texts it draws from uniformly)
CHANCE_TOKENS = {"luck": (LUCK_PREAMBLE, LUCK_COIN)}


def luck_solution(a: int, b: int, coin: str) -> str:
    """The worked `luck` response: the preamble, the coin, a space, the `add` working."""
    return f"{LUCK_PREAMBLE}{coin} {add_solution(a, b)}"


BUILTIN_TASKS = {"add": add_examples, "chain": chain_examples, "luck": add_examples}


def example_of(
    row: dict[str, Any], where: str, prompt_column: str = "prompt", answer_column: str = "answer"
) -> Example:
    """One dataset row as an Example; UsageError naming the row when a column is missing or malformed."""
    if not isinstance(row, dict) or prompt_column not in row or answer_column not in row:
        raise UsageError(
            f"{where}: each row needs {prompt_column!r} and {answer_column!r} fields (--prompt-column, --answer-column)"
        )
    prompt = row[prompt_column]
    if isinstance(prompt, list):
        if not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
        ):
            raise UsageError(f"{where}: a list prompt must be chat messages ({{'role': str, 'content': str}})")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if not any(m["content"].strip() for m in prompt):
            raise UsageError(f"{where}: {prompt_column!r} is a chat whose messages are all empty")
    elif not isinstance(prompt, str):  # str(None) would train on the text "None"
        raise UsageError(
            f"{where}: {prompt_column!r} is {type(prompt).__name__} {_short(prompt)}; a prompt is text or chat messages"
        )
    elif not prompt.strip():
        raise UsageError(f"{where}: {prompt_column!r} is empty")
    check_encodable(prompt_text(prompt), f"{where}: {prompt_column!r}")
    if row[answer_column] is None:
        raise UsageError(f"{where}: {answer_column!r} is null")
    extra = {k: v for k, v in row.items() if k not in (prompt_column, answer_column)}
    return Example(prompt=prompt, answer=row[answer_column], columns=extra, where=where)


def check_encodable(text: str, what: str) -> None:
    """UsageError naming the character when text cannot be UTF-8 (a lone surrogate such as JSON's
    "\\ud800"): no tokenizer can encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"{what} holds {text[e.start]!r} at character {e.start}, a lone surrogate that is not text "
            "(no tokenizer can encode it); fix the row"
        ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_jsonl(path: str | Path, prompt_column: str = "prompt", answer_column: str = "answer") -> list[Example]:
    """Read `{"prompt": ..., "answer": ..., ...}` lines; a line without both fields is an error. Other
    fields are kept as the example's columns."""
    out = []
    try:  # utf-8-sig: a byte order mark (as some editors write) is not part of the first line
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise UsageError(f"dataset {str(path)!r}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        out.append(example_of(row, f"{path}:{lineno}", prompt_column, answer_column))
    if not out:
        raise UsageError(f"{path}: no examples")
    return out


HF_FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}


def csv_as_text(path: Path, datasets: Any) -> dict[str, Any]:
    """A CSV file holds text: every cell is read as written (each column a string), so a prompt
    "None", "null" or "nan" stays that text and "0042" stays "0042", where pandas' inference would
    make them null and the number 42."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "na_filter": False}


def check_text_file(path: Path) -> None:
    """A JSON or CSV file must be UTF-8 and, for CSV, hold a row below its header: checked here, in
    1 MiB pieces, because the datasets library reports either as a parse error of its own."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, offset = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"dataset {str(path)!r}: not UTF-8 text (byte {offset + e.start}); save it as UTF-8"
                ) from None
            offset += len(chunk)
            lines += sum(1 for line in text.splitlines() if line.strip())
    if path.suffix == ".csv" and lines < 2:
        raise UsageError(f"dataset {str(path)!r}: no rows (a CSV file needs a header line and at least one row)")


@contextlib.contextmanager
def quiet_datasets(datasets: Any) -> Iterator[None]:
    """No progress bars while a local file is parsed: they say nothing there, and on an error they
    would come before the one-line message."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def load_hf(path: Path, prompt_column: str = "prompt", answer_column: str = "answer") -> list[Example]:
    """A JSON / CSV / Parquet file or a `save_to_disk` directory through the `datasets` library
    (a DatasetDict gives its "train" split)."""
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"dataset {str(path)!r}: reading {path.suffix or 'a saved dataset'} needs the datasets "
            f"package: {install_command('train')}"
        ) from None
    if path.suffix in (".csv", ".json"):
        check_text_file(path)
    try:
        with quiet_datasets(datasets):
            if path.is_dir():
                data = datasets.load_from_disk(str(path))
            else:
                options = csv_as_text(path, datasets) if path.suffix == ".csv" else {}
                data = datasets.load_dataset(HF_FORMATS[path.suffix], data_files=str(path), split="train", **options)
    except FileNotFoundError:
        raise UsageError(f"dataset {str(path)!r}: not a directory written by save_to_disk (nor a data file)") from None
    except UnicodeDecodeError:
        raise UsageError(f"dataset {str(path)!r}: not UTF-8 text; save it as UTF-8") from None
    except Exception as e:  # the datasets library's parse errors have no common base class
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(
            f"dataset {str(path)!r}: cannot be read as {path.suffix or 'a saved dataset'} ({first})"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise UsageError(f"dataset {str(path)!r}: a DatasetDict without a 'train' split ({list(data)})")
        data = data["train"]
    out = [example_of(row, f"{path} row {i}", prompt_column, answer_column) for i, row in enumerate(data)]
    if not out:
        raise UsageError(f"{path}: no examples")
    return out


def load_dataset(
    name_or_path: str, *, n: int = 4096, seed: int = 0, prompt_column: str = "prompt", answer_column: str = "answer"
) -> list[Example]:
    """A built-in task by name (n seeded examples), or a data file or saved dataset by path."""
    if name_or_path in BUILTIN_TASKS:
        return BUILTIN_TASKS[name_or_path](n, seed)
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".jsonl":
        return load_jsonl(path, prompt_column, answer_column)
    if (path.is_file() and path.suffix in HF_FORMATS) or (path.is_dir() and any(path.iterdir())):
        return load_hf(path, prompt_column, answer_column)
    if path.is_file():
        raise UsageError(
            f"dataset {name_or_path!r}: unknown format {path.suffix!r} (.jsonl, "
            f"{', '.join(HF_FORMATS)}, or a directory written by save_to_disk)"
        )
    if path.suffix or "/" in name_or_path:
        raise UsageError(f"dataset {name_or_path!r}: no such file or directory")
    raise UsageError(f"dataset {name_or_path!r}: neither a built-in task {sorted(BUILTIN_TASKS)} nor a file")


def hold_out(examples: list[Example], n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval): a seeded draw of min(n_eval, len // 10) rows (at least 1) held out for evaluation,
    the rest for training, so evaluation never scores prompts the policy trained on."""
    if len(examples) < 2:
        raise UsageError(f"dataset: {len(examples)} example, too few to hold out an eval split; give --eval-dataset")
    k = max(1, min(n_eval, len(examples) // 10))
    picked = set(random.Random(seed + 1).sample(range(len(examples)), k))
    return ([e for i, e in enumerate(examples) if i not in picked], [e for i, e in enumerate(examples) if i in picked])


def batch_for_step(examples: list[Example], step: int, n_prompts: int, seed: int) -> list[Example]:
    """The prompts of one step, a pure function of (seed, step): a resumed run sees the same ones."""
    rng = random.Random(seed * 1_000_003 + step)
    return [examples[rng.randrange(len(examples))] for _ in range(n_prompts)]
