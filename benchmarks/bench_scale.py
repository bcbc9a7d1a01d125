"""`tempo-rl bench --scale`: the whole per-step TEMPO cost at the authors' batch.

512 prompts x 7 responses x 8192 tokens (B = 3584, the authors' Qwen3-1.7B recipe), ragged
lengths (log-normal around 3000 tokens, about one in ten truncated at 8192), each response
sharing a prefix with an earlier one of its group before diverging, verl-style string uids.
Timed in one run, each as median ms and as a ratio to the advantages alone, with the peak extra
resident memory of each call as a multiple of the token tensor's bytes (B x L int64):

- validation (`tempo_rl.validate`), advantages (the backend alone), tree statistics alone,
  advantages + statistics in one call (`tempo_advantages_with_stats`), the whole engine step with
  every option on (`tempo_rl.advantage_step`), the sampled trust check;
- the verl estimator as verl calls it (`compute_advantage(data, adv_estimator="tempo")` under
  `response_tokens`), in .venv-verl when it exists;
- the TRL subclass's advantage step (`TempoGRPOTrainer._tempo_advantages` on TRL's
  `completion_ids`), in .venv-trl when it exists.

Peak memory: Linux resets a process's peak RSS when "5" is written to /proc/self/clear_refs, so
each call's peak is VmHWM after it minus VmRSS before it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tempo_rl.backends import BACKENDS, get_backend
from tempo_rl.cli import UsageError

from .limits import check_fits, int_at_least

PROMPTS, GROUP, LENGTH, VOCAB = 512, 7, 8192, 151_936
BYTES_PER_TOKEN = 80  # int64 ids and the copies made while drawing them, the mask, and each part's peak


def make_inputs(prompts: int = PROMPTS, group: int = GROUP, length: int = LENGTH, seed: int = 0) -> dict:
    """Rollout-shaped CPU tensors (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    b = prompts * group
    lengths = torch.exp(torch.randn(b, generator=g) * 0.6 + np.log(3000.0)).long().clamp(1, length)  # (B,)
    tokens = torch.randint(0, VOCAB, (prompts, group, length), generator=g)  # (P, G, L)
    cols = torch.arange(length)
    for k in range(1, group):  # member k follows a random earlier member up to a random depth
        source = torch.randint(0, k, (prompts,), generator=g)
        depth = (torch.rand(prompts, generator=g) * lengths.view(prompts, group)[:, k]).long()  # (P,)
        follow = cols[None, :] < depth[:, None]  # (P, L)
        tokens[:, k] = torch.where(follow, tokens[torch.arange(prompts), source], tokens[:, k])
    responses = tokens.reshape(b, length)
    mask = cols[None, :] < lengths[:, None]  # (B, L)
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    uids = np.array([f"{p:08x}-uid" for p in range(prompts) for _ in range(group)], dtype=object)
    return {"responses": responses, "response_mask": mask, "rewards": rewards, "uids": uids, "lengths": lengths}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory a call adds on top of what was resident before it (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - before)


def measure(fn: Callable[[], object], repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_extra_bytes": peak_extra_bytes(fn)}


# ----------------------------------------------------------------------------- parts
def part_core(x: dict, repeats: int, backend: str) -> dict:
    import tempo_rl

    args = (x["responses"], x["response_mask"], x["rewards"], list(x["uids"]))
    b = tempo_rl.validate(*args)
    impl = tempo_rl.get_backend(tempo_rl.resolve_backend(backend, b.device))
    adv = tempo_rl.tempo_advantages(*args, backend=backend)
    return {
        "validation": measure(lambda: tempo_rl.validate(*args), repeats),
        "advantages": measure(
            lambda: impl.advantages_and_stats(
                b.responses,
                b.lengths,
                b.rewards,
                b.group_index,
                None,
                norm_by_std=True,
                eps=1e-6,
                td_coef=1.0,
                with_stats=False,
            ),
            repeats,
        ),
        "tree_stats": measure(lambda: impl.tree_stats(b.responses, b.lengths, b.group_index), repeats),
        "tempo_advantages (validation + advantages)": measure(
            lambda: tempo_rl.tempo_advantages(*args, backend=backend), repeats
        ),
        "tempo_advantages_with_stats (validation + both)": measure(
            lambda: tempo_rl.tempo_advantages_with_stats(*args, backend=backend), repeats
        ),
        "advantage_step (advantages + stats + trust check + branch diagnostic)": measure(
            lambda: tempo_rl.advantage_step(
                *args, options=tempo_rl.StepOptions(backend=backend, trust_check=True, log_branch_snr=True)
            ),
            max(1, repeats // 2),
        ),
        "check_against_reference (4 groups)": measure(
            lambda: tempo_rl.check_against_reference(adv, *args), max(1, repeats // 2)
        ),
    }


def part_verl(x: dict, repeats: int, backend: str) -> dict:
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from tempo_rl.integrations.verl import response_tokens

    b, length = x["responses"].shape
    scores = torch.zeros(b, length)
    scores[torch.arange(b), x["lengths"] - 1] = x["rewards"]  # verl: the outcome on the last token
    data = DataProto.from_dict(
        tensors={
            "responses": x["responses"],
            "response_mask": x["response_mask"].long(),
            "token_level_rewards": scores,
        },
        non_tensors={"uid": x["uids"]},
    )
    config = AlgoConfig(norm_adv_by_std_in_grpo=True)
    config.tempo_backend = backend  # type: ignore[attr-defined]

    def call():
        with response_tokens(data.batch["responses"], x["lengths"]):
            compute_advantage(data, adv_estimator="tempo", config=config)

    return {"verl compute_advantage (estimator + stats)": measure(call, repeats)}


def part_trl(x: dict, repeats: int, backend: str) -> dict:
    from tempo_rl.integrations.trl import TempoGRPOTrainer

    ids = [row[:n] for row, n in zip(x["responses"].tolist(), x["lengths"].tolist())]  # TRL's completion_ids list
    from tempo_rl.integrations.trl import step_options

    # The trainer's own options function, so an option added to the engine step reaches this too.
    config = types.SimpleNamespace(scale_rewards="group", tempo_eps=1e-4, tempo_backend=backend)
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        num_generations=GROUP,
        num_generations_eval=GROUP,
        accelerator=types.SimpleNamespace(num_processes=1, process_index=0),
        reward_weights=torch.ones(1),
        scale_rewards="group",
        tempo_options=step_options(config),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _logs={"advantages": deque(maxlen=4096)},
    )
    fake._log_tempo = types.MethodType(TempoGRPOTrainer._log_tempo, fake)
    output = {"completion_ids": x["responses"]}
    rewards = x["rewards"][:, None]

    def call():
        TempoGRPOTrainer._tempo_advantages(fake, output, ids, rewards)

    return {"TRL _tempo_advantages (advantages + stats + logging)": measure(call, repeats)}


PARTS = {"core": part_core, "verl": part_verl, "trl": part_trl}
VENVS = {"verl": ".venv-verl", "trl": ".venv-trl"}


def run_part(name: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    x = make_inputs(args.prompts, GROUP, args.length)
    return PARTS[name](x, args.repeats, args.backend)


def _in_venv(name: str, args: argparse.Namespace) -> dict | str:
    """Run one part in the engine's own venv (its pins clash with the main one)."""
    root = Path(__file__).resolve().parent.parent
    python = root / VENVS[name] / "bin" / "python"
    if not python.exists():
        return f"skipped: {VENVS[name]} not built (make test-integrations builds it)"
    cmd = [
        str(python),
        "-m",
        "tempo_rl.benchmarks.bench_scale",
        "--part",
        name,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--prompts",
        str(args.prompts),
        "--length",
        str(args.length),
        "--backend",
        args.backend,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        return "failed: " + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    base = rows["advantages"]["median_ms"]
    token_bytes = result["token_tensor_bytes"]
    lines = [
        f"# TEMPO per-step cost at {result['batch']} x {result['length']} (G = {GROUP}), CPU",
        "",
        f"{env['date']}, {env['cpu']} ({env['cores']} cores), torch {env['torch']}, {env['threads']} torch "
        f"thread(s), backend {result['backend']}, load average before / after: {env['load_before']} / "
        f"{env['load_after']}. Command: `{result['command']}`.",
        "",
        f"Token tensor: {token_bytes / 2**20:.0f} MiB (int64). Ratios are to the advantages alone.",
        "",
        "| step | median ms | x advantages | peak extra memory (x token tensor) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        if isinstance(row, str):
            lines.append(f"| {name} | {row} | | |")
            continue
        lines.append(
            f"| {name} | {row['median_ms']:.0f} | {row['median_ms'] / base:.2f} | "
            f"{row['peak_extra_bytes'] / token_bytes:.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `tempo-rl bench --scale` adds (with --repeats, --threads and --out)."""
    parser.add_argument("--prompts", type=int_at_least(1), default=PROMPTS, help="--scale: prompts (x 7 responses)")
    parser.add_argument("--length", type=int_at_least(1), default=LENGTH, help="--scale: padded response length")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="--scale: tempo_rl backend (default: auto)")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int_at_least(1), default=5)
    parser.add_argument("--threads", type=int_at_least(0), default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for scale_cpu.{md,json}")
    add_scale_arguments(parser)


def run(args: argparse.Namespace) -> int:
    args.threads = args.threads or torch.get_num_threads()  # 0: torch's default, recorded as the count it uses
    args.out = args.out or Path(".")
    if args.part:
        print(json.dumps(run_part(args.part, args)))
        return 0
    check_fits("--scale", BYTES_PER_TOKEN * args.prompts * GROUP * args.length)
    if args.backend != "auto":
        try:
            get_backend(args.backend)
        except RuntimeError as e:
            raise UsageError(f"--backend {args.backend}: {e}") from None
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = run_part("core", args)
    for name in ("verl", "trl"):
        part = _in_venv(name, args)
        rows.update(part if isinstance(part, dict) else {f"{name} step": part})
    b = args.prompts * GROUP
    result = {
        "batch": b,
        "length": args.length,
        "backend": args.backend,
        "token_tensor_bytes": b * args.length * 8,
        "command": f"tempo-rl bench --scale --prompts {args.prompts} --length {args.length} --repeats "
        f"{args.repeats} --threads {args.threads} --backend {args.backend}",
        "environment": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "load_before": load_before,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        },
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_cpu.json").write_text(json.dumps(result, indent=2))
    (args.out / "scale_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
