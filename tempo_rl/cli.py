"""`tempo-rl` / `python -m tempo_rl`: one entry point, one subcommand per capability.

Subcommands are imported only when called, so `tempo-rl example` needs nothing beyond the core.
A usage error (a bad flag or file, a missing optional package) is one line on stderr and exit
status 2, whichever command finds it: argparse's own errors and a `UsageError` or `MissingExtra`
raised by a command's `run` alike.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from .extras import MissingExtra


class UsageError(ValueError):
    """Bad input found before a command does its work; `main` prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: `tempo-rl bench: error: argument --repeats: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int):
    """An argparse `type`: an integer >= low, else one line naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


# name -> (module, help). Each module defines `add_arguments(parser)` and `run(args) -> int`.
COMMANDS = {
    "example": ("tempo_rl.cli_example", "print the worked example (tree, values, TEMPO vs GRPO)"),
    "inspect": ("tempo_rl.cli_inspect", "draw a group's prefix tree and per-token advantages (HTML, PNG, text)"),
    "bench": (
        "tempo_rl.benchmarks.bench_advantage",
        "time the advantage backends; tables and plots go to --out (default: the current directory)",
    ),
    "train": ("tempo_rl.trainer.cli_train", "train a causal LM with TEMPO / GRPO advantages (PPO-clip)"),
    "check": ("tempo_rl.cli_check", "check a TEMPO implementation against the reference (tempo_rl.testing)"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="tempo-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tempo-rl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (UsageError, MissingExtra) as e:
        print(f"tempo-rl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
