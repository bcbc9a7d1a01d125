"""Tree rollouts through vLLM in TRL's `GRPOTrainer` (TRL 1.16): a `rollout_func`.

`tree_rollout_func(tree)` returns the function TRL calls in place of its own generation
(`GRPOTrainer(..., rollout_func=...)`, also `TempoGRPOTrainer`): it samples each prompt's
`num_generations` completions as a prefix tree with `tempo_rl.trainer.vllm_rollout.sample_tree_vllm`
(the planner of `tempo-rl train --rollout tree`, every token sampled by vLLM), and hands TRL the
prompt ids, completion ids and vLLM's per-token log-probs it expects. TEMPO then reads the tree
back from the token prefixes (`TempoGRPOTrainer`); GRPO sees G exchangeable completions.

The engine is TRL's own colocated one (`use_vllm=True, vllm_mode="colocate"`) unless one is given
(`llm=`; then `use_vllm` may be False and TRL builds none). TRL 1.16 builds and runs its
colocated engine on vLLM's CPU build (it warns that it was tested up to vLLM 0.31). The rollout
function loads the policy's weights itself at every new global step, through vLLM's in-place reload
(`vllm_rollout.load_weights`): TRL syncs only its own engine, and through the model's
`load_weights`, which fails on an engine whose linear weights vLLM's CPU backend has repacked (the
float32 engine of `make_engine`: `'Parameter' object has no attribute 'weight_loader'`).

Prompts: TRL passes each process its slice of the generation batch, each prompt repeated
`num_generations` times in a row; a tree needs a whole group, so a slice that splits a group is
refused (one process always holds whole groups). Text and chat prompts are tokenized by TRL itself
(`GRPOTrainer._tokenize_prompts`, the chat template included); images and tools are not supported.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

from tempo_rl.extras import require
from tempo_rl.trainer.rollout import SamplingConfig
from tempo_rl.trainer.tree_rollout import TreeConfig

require(("trl",), "tempo_rl.integrations.trl_vllm", "trl")
if importlib.util.find_spec("vllm") is None:
    raise ImportError(
        "tempo_rl.integrations.trl_vllm needs the Python package 'vllm', which is not installed: "
        "`make .venv-vllm/.installed` (vLLM's CPU build), or pip install vllm on a GPU machine"
    )

__all__ = ["tree_rollout_func"]


def tree_rollout_func(
    tree: TreeConfig | None, *, llm: Any = None, seed: int = 0, entropy_top_k: int = 100
) -> Callable[[list, Any], dict[str, list]]:
    """A TRL `rollout_func` that samples every group as a prefix tree (`tree=None`: independent
    samples through the same engine). `llm`: a `vllm.LLM` to sample with; None uses the trainer's
    colocated engine. `seed` with the global step and process index seeds every request."""
    from tempo_rl.trainer.vllm_rollout import load_weights, sample_tree_vllm

    loaded = {"step": None}

    def rollout(prompts: list, trainer) -> dict[str, list]:
        engine = llm if llm is not None else _colocated_engine(trainer)
        step = trainer.state.global_step
        if loaded["step"] != step:  # the policy changed since the engine last got its weights
            load_weights(engine, trainer.accelerator.unwrap_model(trainer.model))
            loaded["step"] = step
        group = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        firsts = _group_starts(prompts, group)
        prompt_ids, images, _ = trainer._tokenize_prompts([prompts[i] for i in firsts])
        if images is not None:
            raise ValueError("tree_rollout_func: prompts with images are not supported")
        tok = trainer.processing_class
        tok = getattr(tok, "tokenizer", tok)
        sampling = SamplingConfig(
            max_new_tokens=trainer.max_completion_length,
            temperature=trainer.temperature,
            top_p=trainer.top_p,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        request_seed = seed + 1_000 * step + trainer.accelerator.process_index
        roll = sample_tree_vllm(
            engine,
            prompt_ids,
            group_size=group,
            sampling=sampling,
            tree=tree,
            seed=request_seed,
            entropy_top_k=entropy_top_k,
        )
        lengths = roll.response_mask.sum(1).tolist()
        assert roll.logprobs is not None  # the vLLM sampler always records them
        return {
            "prompt_ids": [list(prompt_ids[int(g)]) for g in roll.group_ids],
            "completion_ids": [row[:n].tolist() for row, n in zip(roll.responses, lengths)],
            "logprobs": [row[:n].tolist() for row, n in zip(roll.logprobs, lengths)],
        }

    return rollout


def _colocated_engine(trainer):
    generation = getattr(trainer, "vllm_generation", None)
    engine = getattr(generation, "llm", None)
    if engine is None:
        raise ValueError(
            "tree_rollout_func: the trainer has no colocated vLLM engine; set use_vllm=True and "
            "vllm_mode='colocate' in the config, or pass llm= (a vllm.LLM) to tree_rollout_func"
        )
    return engine


def _group_starts(prompts: list, group: int) -> list[int]:
    """Index of each group's first prompt; ValueError unless the slice is whole groups of
    `group` equal prompts in a row."""
    if len(prompts) % group:
        raise ValueError(
            f"tree_rollout_func: this process got {len(prompts)} prompts, not whole groups of num_generations="
            f"{group}; a tree needs each group on one process"
        )
    starts = list(range(0, len(prompts), group))
    for s in starts:
        if any(prompts[s + k] != prompts[s] for k in range(group)):
            raise ValueError(
                f"tree_rollout_func: prompts {s}..{s + group - 1} are not one prompt repeated num_generations={group} "
                "times; a tree needs each group on one process"
            )
    return starts
