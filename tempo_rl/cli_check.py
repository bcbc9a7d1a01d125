"""`tempo-rl check module:function` (or `path/to/file.py:function`): check a TEMPO implementation
against the exact reference with `tempo_rl.testing.check_implementation`; prints the report and
exits 1 on a counterexample, 2 on a usage error (a bad flag, a device this machine lacks) or when
the target cannot be loaded; usage errors are one line on stderr, reported before any check runs.
Every option the target takes is swept unless a flag pins it (`--td-coef 1`, `--no-norm-by-std`,
`--eps 1e-6`, `--no-loss-mask`).

The target is a function with the signature of `tempo_rl.tempo_advantages` (`--adapter plain`),
a verl advantage estimator (`--adapter verl`), a loop over Python lists (`--adapter per-row`), or
an object made by `tempo_rl.testing.plain` / `verl_estimator` / `per_row` (used as it is).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from .targets import load_target

ADAPTERS = ("plain", "verl", "per-row")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="module:function or path/to/file.py:function")
    parser.add_argument(
        "--adapter",
        choices=ADAPTERS,
        default="plain",
        help="the target's signature (default: plain, like tempo_rl.tempo_advantages)",
    )
    parser.add_argument(
        "--supports",
        default="loss_mask,norm_by_std,eps,td_coef",
        help="comma-separated options the target takes (default: all four; '' for none)",
    )
    parser.add_argument("--max-examples", type=int, default=500, help="random batches to check (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="fix the random draws")
    parser.add_argument(
        "--td-coef",
        default=None,
        help="pin td_coef to these comma-separated values (default: sweep 1, 0, 0.5, 2)",
    )
    parser.add_argument(
        "--eps", default=None, help="pin eps to these comma-separated values (default: sweep 1e-6, 0.25)"
    )
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument(
        "--norm-by-std", dest="norm_by_std", action="store_const", const=True, default=None, help="pin norm_by_std=True"
    )
    norm.add_argument(
        "--no-norm-by-std",
        dest="norm_by_std",
        action="store_const",
        const=False,
        help="pin the Dr. GRPO form, norm_by_std=False (default: sweep both)",
    )
    loss = parser.add_mutually_exclusive_group()
    loss.add_argument(
        "--loss-mask",
        dest="loss_mask",
        action="store_const",
        const=True,
        default=None,
        help="every batch has a loss mask",
    )
    loss.add_argument(
        "--no-loss-mask",
        dest="loss_mask",
        action="store_const",
        const=False,
        help="no batch has a loss mask (default: both, when the target takes one)",
    )
    parser.add_argument(
        "--no-exact-non-branch",
        dest="exact_non_branch",
        action="store_false",
        help="non-branch tokens within tolerance of GRPO rather than bitwise",
    )
    parser.add_argument(
        "--no-batch-invariant",
        dest="batch_invariant",
        action="store_false",
        help="do not check bitwise batch invariance",
    )
    parser.add_argument("--device", default=None, help="move tensors there first (plain, verl), e.g. cuda")


def _floats(text: str | None) -> list[float] | None:
    """A comma-separated list of numbers (one number pins the option to it); None: not given.
    ValueError when it holds something else, or nothing."""
    if text is None:
        return None
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("no number given")
    return values


def usage_error(args: argparse.Namespace) -> str | None:
    """Why these flags cannot run a check (one line), or None: checked before anything is loaded."""
    if args.max_examples < 1:
        return f"--max-examples must be >= 1, got {args.max_examples}"
    for flag, text in (("--td-coef", args.td_coef), ("--eps", args.eps)):
        try:
            values = _floats(text) or []
        except ValueError:
            return f"{flag} must be comma-separated numbers, got {text!r}"
        for value in values:
            if not math.isfinite(value):
                return f"{flag} must be a finite number, got {value}"
            if flag == "--eps" and value < 0:
                return f"--eps must be >= 0, got {value}"
    if args.device is not None:
        if args.adapter == "per-row":
            return "--device: the per-row adapter passes Python lists, not tensors; drop --device"
        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, AssertionError, ValueError) as e:  # unknown name, or no such device here
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"--device {args.device!r} cannot be used on this machine: {reason}"
    return None


def _implementation(obj: Any, args: argparse.Namespace) -> Any:
    from tempo_rl import testing

    if isinstance(obj, testing.Implementation):
        return obj
    if not callable(obj):
        raise TypeError(f"{args.target} is a {type(obj).__name__}, not a function")
    supports = tuple(s.strip() for s in args.supports.split(",") if s.strip())
    if args.adapter == "plain":
        return testing.plain(obj, supports=supports, name=args.target, device=args.device)
    if args.adapter == "verl":
        return testing.verl_estimator(obj, supports=supports, name=args.target, device=args.device)
    return testing.per_row(obj, supports=supports, name=args.target)


def run(args: argparse.Namespace) -> int:
    problem = usage_error(args)
    if problem is not None:
        print(f"tempo-rl check: error: {problem}", file=sys.stderr)
        return 2
    try:
        from tempo_rl import testing
    except ImportError as e:
        print(f"tempo-rl check: error: {e}", file=sys.stderr)
        return 2
    try:
        impl = _implementation(load_target(args.target), args)
    except Exception as e:  # any failure to import the user's code is reported, not raised
        print(f"tempo-rl check: error: cannot load {args.target}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        report = testing.check_implementation(
            impl,
            norm_by_std=args.norm_by_std,
            td_coef=_floats(args.td_coef),
            eps=_floats(args.eps),
            loss_mask=args.loss_mask,
            exact_non_branch=args.exact_non_branch,
            batch_invariant=args.batch_invariant,
            max_examples=args.max_examples,
            seed=args.seed,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except testing.Counterexample as e:
        print(e)
        return 1
    except ValueError as e:  # an option pinned to several values that the target does not take
        print(f"tempo-rl check: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0
