"""Verifiable rewards: exact numeric match, multiple-choice letter match, or the user's functions.

Two signatures are accepted, told apart by the parameter names:

- TRL's batched form, `fn(prompts, completions, **kwargs) -> list[float | None]`: one call per batch,
  with `completion_ids` and every dataset column (`answer`, ...) as keyword lists of the same length.
  `None` means "does not apply to this sample" and adds nothing, as in TRL.
- the per-sample form `fn(completion, answer) -> float`, called once per sample.

Answers arrive as the dataset holds them (text, a number, a list, ...). The built-in rewards read
text or a number; a row whose answer they cannot score is refused before the model loads.

Several functions are summed with weights. A function that raises, calls `sys.exit`, runs past its time
limit, or returns something that is not a finite number scores 0 on the samples concerned, with one
warning per function and batch that names the function and the first sample. When every call of a
step failed, the trainer stops (`TrainingStopped`).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import reprlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import torch

from tempo_rl.targets import load_target

from .config import UsageError

log = logging.getLogger("tempo_rl.trainer")

RewardFn = Callable[[str, str], float]

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def parse_number(text: str) -> Fraction | None:
    """An exact rational from a normalised answer string, or None.

    Removes spaces, '$', thousands commas, a trailing '.', `\\left`/`\\right`, and reads integers,
    decimals, 'a/b', `\\frac{a}{b}` / `\\dfrac{a}{b}` / `\\tfrac`, and a leading sign.
    """
    s = text.strip().replace("$", "").replace("\\!", "").replace("\\,", "").replace(" ", "")
    s = s.replace("\\left", "").replace("\\right", "").rstrip(".")
    m = re.fullmatch(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        return (-1 if m.group(1) == "-" else 1) * num / den
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"([-+]?\d*\.?\d+)/([-+]?\d*\.?\d+)", s)
    try:
        if m:
            den = Fraction(m.group(2))
            return None if den == 0 else Fraction(m.group(1)) / den
        return Fraction(s) if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(completion: str) -> str | None:
    """The model's final answer: the last \\boxed{} if any, else the last number in the text."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    numbers = re.findall(_NUMBER, completion)
    return numbers[-1] if numbers else None


def answer_text(answer: Any) -> str | None:
    """An answer as the built-in rewards read it: text, or a number written out (85, 0.5); None
    for what they cannot score (a list, a dict, a bool, NaN, empty text)."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, Fraction)) or (isinstance(answer, float) and math.isfinite(answer)):
        return str(answer)
    if isinstance(answer, str) and answer.strip():
        return answer
    return None


def numeric_match(completion: str, answer: Any) -> float:
    """1.0 when the completion's final answer equals `answer` as an exact rational, else 0.0.

    >>> numeric_match("so the total is \\\\boxed{1,234}", "1234")
    1.0
    >>> numeric_match("0.5 then 3/6", "\\\\frac{1}{2}")
    1.0
    """
    text = answer_text(answer)
    got, want = extract_answer(completion), None if text is None else parse_number(text)
    if got is None or want is None:
        return 0.0
    value = parse_number(got)
    return float(value is not None and value == want)


def choice_match(completion: str, answer: Any) -> float:
    """1.0 when the last standalone choice letter (A-J) of the completion equals `answer`'s.

    Reads \\boxed{B}, "(B)", "answer: B", "B." or a bare "B"; a letter inside a word does not count.
    """
    text = answer_text(answer)
    if text is None:
        return 0.0
    want = text.strip().strip("()").upper()
    boxed = last_boxed(completion)
    text = boxed if boxed is not None else completion
    letters = re.findall(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])", text)
    return float(bool(letters) and letters[-1].upper() == want)


def luck_reward(completion: str, answer: Any) -> float:
    """The `luck` task's reward: 1 when the environment's coin (right after "coin toss:") is H, plus 0.5
    when the final answer is right (`numeric_match`)."""
    from .data import LUCK_COIN, LUCK_PREAMBLE

    heads = completion.startswith(LUCK_PREAMBLE + LUCK_COIN[0])
    return float(heads) + 0.5 * numeric_match(completion, answer)


BUILTIN_REWARDS: dict[str, RewardFn] = {"numeric": numeric_match, "choice": choice_match, "luck": luck_reward}

# A combined reward must survive float32, the dtype the advantages are computed in.
MAX_ABS_REWARD = 3.0e38


def _short(value: Any) -> str:
    text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_answers(functions: list[RewardFunction], examples: list[Any]) -> None:
    """A built-in reward reads an answer as text or a number: a row whose answer it cannot score (a
    list, a dict, a bool, NaN, empty) would score 0 whatever the completion, so it is refused before
    the model loads, naming the row. Functions of the user's own get every answer as it is."""
    builtin = [f.name for f in functions if f.fn in BUILTIN_REWARDS.values()]
    if not builtin:
        return
    bad = [e for e in examples if answer_text(e.answer) is None]
    if bad:
        first = bad[0]
        raise UsageError(
            f"{first.where or 'dataset'}: answer {_short(first.answer)} ({type(first.answer).__name__}; "
            f"{len(bad)} row(s) in all) cannot be scored by the built-in reward {builtin[0]!r}, which reads "
            "text or a number; fix those rows, or score them with a reward function of your own"
        )


