"""Tree vs independent sampling, both through vLLM (trainer/vllm_rollout.py): tokens generated and
wall time per group at group sizes G and completion lengths L.

    python -m tempo_rl.benchmarks.bench_vllm_rollout [--groups 8 16 --lengths 256 1024 --out FILE]

Runs in a venv with vLLM (`make .venv-vllm/.installed`). A random Llama (head_dim 64, vLLM's CPU
attention needs it) built from a config and saved locally; no EOS, so every response has exactly L
tokens and the token counts are exact. Arms: independent samples, the project's tree (2 roots,
entropy forks) and the TEMPO authors' (1 root, each of the G - 1 branches forked at the group's
highest-entropy position so far). Every group of a step goes into each vLLM call. Plain timer: one
short warm-up call of every arm, then `--reps` timed calls per cell; the load average is recorded
before and after each (a shared machine only adds time). Writes one JSON document to --out
(default ./bench_vllm_rollout.json), rewritten after every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import tempo_rl
from tempo_rl.trainer.tree_rollout import SamplingConfig, TreeConfig

ARMS = {
    "independent": None,
    "tree: entropy, 2 roots": TreeConfig(n_roots=2, fork_at="entropy", min_fork_depth=4),
    "tree: group_entropy, 1 root (authors')": TreeConfig(n_roots=1, fork_at="group_entropy", min_fork_depth=4),
}


def save_model(path: Path, *, vocab: int, hidden: int, layers: int, max_len: int) -> Path:
    from .bench_tree_rollout import build_model

    model = build_model(vocab, hidden, layers)
    model.config.max_position_embeddings = max_len
    model.save_pretrained(path)
    return path


def run_arm(llm, prompts, tree, group: int, length: int, reps: int) -> dict:
    from tempo_rl.trainer.vllm_rollout import sample_tree_vllm

    sampling = SamplingConfig(max_new_tokens=length, eos_token_id=None, pad_token_id=0)
    runs = []
    for rep in range(reps):
        load_before = os.getloadavg()[0]
        roll = sample_tree_vllm(llm, prompts, group_size=group, sampling=sampling, tree=tree, seed=rep)
        runs.append((roll.stats, load_before, os.getloadavg()[0]))
    p = len(prompts)
    stats = [s for s, _, _ in runs]
    return {
        "tokens_per_group": stats[0]["tokens_generated"] / p,
        "forward_tokens_per_group": stats[0]["forward_tokens"] / p,
        "cached_prompt_tokens_per_group": stats[0]["cached_prompt_tokens"] / p,
        "waves": stats[0]["waves"],
        "seconds_per_group": [s["seconds"] / p for s in stats],
        "seconds_per_group_min": min(s["seconds"] for s in stats) / p,
        "load_avg_1min": [[a, b] for _, a, b in runs],
    }


def warm_up(llm, prompts) -> None:
    """One short call of every arm: the engine's first requests pay one-off costs."""
    from tempo_rl.trainer.vllm_rollout import sample_tree_vllm

    sampling = SamplingConfig(max_new_tokens=16, eos_token_id=None, pad_token_id=0)
    for tree in ARMS.values():
        sample_tree_vllm(llm, prompts, group_size=4, sampling=sampling, tree=tree)


def plot(doc: dict, path: Path) -> None:
    """Tokens and seconds per group of each tree arm, as a fraction of independent sampling's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    cells = sorted({(r["length"], r["group_size"]) for r in rows})
    base = {(r["length"], r["group_size"]): r for r in rows if r["arm"] == "independent"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if a != "independent"]
    width = 0.8 / max(1, len(arms))
    for k, arm in enumerate(arms):
        mine = {(r["length"], r["group_size"]): r for r in rows if r["arm"] == arm}
        have = [i for i, c in enumerate(cells) if c in mine and c in base]  # cells this arm was run at
        xs = [i + (k - (len(arms) - 1) / 2) * width for i in have]
        tokens = [mine[cells[i]]["tokens_per_group"] / base[cells[i]]["tokens_per_group"] for i in have]
        seconds = [mine[cells[i]]["seconds_per_group_min"] / base[cells[i]]["seconds_per_group_min"] for i in have]
        axes[0].bar(xs, tokens, width, label=arm)
        axes[1].bar(xs, seconds, width, label=arm)
    labels = [f"G={g}\nL={n}" for n, g in cells]
    for ax, what in zip(axes, ("tokens generated", "wall time")):
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(cells)), labels)
        ax.set_ylabel(f"{what} / independent")
        ax.set_title(f"{what} per group, through vLLM")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the arms to run")
    ap.add_argument("--out", type=Path, default=Path("bench_vllm_rollout.json"))
    ap.add_argument("--plot", type=Path, default=None, help="also write the plot (PNG) here")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    from tempo_rl.trainer.vllm_rollout import make_engine

    max_len = args.prompt_len + max(args.lengths)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.prompts)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(
            Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers, max_len=max_len
        )
        llm = make_engine(path, max_model_len=max_len, skip_tokenizer_init=True)
        warm_up(llm, prompts)
        for length in args.lengths:
            for group in args.groups:
                for arm in args.arms:
                    tree = ARMS[arm]
                    row = {"arm": arm, "group_size": group, "length": length}
                    row.update(run_arm(llm, prompts, tree, group, length, args.reps))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    write(args.out, document(rows, args))  # rows so far survive an interrupted run
    doc = document(rows, args)
    write(args.out, doc)
    print(f"wrote {args.out}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")


def write(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def document(rows: list[dict], args) -> dict:
    import torch

    return {
        "bench": "vllm_rollout",
        "rows": rows,
        "model": {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "head_dim": 64},
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "reps": args.reps,
        "device": f"cpu ({platform.machine()}), {os.cpu_count()} cores, shared",
        "date": datetime.date.today().isoformat(),
        "vllm": __import__("vllm").__version__,
        "torch": torch.__version__,
        "tempo_rl": tempo_rl.__version__,
    }


if __name__ == "__main__":
    main()
