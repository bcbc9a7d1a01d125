"""`tempo-rl inspect`: draw a group's prefix tree and colour each token by its TEMPO advantage.

Writes OUT/<name>.html (self-contained: inline CSS and JavaScript, no network), one PNG of the
tree per group (OUT/<name>.png, or OUT/<name>.<group>.png when the file holds several groups),
and prints a text summary. The implementation lives in `tempo_rl.viz`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .backends import BACKENDS, get_backend
from .cli import UsageError, int_at_least
from .extras import MissingExtra, require

INPUT_HELP = """\
input format: JSONL, one response per line, with fields
  group_id   string or integer; responses with the same (step, group_id) form a group
  response   token ids (list of ints) or text
  reward     finite number
  step       optional integer (trainer dumps); text, prompt: optional strings, shown on the page
Text responses are tokenised with --tokenizer when given; without one they are split on
whitespace, with a vocabulary built from the file (so ids and text cannot be mixed then).
Token ids are shown through --tokenizer, through that whitespace vocabulary, or as #id.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = INPUT_HELP
    parser.add_argument("input", type=Path, help="rollouts or trainer dump, JSONL")
    parser.add_argument("-o", "--out", type=Path, default=Path("out"), help="output directory (default: out/)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer.json file (tokenizers) or a local directory for transformers' AutoTokenizer",
    )
    parser.add_argument(
        "--group",
        action="append",
        default=None,
        metavar="ID",
        help="only this group id (repeatable); 'STEP:ID' picks one step of a trainer dump",
    )
    parser.add_argument("--td-coef", type=float, default=1.0, help="weight of the TD term (default 1.0)")
    parser.add_argument("--eps", type=float, default=1e-6, help="added to the group std (default 1e-6)")
    parser.add_argument(
        "--no-norm-by-std",
        dest="norm_by_std",
        action="store_false",
        help="do not divide by the group std (Dr. GRPO form)",
    )
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="advantage backend (default: auto)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="skip the matplotlib PNG")
    parser.add_argument(
        "--top", type=int_at_least(0), default=5, help="tokens listed per group in the summary (default 5)"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "group"


def _selected(rollouts: list, wanted: list[str] | None) -> list:
    if not wanted:
        return rollouts
    names = set(wanted)
    keep = [r for r in rollouts if str(r.group_id) in names or f"{r.step}:{r.group_id}" in names]
    if not keep:
        raise ValueError(f"no group matches --group {', '.join(wanted)}")
    return keep


def _missing_extra(args: argparse.Namespace) -> str | None:
    """Say which install the command needs before it fails half-way (None when all is there)."""
    try:
        if args.png:
            require(("matplotlib",), "the PNG", "viz")
        if args.tokenizer:
            require(("tokenizers",), "--tokenizer", "train")
    except MissingExtra as e:
        return f"{e} (or pass --no-png)" if e.name == "matplotlib" else str(e)
    return None


def usage_error(args: argparse.Namespace) -> str | None:
    """Why these paths and flags cannot run (one line), or None: checked before anything is read."""
    if args.input.is_dir():
        return f"{args.input}: a directory; give a JSONL file of rollouts"
    if args.out.exists() and not args.out.is_dir():
        return f"-o {args.out}: an existing file; give a directory for the page and PNGs"
    if args.backend != "auto":
        try:
            get_backend(args.backend)
        except RuntimeError as e:
            return f"--backend {args.backend}: {e}"
    return _missing_extra(args)


def run(args: argparse.Namespace) -> int:
    from .viz import RolloutError, Settings, build_views, load_tokenizer, read_rollouts
    from .viz.figure import draw_tree_png
    from .viz.page import write_html
    from .viz.summary import summarize

    problem = usage_error(args)
    if problem:
        raise UsageError(problem)
    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        rollouts = _selected(read_rollouts(args.input, tokenizer), args.group)
        settings = Settings(norm_by_std=args.norm_by_std, eps=args.eps, td_coef=args.td_coef, backend=args.backend)
        views = build_views(rollouts, settings)
    except (RolloutError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"tempo-rl inspect: error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.input.stem
    written = [write_html(args.out / f"{stem}.html", views, settings, str(args.input))]
    if args.png:
        for view in views:
            key = view["group_id"] if view["step"] is None else f"{view['step']}-{view['group_id']}"
            name = f"{stem}.png" if len(views) == 1 else f"{stem}.{_slug(str(key))}.png"
            written.append(draw_tree_png(view, args.out / name))
    print(summarize(views, top=args.top), end="")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