class TrainingStopped(RuntimeError):
    """The run cannot learn anything more (every reward failed, or no group had any spread)."""


@dataclass(frozen=True)
class RewardFunction:
    """One reward of the run: `fn` called in TRL's batched form or once per sample, times `weight`."""

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    batched: bool = False


def is_batched(fn: Callable[..., Any]) -> bool:
    """TRL's form takes `prompts` and/or `completions`; anything else is `fn(completion, answer)`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: per-sample
        return False
    return "completions" in params or "prompts" in params


def load_reward(spec: str) -> RewardFn:
    """A built-in reward by name ('numeric', 'choice'), 'module:function' (importable, the working
    directory included) or 'path/to/file.py:function'."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise UsageError(
            f"reward {spec!r}: expected one of {sorted(BUILTIN_REWARDS)}, 'module:function' "
            "or 'path/to/file.py:function'"
        )
    try:
        fn = load_target(spec)
    except (ValueError, FileNotFoundError, ImportError, AttributeError) as e:
        raise UsageError(f"reward {spec!r}: {e}") from None
    if not callable(fn):
        raise UsageError(f"reward {spec!r} is not callable")
    return fn


def load_reward_functions(specs: list[str], weights: list[float] | None = None) -> list[RewardFunction]:
    """The run's reward functions, each with its weight (all 1.0 when `weights` is empty)."""
    if not specs:
        raise UsageError("reward: give at least one reward function")
    weights = list(weights or [1.0] * len(specs))
    if len(weights) != len(specs):
        raise UsageError(f"reward_weights: {len(weights)} weights for {len(specs)} reward functions")
    out: list[RewardFunction] = []
    taken: dict[str, int] = {}
    loaded: dict[str, tuple[Callable[..., Any], bool]] = {}  # each spec imported once, however often listed
    for spec, w in zip(specs, weights):
        if spec not in loaded:
            fn = load_reward(spec)
            loaded[spec] = fn, is_batched(fn)
        fn, batched = loaded[spec]
        name = unique_name(getattr(fn, "__name__", spec.rsplit(":", 1)[-1]), taken)
        out.append(RewardFunction(name=name, fn=fn, weight=float(w), batched=batched))
    return out


def unique_name(name: str, taken: dict[str, int]) -> str:
    """`name`, or `name_2`, `name_3`, ... when it is taken; `taken` maps each name given out to the
    next suffix to try, so n copies of one reward cost O(n), not O(n^2)."""
    k = taken.get(name, 1)
    candidate = name if k == 1 else f"{name}_{k}"
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken[name] = k + 1
    taken.setdefault(candidate, 2)
    return candidate


def check_reward_arguments(functions: list[RewardFunction], columns: list[str]) -> None:
    """Fail before the model loads when a batched reward needs an argument the data does not have."""
    given = {"prompts", "completions", "completion_ids", *columns}
    for f in functions:
        if not f.batched:
            continue
        for p in inspect.signature(f.fn).parameters.values():
            required = p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if required and p.name not in given:
                raise UsageError(
                    f"reward {f.name}: needs argument {p.name!r}, which is not a dataset column "
                    f"(columns: {', '.join(columns)})"
                )


