"""Reading rollouts from JSONL: one sampled response per line.

Two formats are read, and may share a file:
- rollouts: {"group_id": ..., "response": [token ids] or "text", "reward": float}
- trainer dumps: {"group_id": ..., "response": [token ids], "text": "...", "reward": float, "step": int}

Responses with the same (step, group_id) form a group (a trainer reuses group ids across steps).
Text becomes tokens through a tokenizer when one is given, otherwise by splitting on whitespace
with a vocabulary built from the file; ids become text through the tokenizer, the file's
whitespace vocabulary, or are shown as `#id`. Every malformed line raises `RolloutError` naming
the file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterator, Protocol

from tempo_rl.extras import requires


def dump_line(step: int, group_id: Hashable, prompt: str, response: list[int], text: str, reward: float) -> str:
    """One response as a line of a trainer dump (the second format above, with its prompt): the one
    writer of `tempo-rl train --dump-rollouts-every` and of TRL's `tempo_dump_rollouts_every`."""
    record = {"step": step, "group_id": group_id, "prompt": prompt, "response": response, "text": text}
    return json.dumps({**record, "reward": float(reward)}) + "\n"


class RolloutError(ValueError):
    """A malformed rollout file; the message names the file and the line."""


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def piece(self, token_id: int) -> str: ...


@dataclass
class ResponseRecord:
    """One sampled response, as read from line `line` of its file."""

    line: int
    group_id: Hashable
    step: int | None
    ids: list[int]
    reward: float
    text: str | None = None  # the record's own text, if it has one
    prompt: str | None = None
    pieces: list[str] = field(default_factory=list)  # display text of each token

    @property
    def group_key(self) -> tuple[int | None, Hashable]:
        return (self.step, self.group_id)


class WhitespaceVocab:
    """Words split on whitespace, numbered in order of first appearance in the file."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        out = []
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
            out.append(self.ids[word])
        return out

    def piece(self, token_id: int) -> str:
        return self.words[token_id] if 0 <= token_id < len(self.words) else f"#{token_id}"


class _HFTokenizer:
    """A `transformers` tokenizer saved in a local directory."""

    def __init__(self, path: Path):
        with requires("train", f"--tokenizer {path}"):
            from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def piece(self, token_id: int) -> str:
        return self._tok.decode([token_id])


class _TokenizersJSON:
    """A `tokenizers` tokenizer.json file."""

    def __init__(self, path: Path):
        with requires("train", f"--tokenizer {path}"):
            from tokenizers import Tokenizer as _Tokenizer

        self._tok = _Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def piece(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json file (`tokenizers`), or a directory `AutoTokenizer` can load offline."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} does not exist")
    try:
        return _HFTokenizer(path) if path.is_dir() else _TokenizersJSON(path)
    except ModuleNotFoundError:
        raise
    except Exception as e:  # tokenizers and transformers raise many kinds, none of them shared
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        what = "a directory AutoTokenizer can load" if path.is_dir() else "a tokenizer.json file"
        raise RolloutError(f"tokenizer {path}: not {what} ({reason})") from None


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record:
        raise RolloutError(f"{where}: missing field '{name}'")
    return record[name]


def _parse_line(raw: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RolloutError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise RolloutError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _group_id(value: Any, where: str) -> Hashable:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RolloutError(f"{where}: group_id must be a string or an integer, got {value!r}")
    return value


def _reward(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RolloutError(f"{where}: reward must be a finite number, got {value!r}")
    return float(value)


def _step(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RolloutError(f"{where}: step must be an integer, got {value!r}")
    return value


def _token_ids(value: Any, where: str) -> list[int] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        return value
    raise RolloutError(f"{where}: response must be a string or a list of non-negative integer token ids")


def _lines(f: Any, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of an open file; RolloutError naming the line where it is not UTF-8."""
    line_no = 0
    try:
        for line_no, raw in enumerate(f, start=1):
            yield line_no, raw
    except UnicodeDecodeError:
        raise RolloutError(f"{path}:{line_no + 1}: not UTF-8 text; save the file as UTF-8") from None


def read_rollouts(path: str | Path, tokenizer: Tokenizer | None = None) -> list[ResponseRecord]:
    """Every rollout of a JSONL file, in file order, with tokens and their display text."""
    path = Path(path)
    if path.is_dir():
        raise RolloutError(f"{path}: a directory; give a JSONL file of rollouts")
    vocab = WhitespaceVocab()
    rollouts: list[ResponseRecord] = []
    kinds: dict[str, int] = {}  # "ids"/"text" -> first line of that kind (for mixing errors)
    with path.open(encoding="utf-8", errors="strict") as f:
        for line_no, raw in _lines(f, path):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            record = _parse_line(raw, where)
            response = _token_ids(_field(record, "response", where), where)
            kind = "text" if isinstance(response, str) else "ids"
            kinds.setdefault(kind, line_no)
            if tokenizer is None and len(kinds) == 2:
                raise RolloutError(
                    f"{where}: responses mix token ids (line {kinds['ids']}) and text (line {kinds['text']});"
                    " pass --tokenizer so both mean the same tokens"
                )
            text = record.get("text")
            if text is not None and not isinstance(text, str):
                raise RolloutError(f"{where}: text must be a string")
            prompt = record.get("prompt")
            rollouts.append(
                ResponseRecord(
                    line=line_no,
                    group_id=_group_id(_field(record, "group_id", where), where),
                    step=_step(record.get("step"), where),
                    ids=response if kind == "ids" else (tokenizer or vocab).encode(response),
                    reward=_reward(_field(record, "reward", where), where),
                    text=text if text is not None else (response if kind == "text" else None),
                    prompt=prompt if isinstance(prompt, str) else None,
                )
            )
    if not rollouts:
        raise RolloutError(f"{path}: no rollouts (the file is empty)")
    decoder = tokenizer or vocab
    for r in rollouts:
        r.pieces = [decoder.piece(t) for t in r.ids]
    return rollouts


def group_rollouts(rollouts: list[ResponseRecord]) -> dict[tuple[int | None, Hashable], list[ResponseRecord]]:
    """Rollouts by (step, group_id), groups in order of first appearance, members in file order."""
    groups: dict[tuple[int | None, Hashable], list[ResponseRecord]] = {}
    for r in rollouts:
        groups.setdefault(r.group_key, []).append(r)
    return groups
