"""Train TempoGRPOTrainer for 2 steps on fixed completions and save each rank's advantages.

    python tests/integrations/trl_distributed.py OUT                           # one process
    torchrun --nproc_per_node 2 tests/integrations/trl_distributed.py OUT      # two gloo ranks
    torchrun --nproc_per_node 2 tests/integrations/trl_distributed.py OUT tree # on the tree, float32

The completions come from a deterministic `rollout_func` keyed on the global row, so both runs
see the same data. With 12 completions per step and num_generations=4, two ranks hold 6 rows each
and the second prompt's group is split between them. With a mode ("tree" or "rows") the run trains
in float32 with a KL term (`beta`), `tempo_tree_forward` on or off, and each rank also saves its
parameters after training and how many tree forwards scored.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integrations import tiny  # noqa: E402

GLOBAL_BATCH, GROUP = 12, 4


def fixed_rollout(prompts, trainer):
    """Completions over two words: groups share prefixes and branch at various depths."""
    tok = trainer.processing_class
    first_row = trainer.accelerator.process_index * len(prompts)
    completion_ids = []
    for i, prompt in enumerate(prompts):
        row = first_row + i
        rng = random.Random(f"{prompt}|{row % GROUP}|{trainer.state.global_step}")
        length = rng.randint(1, 5)
        completion_ids.append([rng.choice([2, 3]) for _ in range(length)] + [tiny.EOS])
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def main(out: Path, mode: str = "") -> None:
    import tempo_rl
    from tempo_rl.integrations.trl import TempoGRPOTrainer

    class Recording(TempoGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.recorded.append({k: output[k].cpu() for k in ("completion_ids", "completion_mask", "advantages")})
            return output

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    options = {} if not mode else {"tempo_tree_forward": mode == "tree", "bf16": False, "beta": 0.04}
    tree_calls = []
    real = tempo_rl.tree_logprobs_and_entropy
    tempo_rl.tree_logprobs_and_entropy = lambda *a, **k: tree_calls.append(1) or real(*a, **k)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny.build_tokenizer(Path(tmp) / "tok")
        # beta > 0 loads a reference copy from a path; saved before the config starts the process group,
        # after which only rank 0 would write it.
        model = tiny.save_model(Path(tmp) / "model") if mode else tiny.build_model()
        args = tiny.trl_config(
            Path(tmp) / "run",
            group=GROUP,
            per_device_batch=GLOBAL_BATCH // world,
            max_completion_length=8,
            data_seed=0,
            **options,
        )
        trainer = Recording(
            model=model,
            reward_funcs=tiny.REWARD_FUNCS,
            args=args,
            train_dataset=tiny.prompts_dataset(12),
            processing_class=tokenizer,
            rollout_func=fixed_rollout,
        )
        trainer.recorded = []
        trainer.train()
        rank = trainer.accelerator.process_index
        out.mkdir(parents=True, exist_ok=True)
        params = {n: p.detach().cpu() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
        record = {"world": trainer.accelerator.num_processes, "steps": trainer.recorded}
        torch.save({**record, "params": params, "tree_calls": len(tree_calls)}, out / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # otherwise the ranks abort at exit


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