class _Timeout(BaseException):  # BaseException: a reward's own `except Exception` cannot swallow it
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _call_with_time_limit(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    """Run fn under a time limit. In the main thread a timer signal interrupts it for real;
    elsewhere it runs in a worker thread that is abandoned on timeout (it cannot be killed)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=seconds)
    except FutureTimeout:
        raise _Timeout from None
    finally:
        pool.shutdown(wait=False)


def _guarded_call(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> tuple[Any, str | None]:
    """(value, None) or (None, why it failed). A reward that calls sys.exit fails like one that raises;
    Ctrl-C (KeyboardInterrupt) still stops the run."""
    try:
        return _call_with_time_limit(fn, args, kwargs, seconds), None
    except _Timeout:
        return None, f"timed out after {seconds:.1f}s"
    except SystemExit as e:
        return None, f"called sys.exit({e.code!r})"
    except Exception as e:  # a user's reward function may raise anything
        return None, f"raised {type(e).__name__}: {e}"


def as_reward(value: Any) -> tuple[float | None, str | None]:
    """A returned value as (float, None), (None, None) for `None` ("does not apply"), or (None, why)."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, torch.Tensor) and (value.is_meta or value.numel() != 1):
        where = "on the meta device (no value)" if value.is_meta else f"of shape {tuple(value.shape)}"
        return None, f"returned a tensor {where}, not a number"
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return None, f"returned {type(value).__name__} {_short(value)}, not a number"
    if not math.isfinite(x) or abs(x) > MAX_ABS_REWARD:
        return None, f"returned {x!r} (a reward must be finite and within +-{MAX_ABS_REWARD:g})"
    return x, None


def safe_reward(fn: RewardFn, completion: str, answer: str, *, time_limit: float = 5.0) -> float:
    """fn(completion, answer) as a finite float; 0.0 with a warning if it raises, exits, hangs past
    `time_limit` seconds, or returns something that is not a finite number."""
    name = getattr(fn, "__name__", repr(fn))
    value, why = _guarded_call(fn, (completion, answer), {}, time_limit)
    if why is None:
        value, why = as_reward(value)
    if why is not None:
        log.warning("reward %s %s; scoring 0", name, why)
        return 0.0
    return 0.0 if value is None else value


@dataclass
class RewardBatch:
    """The rewards of a batch of n samples."""

    total: list[float]  # (n,) weighted sum over the functions; 0 where none applied or all failed
    per_function: dict[str, list[float | None]] = field(default_factory=dict)  # name -> (n,)
    calls: int = 0  # (function, sample) pairs scored
    failures: int = 0  # ... of which failed

    @property
    def all_failed(self) -> bool:
        return self.calls > 0 and self.failures == self.calls


def _call_batched(
    f: RewardFunction,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
    completion_ids: list[list[int]] | None,
    time_limit: float,
) -> tuple[list, list[str | None]]:
    """One call of a TRL-style reward: its values and, per sample, why it failed (None: it did not)."""
    n = len(completions)
    kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns}
    params = inspect.signature(f.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    out, why = _guarded_call(f.fn, (), kwargs, time_limit * max(1, n))
    if why is None and (not isinstance(out, (list, tuple)) and not hasattr(out, "tolist")):
        why = f"returned {type(out).__name__}, not a list of {n} floats"
    if why is None and isinstance(out, torch.Tensor) and out.is_meta:
        why = "returned a tensor on the meta device (no values)"
    if why is None:
        out = list(out.tolist() if hasattr(out, "tolist") else out)
        if len(out) != n:
            why = f"returned {len(out)} values for {n} completions"
    if why is not None:
        return [None] * n, [why] * n
    checked = [as_reward(v) for v in out]
    return [v for v, _ in checked], [w for _, w in checked]


def _call_per_sample(
    f: RewardFunction, completions: list[str], answers: list[Any], time_limit: float
) -> tuple[list, list[str | None]]:
    values, whys = [], []
    for c, a in zip(completions, answers):
        v, why = _guarded_call(f.fn, (c, a), {}, time_limit)
        if why is None:
            v, why = as_reward(v)
        values.append(v)
        whys.append(why)
    return values, whys


def score_batch(
    functions: list[RewardFunction],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
    *,
    completion_ids: list[list[int]] | None = None,
    time_limit: float = 5.0,
    where: str = "",
) -> RewardBatch:
    """Score n completions with every function; failed samples score 0 from that function.

    prompts, completions: (n,); columns: dataset column -> (n,) values (`answer` at least);
    time_limit: seconds per sample (a batched call gets n times as long). One warning per function
    that failed anywhere, naming it, the number of failed samples and the first of them.
    """
    n = len(completions)
    result = RewardBatch(total=[0.0] * n)
    answers = columns.get("answer", [""] * n)  # as the dataset holds them: a list stays a list
    for f in functions:
        if f.batched:
            values, whys = _call_batched(f, prompts, completions, columns, completion_ids, time_limit)
        else:
            values, whys = _call_per_sample(f, completions, answers, time_limit)
        failed = [i for i, w in enumerate(whys) if w is not None]
        result.calls += n
        result.failures += len(failed)
        if failed:
            i = failed[0]
            log.warning(
                "reward %s failed on %d of %d samples%s; they score 0 from it. First: sample %d (prompt %r): %s",
                f.name,
                len(failed),
                n,
                where,
                i,
                prompts[i][:60],
                whys[i],
            )
        result.per_function[f.name] = values
        for i, v in enumerate(values):
            if v is not None:
                result.total[i] += f.weight * v
    for i, t in enumerate(result.total):
        if not math.isfinite(t) or abs(t) > MAX_ABS_REWARD:
            log.warning("the weighted reward of sample %d%s is %r, beyond float32; scoring 0", i, where, t)
            result.total[i] = 0.0
    return result
