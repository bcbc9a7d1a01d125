"""Turn a `prompt` / `answer` JSONL file into the parquet files verl's RLHFDataset reads.

    python examples/verl_prepare_data.py examples/data/arithmetic.jsonl data/verl-arithmetic [--test-fraction 0.1]

Each row becomes verl's layout: `data_source`, `prompt` (a chat: one user message), `ability`,
`reward_model.ground_truth` (the answer, for `compute_score` in examples/rewards.py) and
`extra_info` (the row's index and its other columns). A seeded tenth of the rows goes to test.parquet.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DATA_SOURCE = "tempo_rl_example"


def verl_row(index: int, row: dict) -> dict:
    extra = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(row["answer"])},
        "extra_info": {"index": index, **{k: str(v) for k, v in extra.items()}},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import pandas as pd

    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    records = [verl_row(i, r) for i, r in enumerate(rows)]
    test = set(random.Random(args.seed).sample(range(len(records)), max(1, int(len(records) * args.test_fraction))))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([r for i, r in enumerate(records) if i not in test]).to_parquet(args.out_dir / "train.parquet")
    pd.DataFrame([r for i, r in enumerate(records) if i in test]).to_parquet(args.out_dir / "test.parquet")
    print(f"wrote {args.out_dir}/train.parquet ({len(records) - len(test)} rows), test.parquet ({len(test)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
