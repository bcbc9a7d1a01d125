"""`check_implementation`: the contract's properties, checked on random batches against the reference.

For each batch drawn (`tempo_rl.testing.strategies`), the function under test must
1. accept it (no exception) and return a (B, L) float array, leaving its inputs unchanged;
2. return no NaN or inf;
3. return exactly 0 for every row of a degenerate group (one member, or all rewards equal);
4. reduce to GRPO at non-branch tokens: with `exact_non_branch`, bitwise (every non-branch token
   of a row holds the same bits, and the bits its own td_coef=0 output holds there, when it takes
   td_coef); otherwise within the tolerance of 5;
5. equal the reference (`tempo_rl.tempo_advantages(..., backend="reference")`, exact rationals
   rounded once) within the tolerance the project's own fast paths are held to
   (proofs_notes/fast-algorithm.md): relative one rounding of the returned dtype, plus
   4 * 64 * 2^-52 * (max_g |R| + 1) / (sigma_g + eps) absolute per group for float64 centring;
6. with `batch_invariant`, be bitwise batch invariant (spec 5b): the same rows with the groups
   interleaved otherwise (each group's members in their order), and the first group alone, give
   the same bits.

By default every option the function takes (its `supports`) is swept: each setting of SWEEP
(td_coef 1, 0, 0.5 and 2; norm_by_std True and False; eps 1e-6 and 0.25, with norm_by_std; loss
masks on every batch and on none) is checked on its share of the batches and on the pinned edge
cases, so a function that ignores an option is caught. Batches are handed over right padded, left
padded or mixed, and a third of them are 30 to 140 columns wide (block edges at 32, 64, 128).
Passing a value (or a sequence of values)
for an option pins it. Hypothesis shrinks a failure to a small batch; the AssertionError says which
property failed, under which option setting, the batch, the expected and returned values and the
first differing (row, token).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Flaky

import tempo_rl
from tempo_rl.reference import PrefixTree, group_rows
from tempo_rl.tolerances import allowed_error
from tempo_rl.tolerances import relative_tolerance as _rtol

from .adapters import Implementation, plain
from .minimise import minimise
from .strategies import PADDINGS, Case, Presentation, case_from, cases, interleave, layouts_of, left_pad, take

__all__ = ["PROPERTIES", "SWEEP", "CheckReport", "Counterexample", "Trial", "allowed_error", "check_implementation"]

# The values each option is checked at when not pinned: td_coef 0 (GRPO) and values other than 1,
# both normalisations, an eps large enough to move every normalised advantage, loss masks on every
# batch and on none. eps is swept only with norm_by_std=True, the only form that reads it.
SWEEP: dict[str, tuple[Any, ...]] = {
    "norm_by_std": (True, False),
    "eps": (1e-6, 0.25),
    "td_coef": (1.0, 0.0, 0.5, 2.0),
    "loss_mask": (True, False),
}
_DEFAULTS = {"norm_by_std": True, "eps": 1e-6, "td_coef": 1.0, "loss_mask": False}

PROPERTIES = {
    "accepts": "accepts every valid batch (no exception)",
    "shape": "returns a (B, L) float array",
    "inputs": "leaves its inputs unchanged",
    "finite": "no NaN or inf on valid input",
    "degenerate": "degenerate groups (one member, or all rewards equal) are exactly 0",
    "grpo": "GRPO reduction at non-branch tokens",
    "reference": "equals the reference within the documented tolerance",
    "invariance": "batch invariance, bitwise (other groups, other positions)",
}

# Pinned edge cases: group of one, equal rewards, empty responses, one token, identical responses,
# an empty batch, a response ending where another continues, |R| >> sigma, a tiny spread.
EDGE = (
    case_from([[3, 1]], [1.0], ["a"]),
    case_from([[1, 2], [1, 3], [2]], [0.5, 0.5, 0.5], [0, 0, 0]),
    case_from([[], [], [5]], [1.0, 0.0, 2.0], [0, 0, 0]),
    case_from([[4], [4]], [1.0, 0.0], [0, 0]),
    case_from([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [1.0, 0.0, 2.0], ["q"] * 3),
    case_from([], [], []),
    case_from([[1], [1, 2], [1, 2, 0]], [0.0, 1.0, 3.0], [7, 7, 7]),
    case_from([[1, 2], [1, 3], [1, 3]], [1e8, 1e8 + 0.5, 1e8 + 1.0], [0, 0, 0]),
    case_from([[1, 2], [1, 3], [2]], [0.0, 1e-6, 3e-6], [0, 0, 0]),  # tiny advantages: float16's subnormals
)


@dataclass(frozen=True)
class CheckReport:
    """What `check_implementation` verified: printed, it reads as a short report."""

    name: str
    examples: int  # batches the function was run on (each property checked on each)
    properties: tuple[str, ...]  # properties checked
    options: dict[str, tuple[Any, ...]]  # each option's values checked (loss_mask: with, without)
    not_checked: tuple[str, ...] = field(default=())  # properties left out, and why
    settings: int = 1  # option settings checked (combinations of the values in `options`)
    asked: int = 0  # max_examples: random batches asked for, shared by the settings
    random: int = 0  # random batches run, all settings together (each setting runs at least one)
    edge_cases: int = 0  # pinned edge cases, each run under every setting

    def __str__(self) -> str:
        opts = ", ".join(f"{k} in {_values(v)}" for k, v in self.options.items())
        share = -(-self.asked // self.settings) if self.settings else 0
        head = (
            f"{self.name}: no counterexample in {self.random} random batches ({self.asked} asked for, "
            f"{share} per option setting) and {self.edge_cases} pinned edge cases under each of "
            f"{self.settings} option settings ({self.examples} batches in all)"
        )
        lines = [f"{head}; options: {opts}"]
        lines += [f"  ok   {p}" for p in self.properties]
        lines += [f"  --   {p}" for p in self.not_checked]
        return "\n".join(lines)


@dataclass(frozen=True)
class Trial:
    """One checked batch: the values, how they are handed over, and a second row order."""

    case: Case  # the batch, contiguous
    presentation: Presentation | None  # layouts and dtypes handed to the function; None: as `case`
    order: torch.Tensor  # (B,) rows with groups interleaved otherwise, members in their order

    @property
    def handed_over(self) -> Case:
        """A fresh copy each time, so a function that writes into its inputs never changes the batch
        the reference, the report and the next call see."""
        fresh = _copied(self.case)
        return fresh if self.presentation is None else self.presentation.apply(fresh)


def _copied(case: Case) -> Case:
    """The same values in memory of their own (a contiguous batch stays contiguous)."""
    ids = case.group_ids
    ids = ids.clone() if isinstance(ids, torch.Tensor) else ids.copy() if isinstance(ids, np.ndarray) else list(ids)
    loss = None if case.loss_mask is None else case.loss_mask.clone()
    return replace(
        case,
        responses=case.responses.clone(),
        response_mask=case.response_mask.clone(),
        rewards=case.rewards.clone(),
        group_ids=ids,
        loss_mask=loss,
    )


class Counterexample(AssertionError):
    """A batch on which the function breaks a property; the message is the readable report.

    property: a key of PROPERTIES; trial: the batch (`trial.case`) and how it was handed over;
    options: the option setting it failed under (norm_by_std, eps, td_coef, and loss_mask: whether
    the batches of that setting carry a loss mask).
    """

    def __init__(self, message: str, property: str, trial: Trial, options: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.property = property
        self.trial = trial
        self.options = dict(options or {})


@dataclass
class _Progress:
    """A line every `every` seconds while a check runs (to `say`; None: silent), so a slow function
    is seen to be working and how long it will take."""

    say: Callable[[str], None] | None
    every: float
    asked: int  # random batches asked for, all settings together
    batches: int = 0
    calls: int = 0
    start: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)

    def batch(self, setting: str) -> None:
        self.batches += 1
        now = time.monotonic()
        if self.say is None or now - self.last < self.every:
            return
        self.last = now
        spent = now - self.start
        left = spent / self.batches * max(self.asked - self.batches, 0)
        self.say(
            f"checking: {self.batches} batches ({self.calls} calls of the function) in {spent:.0f} s, {setting}; "
            f"about {left:.0f} s more for the {self.asked} random batches asked, plus the edge cases"
        )


@dataclass(frozen=True)
class _Run:
    impl: Implementation
    options: dict[str, Any]  # norm_by_std, eps, td_coef
    exact_non_branch: bool
    batch_invariant: bool
    loss_mask: bool = False  # the drawn batches carry a loss mask (only when the function takes one)
    setting: str = ""  # "setting k of n" in a failure's report
    progress: _Progress = field(default_factory=lambda: _Progress(None, 0.0, 0))

    @property
    def described(self) -> dict[str, Any]:
        """The option setting as a failure reports it."""
        return {**self.options, "loss_mask": self.loss_mask}


# ------------------------------------------------------------------ tolerance and reference


def _reference(case: Case, run: _Run) -> torch.Tensor:
    """(B, L) float64: the exact advantages rounded once."""
    loss = case.loss_mask if "loss_mask" in run.impl.supports else None
    return tempo_rl.tempo_advantages(
        case.responses,
        case.response_mask,
        case.rewards.double(),
        case.group_list,
        loss_mask=loss,
        backend="reference",
        **run.options,
    )


def _degenerate_rows(case: Case) -> torch.Tensor:
    """(B,) bool: rows whose group has one member or equal rewards (in the rewards' dtype)."""
    flags = torch.zeros(case.rewards.shape[0], dtype=torch.bool)
    for rows in group_rows(case.group_list).values():
        g = case.rewards[rows]
        flags[rows] = len(rows) < 2 or bool(g.max() == g.min())
    return flags


def _non_branch_tokens(case: Case, run: _Run) -> torch.Tensor:
    """(B, L) bool: real, kept tokens where Members(child) == Members(parent) (the reference trie)."""
    out = torch.zeros(case.responses.shape, dtype=torch.bool)
    seqs = case.sequences
    for rows in group_rows(case.group_list).values():
        tree = PrefixTree([seqs[i] for i in rows], [0] * len(rows))
        for k, i in enumerate(rows):
            flags = tree.is_branch_token(k)
            out[i, : len(flags)] = ~torch.tensor(flags, dtype=torch.bool)
    if case.loss_mask is not None and "loss_mask" in run.impl.supports:
        out &= case.loss_mask.bool()
    return out


# ------------------------------------------------------------------ reporting


def _fmt(x: float) -> str:
    return f"{x:.9g}"


def _matrix(t: torch.Tensor, limit: int = 24) -> str:
    rows = t.tolist()
    shown = [
        f"  {i:>3}  [" + ", ".join(_fmt(v) for v in row[:16]) + (", ..." if len(row) > 16 else "") + "]"
        for i, row in enumerate(rows[:limit])
    ]
    if len(rows) > limit:
        shown.append(f"  ... {len(rows) - limit} more rows")
    return "\n".join(shown) if shown else "  (no rows)"


def _batch_table(case: Case) -> str:
    lines = ["  row  group       reward            n  tokens (real | padding)"]
    lengths, ids = case.lengths, case.group_list
    loss = case.loss_mask.bool().tolist() if case.loss_mask is not None else None
    for i, row in enumerate(case.responses.tolist()[:24]):
        n = lengths[i]
        tokens = ", ".join(map(str, row[:n])) + (" | " + ", ".join(map(str, row[n:])) if n < len(row) else "")
        extra = "" if loss is None else "  loss_mask " + "".join("1" if b else "0" for b in loss[i])
        lines.append(f"  {i:>3}  {ids[i]!r:<10}  {case.rewards[i].item()!r:<16}  {n:>2}  [{tokens}]{extra}")
    if len(lengths) > 24:
        lines.append(f"  ... {len(lengths) - 24} more rows")
    return "\n".join(lines)


def _reproduce(case: Case, device: str | None = None) -> str:
    """Python lines that rebuild the batch, on the device the function was handed it."""
    loss = None if case.loss_mask is None else case.loss_mask.int().tolist()
    on = "" if device is None else f", device={device!r}"
    dtype = str(case.rewards.dtype)
    return (
        f"  responses = torch.tensor({case.responses.tolist()}{on})\n"
        f"  response_mask = torch.tensor({case.response_mask.int().tolist()}{on})\n"
        f"  rewards = torch.tensor({case.rewards.tolist()}, dtype={dtype}{on})\n"
        f"  group_ids = {case.group_list!r}\n"
        f"  loss_mask = {'None' if loss is None else f'torch.tensor({loss}{on})'}"
    )


def _where(case: Case, row: int, token: int) -> str:
    n = case.lengths[row]
    if token >= n:
        return f"padding (row {row} has n = {n} tokens)"
    if case.loss_mask is not None and not bool(case.loss_mask[row, token]):
        return f"token {token} of {n}, loss_mask 0"
    return f"token {token} of {n}"


def _fail(
    prop: str,
    trial: Trial,
    run: _Run,
    *,
    detail: str = "",
    at: tuple[int, int] | None = None,
    expected: torch.Tensor | None = None,
    returned: torch.Tensor | None = None,
    bitwise: bool = False,
) -> None:
    """Raise the AssertionError of a counterexample (one place, so hypothesis sees one failure)."""
    case = trial.case
    B, L = case.responses.shape
    opts = ", ".join(f"{k}={v}" for k, v in run.options.items())
    loss = "batches drawn with loss masks" if run.loss_mask else "batches drawn without loss masks"
    where = f" ({run.setting})" if run.setting else ""
    lines = [f"{run.impl.name} fails: {PROPERTIES[prop]}", f"  options{where}: {opts}; {loss}"]
    if detail:
        lines.append(f"  {detail}")
    if at is not None and expected is not None and returned is not None:
        row, token = at
        e, r = expected[row, token].item(), returned[row, token].item()
        lines.append(f"  first difference at (row {row}, token {token}), {_where(case, row, token)}:")
        show = (lambda v: f"{v!r}  ({float(v).hex()})") if bitwise else repr
        lines += [f"    expected  {show(e)}", f"    returned  {show(r)}"]
    lines.append(f"counterexample batch, B = {B}, L = {L}")
    how = (
        "contiguous tensors"
        if trial.presentation is None
        else trial.presentation.describe(with_loss=case.loss_mask is not None)
    )
    lines.append(f"  handed over as: {how}")
    lines.append(_batch_table(case))
    if expected is not None:
        lines += ["expected:", _matrix(expected)]
    if returned is not None:
        lines += ["returned:", _matrix(returned)]
    left = trial.presentation.left_padded if trial.presentation is not None else ()
    if left:  # the table and matrices read the rows right padded; the reproduction is as handed over
        lines.append(f"  (rows {', '.join(map(str, left))} were handed over left padded; shown right padded)")
        case = left_pad(case, [i in left for i in range(B)])
    lines += ["reproduce:", _reproduce(case, run.impl.device), f"  options = {run.options!r}"]
    raise Counterexample("\n".join(lines), prop, trial, run.described)


def _first(bad: torch.Tensor) -> tuple[int, int]:
    row, token = torch.nonzero(bad)[0].tolist()
    return row, token


# ------------------------------------------------------------------ calling the function


def _as_output(returned: Any, case: Case) -> torch.Tensor | str:
    """The returned advantages as a CPU tensor, or why they cannot be read as (B, L)."""
    B, L = case.responses.shape
    if isinstance(returned, torch.Tensor) and returned.is_meta:
        return f"returned a tensor of shape {tuple(returned.shape)} on the meta device, which holds no values"
    try:
        return _read_output(returned, case)
    except Exception as e:  # a result that cannot be read as numbers is a counterexample, not a crash
        return f"returned a {type(returned).__name__} that cannot be read as numbers ({type(e).__name__}: {e})"


def _read_output(returned: Any, case: Case) -> torch.Tensor | str:
    B, L = case.responses.shape
    if isinstance(returned, torch.Tensor):
        out = returned.detach().cpu()
    elif hasattr(returned, "__array__"):
        out = torch.from_numpy(np.array(returned))
    elif isinstance(returned, (list, tuple)) and len(returned) == B:
        out = torch.zeros((B, L), dtype=torch.float64)
        for i, (row, n) in enumerate(zip(returned, case.lengths)):
            values = [float(v) for v in row]
            if len(values) not in (n, L):
                return f"row {i} has {len(values)} values, expected n = {n} (or L = {L})"
            out[i, : len(values)] = torch.tensor(values, dtype=torch.float64)
    else:
        return f"returned a {type(returned).__name__}"
    if tuple(out.shape) != (B, L):
        return f"returned shape {tuple(out.shape)}, expected ({B}, {L})"
    if not out.dtype.is_floating_point:
        return f"returned dtype {out.dtype}, expected a float dtype"
    return out


def _call(trial: Trial, run: _Run, case: Case, **override: Any) -> torch.Tensor:
    """The function on `case` (a fresh copy, in the columns it was handed), its result as a (B, L)
    CPU tensor in the right-padded columns of `trial.case`."""
    options = {**run.options, **override}
    before = _copied(case)
    run.progress.calls += 1
    try:
        returned = run.impl.call(case, options)
    except (Exception, SystemExit) as e:  # failing on valid input is a counterexample (sys.exit too)
        hint = ""
        if isinstance(e, TypeError) and "keyword" in str(e):
            hint = " (declare the options it takes: plain(fn, supports=(...)))"
        _fail("accepts", trial, run, detail=f"raised {type(e).__name__}: {e}{hint}")
    out = _as_output(returned, case)
    if isinstance(out, str):
        _fail("shape", trial, run, detail=out)
    assert isinstance(out, torch.Tensor)
    changed = _written_into(before, case)
    if changed:
        _fail("inputs", trial, run, detail=f"wrote into {changed}; the batch shown is the one it was handed")
    return _right_padded(out, case)


def _written_into(before: Case, after: Case) -> str:
    """The inputs whose values differ from their copy taken before the call ('' when none)."""
    names = []
    for name in ("responses", "response_mask", "rewards", "loss_mask"):
        a, b = getattr(before, name), getattr(after, name)
        if a is not None and not torch.equal(a, b):
            names.append(name)
    ids = before.group_ids
    if isinstance(ids, torch.Tensor) and not torch.equal(ids, torch.as_tensor(after.group_ids)):
        names.append("group_ids")
    elif isinstance(ids, np.ndarray) and not np.array_equal(ids, np.asarray(after.group_ids)):
        names.append("group_ids")
    elif isinstance(ids, list) and ids != list(after.group_ids):
        names.append("group_ids")
    return ", ".join(names)


def _right_padded(out: torch.Tensor, case: Case) -> torch.Tensor:
    """(B, L): rows handed over left padded rolled back to the columns of the right-padded batch
    (each row's n values first), where the checks and the report read them."""
    starts = [s for s, _ in case.spans]
    if not any(starts):
        return out
    return torch.stack([torch.roll(row, -s) for row, s in zip(out, starts)])


# ------------------------------------------------------------------ the properties


def _check_finite(trial: Trial, run: _Run, out: torch.Tensor, ref: torch.Tensor) -> None:
    bad = ~torch.isfinite(out)
    if bad.any():
        _fail("finite", trial, run, at=_first(bad), expected=ref, returned=out)


def _check_degenerate(trial: Trial, run: _Run, out: torch.Tensor, ref: torch.Tensor) -> None:
    rows = _degenerate_rows(trial.case)
    bad = (out != 0) & rows[:, None]
    if bad.any():
        _fail(
            "degenerate",
            trial,
            run,
            at=_first(bad),
            expected=ref,
            returned=out,
            detail=f"row {_first(bad)[0]}'s group has one member or equal rewards: every advantage is 0",
        )


def _check_grpo(trial: Trial, run: _Run, out: torch.Tensor, ref: torch.Tensor) -> None:
    case = trial.case
    nb = _non_branch_tokens(case, run) & ~_degenerate_rows(case)[:, None]  # (B, L)
    if not run.exact_non_branch:
        _check_close(trial, run, out, ref, nb, "grpo", "at non-branch tokens TEMPO is GRPO (TD = 0)")
        return
    B, L = nb.shape
    bits = _bits(out)  # (B, L)
    first = torch.where(nb, torch.arange(L), L).amin(1) if L else torch.zeros(B, dtype=torch.long)  # (B,)
    row_bits = bits.gather(1, first.clamp(max=max(L - 1, 0))[:, None]) if L else bits  # (B, 1)
    bad = nb & (bits != row_bits)
    if bad.any():
        row, token = _first(bad)
        expected = out.clone()
        expected[row, token] = out[row, first[row]]
        _fail(
            "grpo",
            trial,
            run,
            at=(row, token),
            expected=expected,
            returned=out,
            bitwise=True,
            detail=f"non-branch tokens of a row must hold the same bits (row {row}: token {first[row].item()} "
            f"and token {token} are both non-branch); expected shows the row's value",
        )
    if "td_coef" in run.impl.supports and run.options["td_coef"] != 0.0:
        grpo = _call(trial, run, trial.handed_over, td_coef=0.0)
        if grpo.dtype != out.dtype:
            _fail(
                "grpo",
                trial,
                run,
                detail=f"td_coef=0 returns dtype {grpo.dtype}, td_coef={run.options['td_coef']} "
                f"returns {out.dtype}: they cannot be equal bitwise",
            )
        bad = nb & (_bits(grpo) != _bits(out))
        if bad.any():
            _fail(
                "grpo",
                trial,
                run,
                at=_first(bad),
                expected=grpo,
                returned=out,
                bitwise=True,
                detail="at non-branch tokens the output must equal its own td_coef=0 output bitwise "
                "(expected: the function's td_coef=0 output)",
            )


def _check_close(
    trial: Trial, run: _Run, out: torch.Tensor, ref: torch.Tensor, where: torch.Tensor, prop: str, detail: str
) -> None:
    atol = allowed_error(trial.case, out.dtype, norm_by_std=run.options["norm_by_std"], eps=run.options["eps"])
    err = (out.double() - ref).abs()
    # One rounding of the returned dtype: relative, plus one step of its subnormals (float16 rounds
    # values below 6.1e-5 to multiples of 6e-8, not to 2^-11 of themselves).
    finfo = torch.finfo(out.dtype)
    bound = _rtol(out.dtype) * ref.abs() + atol + finfo.smallest_normal * finfo.eps  # (B, L)
    bad = where & ~(err <= bound)
    if bad.any():
        row, token = _first(bad)
        _fail(
            prop,
            trial,
            run,
            at=(row, token),
            expected=ref,
            returned=out,
            detail=f"{detail}; |returned - expected| = {err[row, token].item():.3g} > "
            f"tolerance {bound[row, token].item():.3g} there",
        )


def _bits(x: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so that -0.0 != 0.0 and NaN == NaN of the same payload."""
    return x.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[x.element_size()])


def _check_invariance(trial: Trial, run: _Run, out: torch.Tensor) -> None:
    case = trial.case
    B = case.responses.shape[0]
    if B >= 2 and not torch.equal(trial.order, torch.arange(B)):
        moved = _call(trial, run, take(case, trial.order))[torch.argsort(trial.order)]
        _compare_bits(
            trial,
            run,
            out,
            moved,
            torch.ones(B, dtype=torch.bool),
            f"the same rows in the order {trial.order.tolist()} (groups interleaved otherwise, "
            f"members in their order) give other bits; expected: the batch as handed over",
        )
    groups = list(group_rows(case.group_list).values())
    if len(groups) >= 2:
        rows = torch.tensor(groups[0], dtype=torch.long)
        part = _call(trial, run, take(case, rows))
        alone = torch.zeros(out.shape, dtype=part.dtype)
        alone[rows] = part
        keep = torch.zeros(B, dtype=torch.bool)
        keep[rows] = True
        _compare_bits(
            trial,
            run,
            out,
            alone,
            keep,
            f"the group of rows {groups[0]} alone (contiguous) gives other bits than among the "
            f"other groups; expected: the batch as handed over",
        )


def _compare_bits(
    trial: Trial, run: _Run, out: torch.Tensor, other: torch.Tensor, rows: torch.Tensor, detail: str
) -> None:
    if other.dtype != out.dtype:
        _fail("invariance", trial, run, detail=f"{detail} (dtype {other.dtype} instead of {out.dtype})")
    bad = (_bits(out) != _bits(other)) & rows[:, None]
    if bad.any():
        _fail("invariance", trial, run, at=_first(bad), expected=out, returned=other, bitwise=True, detail=detail)


def _check_one(trial: Trial, run: _Run, stop_after: str | None = None) -> None:
    """Every property on one batch, in the order of PROPERTIES (the first broken one raises);
    `stop_after` skips the properties after that one (the minimiser needs no more)."""
    ref = _reference(trial.case, run)  # first: a function that writes into its inputs cannot move the oracle
    out = _call(trial, run, trial.handed_over)
    _check_finite(trial, run, out, ref)
    everywhere = torch.ones(out.shape, dtype=torch.bool)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("degenerate", lambda: _check_degenerate(trial, run, out, ref)),
        ("grpo", lambda: _check_grpo(trial, run, out, ref)),
        (
            "reference",
            lambda: _check_close(
                trial,
                run,
                out,
                ref,
                everywhere,
                "reference",
                "expected: tempo_rl.tempo_advantages(..., backend='reference')",
            ),
        ),
        ("invariance", lambda: _check_invariance(trial, run, out) if run.batch_invariant else None),
    ]
    for name, step in steps:
        if stop_after in ("accepts", "shape", "inputs", "finite"):
            return
        step()
        if name == stop_after:
            return


# ------------------------------------------------------------------ the entry point


@st.composite
def _trials(draw, run: _Run) -> Trial:
    impl, loss = run.impl, run.loss_mask
    case = draw(
        st.one_of(
            cases(max_batch=12, max_len=10, max_group=6, with_loss_mask=loss),
            cases(max_batch=80, max_len=5, max_group=64, with_loss_mask=loss),
            # rows across columns 32, 64 and 128, where a block-based kernel starts its next block
            cases(max_batch=6, min_len=30, max_len=140, max_group=4, with_loss_mask=loss),
        )
    )
    presentation = draw(layouts_of(case, paddings=PADDINGS)) if impl.layouts else None
    order = interleave(case.group_list, draw(st.permutations(range(len(case.group_list)))))
    return Trial(case, presentation, order)


def _pinned(name: str, value: Any) -> tuple[Any, ...] | None:
    """An option's values as given (a value or a non-empty sequence of them), checked; None: sweep."""
    if value is None:
        return None
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"{name} must be a value or a non-empty sequence of values, got {value!r}")
    for v in values:
        if name in ("norm_by_std", "loss_mask"):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool (or a sequence of bools), got {type(v).__name__}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite real number (or a sequence of them), got {v!r}")
        elif name == "eps" and v < 0:
            raise ValueError(f"eps must be >= 0, got {v}")
    return tuple(float(v) if name in ("eps", "td_coef") else v for v in values)


def _option_values(impl: Implementation, pins: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Each option's values to check: pinned, swept (SWEEP) when the function takes it, else the
    default (the behaviour a function that does not take the option is assumed to have)."""
    out = {}
    for name in SWEEP:
        values = _pinned(name, pins[name])
        taken = name in impl.supports
        if values is None:
            values = SWEEP[name] if taken else (_DEFAULTS[name],)
        elif not taken and len(values) > 1:
            raise ValueError(f"{name}: the function does not take it (supports), so give one value, not {values}")
        if name == "loss_mask" and not taken and values != (False,):
            raise ValueError("loss_mask=True: the function does not take a loss mask (supports)")
        out[name] = values
    return out


def _settings(values: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination, except eps beyond its first value where norm_by_std=False (not read there)."""
    combos = []
    for norm, eps, td, loss in itertools.product(*(values[k] for k in SWEEP)):
        if not norm and eps != values["eps"][0]:
            continue
        combos.append({"norm_by_std": norm, "eps": eps, "td_coef": td, "loss_mask": loss})
    return combos


def _values(values: tuple[Any, ...]) -> str:
    return "(" + ", ".join(map(str, values)) + ")"


def _check_arguments(max_examples: Any) -> None:
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")


def _failure(trial: Trial, run: _Run, stop_after: str | None = None) -> Counterexample | None:
    try:
        _check_one(trial, run, stop_after)
    except Counterexample as e:
        return e
    return None


def _minimised(found: Counterexample, run: _Run) -> Counterexample:
    """The counterexample `minimise` reaches from `found`, its message saying where it started."""
    start = found.trial.case.responses.shape
    prop = found.property
    # A wrong value on a non-branch token (or a degenerate group) is also a difference from the
    # reference: a smaller batch that shows it only as such is kept, or a batch can be stuck where
    # every smaller one breaks the general property but not the special one.
    kept = (prop, "reference") if prop in ("degenerate", "grpo") else (prop,)
    small = minimise(found.trial, lambda t: getattr(_failure(t, run, kept[-1]), "property", None) in kept)
    final = _failure(small, run) or found
    note = f"(minimised from a batch of B = {start[0]}, L = {start[1]})"
    return Counterexample(f"{final}\n{note}", final.property, final.trial, final.options)


def check_implementation(
    fn: Callable[..., Any] | Implementation,
    *,
    norm_by_std: bool | Sequence[bool] | None = None,
    td_coef: float | Sequence[float] | None = None,
    eps: float | Sequence[float] | None = None,
    loss_mask: bool | Sequence[bool] | None = None,
    exact_non_branch: bool = True,
    batch_invariant: bool = True,
    max_examples: int = 500,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 10.0,
) -> CheckReport:
    """Check a TEMPO implementation against the exact reference on `max_examples` random batches,
    under every setting of the options it takes.

    Args:
        fn: `fn(responses, response_mask, rewards, group_ids, **options) -> (B, L)` tensor or
            array (as `tempo_rl.tempo_advantages`), or an `Implementation` from `plain`,
            `verl_estimator` or `per_row` for other signatures and for functions that do not take
            every option (loss_mask, norm_by_std, eps, td_coef).
        norm_by_std, td_coef, eps: None (default) sweeps the option through SWEEP's values when
            the function takes it; a value, or a sequence of values, pins it. An option the
            function does not take is assumed fixed at the value given (default: True, 1.0, 1e-6).
        loss_mask: None sweeps batches with a loss mask and without (when the function takes
            one); True or False pins either.
        exact_non_branch: non-branch tokens must equal GRPO bitwise (spec: "bitwise in every
            implementation"); False checks them within the tolerance.
        batch_invariant: check bitwise batch invariance (spec 5b).
        max_examples: random batches to draw in all, shared evenly by the option settings (at
            least one each); the pinned edge cases run under every setting on top.
        seed: fix hypothesis's random draws (default: a fresh seed each run).
        progress: called with a line of progress every `progress_every` seconds while the check
            runs (the command line prints it to stderr); None: silent.

    Returns:
        A CheckReport (print it for a summary).

    Raises:
        AssertionError: a counterexample, minimised: the property, the option setting, the batch
            (as handed over: layouts, dtypes, which rows left padded), the expected and returned
            values and the first differing (row, token). A `Counterexample`, whose `.property`,
            `.options` and `.trial` hold the same. A function that fails a batch once and passes
            it when run again is reported the same way, marked nondeterministic.

    >>> import tempo_rl, tempo_rl.testing as tt
    >>> fn = lambda *a, **kw: tempo_rl.tempo_advantages(*a, backend="torch", **kw)
    >>> report = tt.check_implementation(fn, max_examples=5)
    >>> report.settings, report.options["td_coef"]
    (24, (1.0, 0.0, 0.5, 2.0))
    """
    _check_arguments(max_examples)
    impl = fn if isinstance(fn, Implementation) else plain(fn)
    values = _option_values(impl, {"norm_by_std": norm_by_std, "eps": eps, "td_coef": td_coef, "loss_mask": loss_mask})
    settings_ = _settings(values)
    share = -(-max_examples // len(settings_))  # ceil: every setting gets its share
    random, edge = 0, 0
    tracker = _Progress(progress, progress_every, share * len(settings_))
    for k, setting in enumerate(settings_):
        options = {key: setting[key] for key in ("norm_by_std", "eps", "td_coef")}
        run = _Run(
            impl,
            options,
            exact_non_branch,
            batch_invariant,
            loss_mask=setting["loss_mask"],
            setting=f"setting {k + 1} of {len(settings_)}",
            progress=tracker,
        )
        drawn, pinned = _check_setting(run, share, None if seed is None else seed + k)
        random, edge = random + drawn, edge + pinned
    grpo = PROPERTIES["grpo"] + (" (bitwise)" if exact_non_branch else " (within tolerance)")
    checked = ["accepts", "shape", "inputs", "finite", "degenerate", "grpo", "reference"]
    names = [grpo if p == "grpo" else PROPERTIES[p] for p in checked]
    skipped = []
    if batch_invariant:
        names.append(PROPERTIES["invariance"])
    else:
        skipped.append(PROPERTIES["invariance"] + ": not asked (batch_invariant=False)")
    if "loss_mask" not in impl.supports:
        skipped.append("loss masks: the function does not take one (supports)")
    for name in ("norm_by_std", "eps", "td_coef"):
        if name not in impl.supports:
            skipped.append(f"{name}: the function does not take it (supports); assumed {values[name][0]}")
    if not impl.layouts:
        skipped.append("memory layouts and dtypes: the adapter builds its own inputs")
    return CheckReport(
        impl.name, random + edge, tuple(names), values, tuple(skipped), len(settings_), max_examples, random, len(EDGE)
    )


def _check_setting(run: _Run, max_examples: int, seed: int | None) -> tuple[int, int]:
    """Random batches, then the pinned edge cases, under one option setting; (random, edge) batches run."""
    count = [0]
    found: list[Counterexample] = []

    def check(trial: Trial) -> None:
        count[0] += 1
        run.progress.batch(run.setting)
        try:
            _check_one(trial, run)
        except Counterexample as e:
            found.append(e)  # kept: a function that fails only sometimes makes hypothesis raise Flaky
            raise

    base: dict[str, Any] = dict(
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    # Random batches first, then the pinned edge cases. Hypothesis only finds a failure; `minimise`
    # shrinks it (rows, columns, tokens, rewards, layouts) to a small batch failing the same way.
    drawn = settings(max_examples=max_examples, phases=(Phase.generate,), **base)(given(trial=_trials(run))(check))
    if seed is not None:
        drawn = hypothesis_seed(seed)(drawn)
    pinned = given(trial=_trials(run))(check)
    for case in EDGE:
        pinned = example(trial=Trial(case, None, torch.arange(case.responses.shape[0])))(pinned)
    pinned = settings(phases=(Phase.explicit,), **base)(pinned)
    runs: list[int] = []
    for stage in (drawn, pinned):
        try:
            stage()
        except Counterexample as failure:
            raise _minimised(failure, run) from None
        except Flaky:
            if not found:
                raise
            raise _nondeterministic(found[0]) from None
        runs.append(count[0] - sum(runs))
    return runs[0], runs[1]


def _nondeterministic(first: Counterexample) -> Counterexample:
    """The first failure of a function that then passed the same batch: reported as it was seen."""
    note = (
        "(nondeterministic: the function failed on this batch, then passed when the same batch was run "
        "again; not minimised, since a smaller batch cannot be told to fail for the same reason)"
    )
    return Counterexample(f"{first}\n{note}", first.property, first.trial, first.options)
