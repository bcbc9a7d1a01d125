"""Gradient signal of GRPO and TEMPO under independent and tree rollouts, at one fixed policy.

    python -m experiments.bench_tree_credit --model runs/tiny-chain --task chain

For each of K rollout batches (P prompts) and each rollout kind, the policy gradient of the
token-mean surrogate sum_t A[i,t] log pi(y_i,t) / n_tokens is computed under both estimators
(the PPO gradient of the first update, where the ratio is 1). Reported per arm:
- `norm`: mean gradient norm;
- `cos_between_batches`: mean cosine between gradients of different batches of the same arm, a
  signal-to-noise measure that a per-arm learning rate does not change (scale-free): for
  g = mu + noise, E cos ~ |mu|^2 / (|mu|^2 + E|noise|^2);
- `cos_to_others`: cosine of each batch's gradient with the mean gradient of all *other* arms'
  batches (agreement with a common direction estimated independently);
- `cos_tempo_grpo` / `norm_ratio`: TEMPO vs GRPO on the same batch (direction vs scale);
- tokens generated per batch, branch-token fraction, mean branch depth, and the ratio
  sum_s m_s delta_s^2 / sum_s m_s sigma_s^2 over branch nodes (Corollary T2's quantity).
Appends one JSON line per arm to --out (default ./bench_tree_credit.jsonl; the repository keeps its own in
benchmarks/results/bench_tree_credit.jsonl).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
from pathlib import Path

import torch

import tempo_rl

RESULTS = Path("bench_tree_credit.jsonl")  # in the working directory unless --out says otherwise


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).clone()


def surrogate_grad(model, prompts, roll, adv) -> torch.Tensor:
    """Gradient of sum A * log pi / n_tokens over the rollout (one unpadded forward per row)."""
    model.zero_grad(set_to_none=True)
    n_tok = float(roll.response_mask.sum())
    for i in range(roll.responses.shape[0]):
        n = int(roll.response_mask[i].sum())
        p = prompts[int(roll.group_ids[i])]
        ids = torch.tensor([p + roll.responses[i, :n].tolist()])
        logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) - 1 + n].float()  # (n, V)
        logp = torch.log_softmax(logits, -1).gather(-1, roll.responses[i, :n, None])[:, 0]
        (-(adv[i, :n] * logp).sum() / n_tok).backward()
    return flat_grad(model)


def offset_and_spread(roll, rewards) -> tuple[float, float]:
    """Sums over branch nodes s of m_s * delta_s^2 and m_s * sigma_s^2 (delta_s = V(s) - mu, sigma_s^2
    = variance of the members' rewards): their ratio is what governs TEMPO's gain over GRPO at
    branch tokens (proofs_notes/tree-rollouts.md, Corollary T2)."""
    off = spread = 0.0
    for g in roll.group_ids.unique().tolist():
        rows = (roll.group_ids == g).nonzero()[:, 0].tolist()
        seqs = [tuple(roll.responses[i, : int(roll.response_mask[i].sum())].tolist()) for i in rows]
        r = rewards[rows].double()
        mu = float(r.mean())
        members: dict[tuple, list[int]] = {}
        for k, y in enumerate(seqs):
            for t in range(len(y) + 1):
                members.setdefault(y[:t], []).append(k)
        for prefix, ks in members.items():
            nexts = {seqs[k][len(prefix)] if len(seqs[k]) > len(prefix) else None for k in ks}
            if len(nexts) > 1:
                rs = r[ks]
                off += len(ks) * (float(rs.mean()) - mu) ** 2
                spread += len(ks) * float(rs.var(unbiased=False))
    return off, spread


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))


def main(argv=None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempo_rl.trainer.data import load_dataset
    from tempo_rl.trainer.rewards import numeric_match
    from tempo_rl.trainer.tree_rollout import SamplingConfig, TreeConfig, sample_tree

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="chain")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8, help="independent rollouts")
    ap.add_argument("--tree-group-size", type=int, default=14, help="tree rollouts (about equal tokens)")
    ap.add_argument("--tree-roots", type=int, default=2)
    ap.add_argument("--fork-at", default="entropy")
    ap.add_argument("--min-fork-depth", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--out",
        default=str(RESULTS),
        help="JSONL file the results are appended to (default: ./bench_tree_credit.jsonl; "
        "the repository's own results: benchmarks/results/bench_tree_credit.jsonl)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    examples = load_dataset(args.task, n=args.batches * args.prompts, seed=10_000 + args.seed)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    kinds = {
        "independent": (args.group_size, None),
        "tree": (
            args.tree_group_size,
            TreeConfig(n_roots=args.tree_roots, fork_at=args.fork_at, min_fork_depth=args.min_fork_depth),
        ),
    }
    grads: dict[tuple[str, str], list[torch.Tensor]] = {}
    info: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    gen = torch.Generator().manual_seed(args.seed)
    for b in range(args.batches):
        batch = examples[b * args.prompts : (b + 1) * args.prompts]
        prompts = [tok(e.prompt)["input_ids"] for e in batch]
        for kind, (g, tree) in kinds.items():
            roll = sample_tree(model, prompts, group_size=g, sampling=sampling, tree=tree, generator=gen)
            texts = [
                tok.decode(roll.responses[i, : int(roll.response_mask[i].sum())], skip_special_tokens=True)
                for i in range(roll.responses.shape[0])
            ]
            rewards = torch.tensor([numeric_match(t, batch[int(gid)].answer) for t, gid in zip(texts, roll.group_ids)])
            st = tempo_rl.tree_stats(roll.responses, roll.response_mask, roll.group_ids).as_dict()
            off, spread = offset_and_spread(roll, rewards)
            for key, val in (
                ("tokens", roll.stats["tokens_generated"]),
                ("accuracy", float(rewards.mean())),
                ("branch_token_fraction", st["branch_token_fraction"]),
                ("mean_branch_depth", st["mean_branch_depth"] or 0.0),
                ("offset_sum", off),
                ("spread_sum", spread),
            ):
                info[kind].setdefault(key, []).append(val)
            for est in ("grpo", "tempo"):
                fn = tempo_rl.tempo_advantages if est == "tempo" else tempo_rl.grpo_advantages
                adv = fn(roll.responses, roll.response_mask, rewards, roll.group_ids)
                grads.setdefault((kind, est), []).append(surrogate_grad(model, prompts, roll, adv))
        print(f"batch {b + 1}/{args.batches}", flush=True)
    arms = list(grads)
    print(
        "| rollout | estimator | tokens/batch | accuracy | branch-token frac | mean branch depth | "
        "delta^2/sigma^2 at branch nodes | grad norm | cos between batches | cos to other rollout | "
        "cos TEMPO-GRPO | norm TEMPO/GRPO |\n|" + " --- |" * 12
    )
    for kind, est in arms:
        gs = grads[(kind, est)]
        between = [cos(a, b) for a, b in itertools.combinations(gs, 2)]
        per_batch = torch.tensor([sum(cos(a, b) for b in gs if b is not a) / (len(gs) - 1) for a in gs])
        others = torch.stack([g for arm in arms if arm[0] != kind for g in grads[arm]]).mean(0)
        paired = [(t, r) for t, r in zip(grads[(kind, "tempo")], grads[(kind, "grpo")])]
        row = {
            "rollout": kind,
            "estimator": est,
            **{k: sum(v) / len(v) for k, v in info[kind].items()},
            "offset_to_spread": sum(info[kind]["offset_sum"]) / max(1e-12, sum(info[kind]["spread_sum"])),
            "grad_norm": sum(float(g.norm()) for g in gs) / len(gs),
            "cos_between_batches": sum(between) / len(between),
            "cos_between_batches_se": float(per_batch.std() / len(gs) ** 0.5),  # rough: pairs share batches
            "cos_to_other_rollout": sum(cos(g, others) for g in gs) / len(gs),
            "cos_tempo_grpo": sum(cos(t, r) for t, r in paired) / len(paired),
            "norm_ratio_tempo_grpo": sum(float(t.norm() / r.norm()) for t, r in paired) / len(paired),
        }
        print(
            f"| {kind} | {est} | {row['tokens']:.0f} | {row['accuracy']:.3f} | {row['branch_token_fraction']:.3f} | "
            f"{row['mean_branch_depth']:.1f} | {row['offset_to_spread']:.3f} | {row['grad_norm']:.4f} | "
            f"{row['cos_between_batches']:.3f} ± {row['cos_between_batches_se']:.3f} | "
            f"{row['cos_to_other_rollout']:.3f} | {row['cos_tempo_grpo']:.3f} | {row['norm_ratio_tempo_grpo']:.2f} |"
        )
        if not args.no_save:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with Path(args.out).open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "bench": "tree_credit",
                            **row,
                            **vars(args),
                            "date": datetime.date.today().isoformat(),
                            "torch": torch.__version__,
                        }
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
