"""Verifiable rewards: exact numeric match, multiple-choice letter match, or a user function.

Every reward function has the signature `fn(completion: str, answer: str) -> float`. The trainer
calls them through `safe_reward`, so one that raises or runs past its time limit scores 0 with a
logged warning and training goes on.
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction
from typing import Callable

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


def numeric_match(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals `answer` as an exact rational, else 0.0.

    >>> numeric_match("so the total is \\\\boxed{1,234}", "1234")
    1.0
    >>> numeric_match("0.5 then 3/6", "\\\\frac{1}{2}")
    1.0
    """
    got, want = extract_answer(completion), parse_number(answer)
    if got is None or want is None:
        return 0.0
    value = parse_number(got)
    return float(value is not None and value == want)


def choice_match(completion: str, answer: str) -> float:
    """1.0 when the last standalone choice letter (A-J) of the completion equals `answer`'s.

    Reads \\boxed{B}, "(B)", "answer: B", "B." or a bare "B"; a letter inside a word does not count.
    """
    want = answer.strip().strip("()").upper()
    boxed = last_boxed(completion)
    text = boxed if boxed is not None else completion
    letters = re.findall(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])", text)
    return float(bool(letters) and letters[-1].upper() == want)


BUILTIN_REWARDS: dict[str, RewardFn] = {"numeric": numeric_match, "choice": choice_match}


def load_reward(spec: str) -> RewardFn:
    """A built-in reward by name ('numeric', 'choice') or a user function as 'module:function'."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"reward {spec!r}: expected one of {sorted(BUILTIN_REWARDS)} or 'module:function'")
    module, name = spec.split(":", 1)
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"reward {spec!r} is not callable")
    return fn


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _call_with_time_limit(fn: RewardFn, completion: str, answer: str, seconds: float) -> float:
    """Run fn under a time limit. In the main thread a timer signal interrupts it for real;
    elsewhere it runs in a worker thread that is abandoned on timeout (it cannot be killed)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(completion, answer)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn, completion, answer).result(timeout=seconds)
    except FutureTimeout:
        raise _Timeout from None
    finally:
        pool.shutdown(wait=False)


def safe_reward(fn: RewardFn, completion: str, answer: str, *, time_limit: float = 5.0) -> float:
    """fn(completion, answer) as a finite float; 0.0 with a warning if it raises, hangs past
    `time_limit` seconds, or returns something that is not a finite number."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        value = float(_call_with_time_limit(fn, completion, answer, time_limit))
    except _Timeout:
        log.warning("reward %s timed out after %.1fs; scoring 0", name, time_limit)
        return 0.0
    except Exception as e:  # a user's reward function may raise anything
        log.warning("reward %s raised %s: %s; scoring 0", name, type(e).__name__, e)
        return 0.0
    if value != value or value in (float("inf"), float("-inf")):
        log.warning("reward %s returned %r; scoring 0", name, value)
        return 0.0
    return value
