"""`tempo-rl example`: the worked example of proofs_notes/worked-example.md."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from .reference.example import render

    print(render(), end="")
    return 0
