"""`tempo-rl` / `python -m tempo_rl`: one entry point, one subcommand per capability.

Subcommands are imported only when called, so `tempo-rl example` needs nothing beyond the core.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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

    parser = argparse.ArgumentParser(prog="tempo-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tempo-rl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
