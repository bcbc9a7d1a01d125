"""Tree vs independent sampling at the same group size and length: tokens generated, forward
tokens, decode steps, wall time, and the shape of the trees (branch depth).

    python -m tempo_rl.benchmarks.bench_tree_rollout [--hidden 256 --layers 4 --group-size 8 ...]

A random Llama built from a config (no downloads); no EOS, so every response has exactly
`max_new_tokens` tokens and the token counts are exact. Plain timer: one warm-up, median of
`--reps` (and the minimum, since other load on a shared machine only adds time). Appends one
JSON line per configuration to --out (default ./bench_tree_rollout.jsonl; the repository keeps its own in
benchmarks/results/bench_tree_rollout.jsonl).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import tempo_rl
from tempo_rl.trainer.tree_rollout import SamplingConfig, TreeConfig, sample_tree

RESULTS = Path("bench_tree_rollout.jsonl")  # in the working directory unless --out says otherwise

ARMS = {
    "independent": None,
    "tree-entropy 2 roots": TreeConfig(n_roots=2, fork_at="entropy", min_fork_depth=4),
    "tree-random 2 roots": TreeConfig(n_roots=2, fork_at="random", min_fork_depth=4),
    "tree-random nested": TreeConfig(n_roots=2, fork_at="random", min_fork_depth=4, points_per_parent=1),
    "tree-fixed 1 root": TreeConfig(
        n_roots=1, fork_at="fixed", fork_depths=(16, 32, 48), forks_per_point=3, points_per_parent=3
    ),
}


def build_model(vocab: int, hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg).eval()


def run_arm(model, prompts, tree, args):
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, eos_token_id=None, pad_token_id=0)
    times, out = [], None
    for rep in range(args.reps + 1):  # first is warm-up
        gen = torch.Generator().manual_seed(rep)
        t0 = time.perf_counter()
        out = sample_tree(model, prompts, group_size=args.group_size, sampling=sampling, tree=tree, generator=gen)
        if rep:
            times.append(time.perf_counter() - t0)
    st = tempo_rl.tree_stats(out.responses, out.response_mask, out.group_ids).as_dict()
    return {
        "tokens_generated": out.stats["tokens_generated"],
        "forward_tokens": out.stats["forward_tokens"],
        "row_steps": out.stats["row_steps"],
        "decode_steps": out.stats["decode_steps"],
        "waves": out.stats["waves"],
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),  # on a shared machine other load only adds time
        "branch_token_fraction": st["branch_token_fraction"],
        "mean_first_branch_depth": st["mean_first_branch_depth"],
        "mean_branch_depth": st["mean_branch_depth"],
    }


def run_generate(model, prompts, args):
    """The same independent samples through `model.generate` (a reference for the decoding loop)."""
    ids = torch.tensor(prompts).repeat_interleave(args.group_size, 0)  # (P * G, Lp), equal lengths
    times = []
    for rep in range(args.reps + 1):
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                min_new_tokens=args.max_new_tokens,
                pad_token_id=0,
            )
        if rep:
            times.append(time.perf_counter() - t0)
    n = ids.shape[0] * args.max_new_tokens
    return {
        "tokens_generated": n,
        "forward_tokens": n + ids.numel(),
        "row_steps": n,
        "decode_steps": args.max_new_tokens,
        "waves": 1,
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "branch_token_fraction": float("nan"),
        "mean_first_branch_depth": float("nan"),
        "mean_branch_depth": float("nan"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--out",
        default=str(RESULTS),
        help="JSONL file the results are appended to (default: ./bench_tree_rollout.jsonl; "
        "the repository's own results: benchmarks/results/bench_tree_rollout.jsonl)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(args.vocab, args.hidden, args.layers)
    g = torch.Generator().manual_seed(123)
    prompts = [torch.randint(3, args.vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    print(
        f"| arm | tokens generated | forward tokens | row-steps | decode steps | waves | s (median) | s (min) | "
        f"branch-token frac | first-branch depth | mean branch depth |\n|{' --- |' * 11}"
    )
    for name, tree in [("independent (model.generate)", "generate"), *ARMS.items()]:
        r = run_generate(model, prompts, args) if tree == "generate" else run_arm(model, prompts, tree, args)
        print(
            f"| {name} | {r['tokens_generated']} | {r['forward_tokens']} | {r['row_steps']} | {r['decode_steps']} | "
            f"{r['waves']} | {r['seconds_median']:.3f} | {r['seconds_min']:.3f} | {r['branch_token_fraction']:.3f} | "
            f"{r['mean_first_branch_depth']:.1f} | {r['mean_branch_depth']:.1f} |",
            flush=True,
        )
        if not args.no_save:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with Path(args.out).open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "bench": "tree_rollout",
                            "arm": name,
                            "tree": repr(tree),
                            **vars(args),
                            **r,
                            "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s)",
                            "date": datetime.date.today().isoformat(),
                            "torch": torch.__version__,
                            "tempo_rl": tempo_rl.__version__,
                        }
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
