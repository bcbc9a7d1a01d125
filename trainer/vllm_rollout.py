"""Tree rollouts through vLLM: the prefix-forked groups of trainer/tree_rollout.py, every token
sampled by a vLLM engine.

The tree is planned exactly as by the transformers sampler (`tree_rollout`'s planner: the same
`TreeConfig`, the same fork policies); what changes is who decodes. Each wave of forks, across all
groups of the step, is one `LLM.generate` call: a fork at response depth d of a parent is a request
whose prompt is the group's prompt plus the parent's first d response tokens, continued by vLLM
under the same sampling rules (temperature, top-p, EOS, the length budget less d). vLLM's prefix
cache holds the shared prefix's key/value blocks (32 tokens each, the smallest block vLLM's CPU
attention takes), so a fork recomputes only the partial block at its fork point, provided the
parent's blocks are still cached. `TreeConfig(n_roots=G)` (`tree=None`) is independent sampling through the same call.

Each token's log-prob is the one vLLM reports under the sampling distribution
(`logprobs_mode="processed_logprobs"`: after temperature and top-p). Entropy-placed forks
("entropy", "group_entropy") read each token's entropy estimated from its top-k log-probs,
-sum_{top-k} p log p (the TEMPO authors' estimate with k = 100; exact when k covers the vocabulary,
a lower bound otherwise); the other policies ask for no top-k, and the rollout's `entropies` is
None then. The estimate is of the distribution after top-p, where the transformers sampler's is
before it.

`VLLMSampler` owns one engine in this process and loads a torch model's weights into it
(`load_weights`), which the trainer does after every update. vLLM is imported only here and only
when an engine is built: nothing else in the package depends on it.

Left out: environment (chance) tokens, refused with an error; starting a fork before its parent's
wave ends (the waves are sequential, as in the transformers sampler).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .rollout import Rollout, SamplingConfig
from .tree_rollout import TreeConfig, _assemble, _Fork, check_request, grow_tree

ENTROPY_FORKS = ("entropy", "group_entropy")


def engine_kwargs(model: str | Path, *, max_model_len: int, seed: int = 0, max_logprobs: int = 100) -> dict:
    """`vllm.LLM`'s arguments for a tree sampler: float32 (the trainer's dtype, so log-probs agree to
    rounding), eager (no graph capture on CPU), prefix caching on, log-probs of the sampling
    distribution, top-k log-probs up to `max_logprobs`."""
    return dict(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        block_size=32,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        max_logprobs=max_logprobs,
        seed=seed,
    )


def make_engine(
    model: str | Path, *, max_model_len: int, seed: int = 0, max_logprobs: int = 100, kv_cache_gb: int = 1, **extra
):
    """A `vllm.LLM` in this process (its engine core in-process too, so weights can be loaded into
    it without serialising a callable). `kv_cache_gb` sets VLLM_CPU_KVCACHE_SPACE unless already set."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    return LLM(**engine_kwargs(model, max_model_len=max_model_len, seed=seed, max_logprobs=max_logprobs), **extra)


def load_weights(llm, model: torch.nn.Module) -> None:
    """Copy a transformers model's parameters into the engine, then drop the prefix cache (its
    blocks were computed with the old weights).

    Through the workers' `reload_weights` (vLLM's in-place reload: it maps the checkpoint names,
    fuses q/k/v and gate/up, and redoes the CPU backend's repacking of the linear weights; the
    model's own `load_weights` fails once the weights are repacked). Weights travel as tensors to
    an in-process engine core; with the core in another process they would be pickled."""
    weights = [(name, p.detach().to("cpu", torch.float32)) for name, p in model.state_dict().items()]
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def sample_tree_vllm(
    llm,
    prompts: Sequence[Sequence[int]],
    *,
    group_size: int,
    sampling: SamplingConfig,
    tree: TreeConfig | None = None,
    seed: int = 0,
    entropy_top_k: int = 100,
) -> Rollout:
    """`group_size` responses per prompt sampled by `llm` as a prefix tree (independent when `tree`
    is None): the same `Rollout` as `tree_rollout.sample_tree`, B = P * group_size rows, group-major.

    prompts: P token-id lists (each non-empty). `seed` fixes every request's sampling and the
    planner's random choices: the same seed and weights give the same tree."""
    check_request(prompts, group_size)
    if sampling.chance is not None:
        raise ValueError("sampling.chance: environment tokens are not supported by the vLLM sampler")
    if entropy_top_k < 1:
        raise ValueError(f"entropy_top_k must be >= 1, got {entropy_top_k}")
    tree = tree or TreeConfig(n_roots=group_size)
    top_k = entropy_top_k if tree.fork_at in ENTROPY_FORKS and tree.n_roots < group_size else 0
    top_k = min(top_k, llm.llm_engine.model_config.get_vocab_size())  # vLLM refuses k > V
    planner = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    counters = {"tokens_generated": 0, "forward_tokens": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0}
    groups, wave = grow_tree(
        prompts,
        group_size,
        tree,
        sampling,
        planner,
        lambda forks, wave: _decode_wave(
            llm, forks, prompts, sampling, top_k, seed * 1_000_003 + wave * 10_007, counters
        ),
    )
    counters["seconds"] = time.perf_counter() - t0
    counters["waves"] = wave
    roll = _assemble(prompts, groups, sampling, counters)
    if not top_k:
        roll.entropies = None  # not estimated: no top-k log-probs were asked for
    return roll


def _decode_wave(llm, forks: list[_Fork], prompts, sampling: SamplingConfig, top_k: int, seed: int, counters) -> None:
    """Every fork of the wave continued by one `generate` call; tokens, log-probs and entropies are
    appended to each fork's leaf."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests, params = [], []
    for j, f in enumerate(forks):
        context = list(prompts[f.leaf.group]) + f.leaf.tokens  # prompt + the inherited prefix
        requests.append(TokensPrompt(prompt_token_ids=context))
        params.append(_params(SamplingParams, sampling, f.budget, top_k, seed + j))
    busy = [j for j, f in enumerate(forks) if f.budget > 0]
    outs = llm.generate([requests[j] for j in busy], [params[j] for j in busy], use_tqdm=False) if busy else []
    for j, out in zip(busy, outs):
        leaf = forks[j].leaf
        sample = out.outputs[0]
        for token, lps in zip(sample.token_ids, sample.logprobs):
            leaf.tokens.append(int(token))
            leaf.logprobs.append(float(lps[token].logprob))
            leaf.entropies.append(_entropy(lps) if top_k else 0.0)
        counters["tokens_generated"] += len(sample.token_ids)
        counters["prompt_tokens"] += len(out.prompt_token_ids)
        counters["cached_prompt_tokens"] += int(out.num_cached_tokens or 0)
        counters["forward_tokens"] += (
            len(out.prompt_token_ids) - int(out.num_cached_tokens or 0) + len(sample.token_ids)
        )


def _params(cls, sampling: SamplingConfig, budget: int, top_k: int, seed: int):
    eos = sampling.eos_token_id
    stop = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return cls(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0,
        max_tokens=budget,
        seed=seed,
        logprobs=top_k,
        stop_token_ids=stop,
        ignore_eos=eos is None,
        detokenize=False,
    )


def _entropy(lps: dict[int, Any]) -> float:
    """-sum p log p over the returned log-probs (the top-k and the sampled token)."""
    return -sum(math.exp(lp.logprob) * lp.logprob for lp in lps.values() if lp.logprob > -math.inf)


class VLLMSampler:
    """A vLLM engine that samples the trainer's rollouts: text prompts in, a `Rollout` out, the
    policy's weights loaded after each update."""

    def __init__(self, model_dir: str | Path, *, max_model_len: int, seed: int, entropy_top_k: int, kv_cache_gb: int):
        self.llm = make_engine(
            model_dir, max_model_len=max_model_len, seed=seed, max_logprobs=entropy_top_k, kv_cache_gb=kv_cache_gb
        )
        self.entropy_top_k = entropy_top_k
        self.calls = 0

    def sample(
        self,
        tokenizer,
        prompts: list[str],
        sampling: SamplingConfig,
        *,
        group_size: int,
        tree: TreeConfig | None,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> Rollout:
        """`sample_groups`' rollout (prompts as the trainer tokenizes them, decoded texts) sampled
        here, its tensors on `device`."""
        from .rollout import encode_prompts

        enc = encode_prompts(tokenizer, prompts, chat_template=sampling.chat_template, device="cpu")
        ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
        roll = sample_tree_vllm(
            self.llm,
            ids,
            group_size=group_size,
            sampling=sampling,
            tree=tree,
            seed=seed,
            entropy_top_k=self.entropy_top_k,
        )
        roll.response_mask = roll.response_mask.long()
        roll.texts = tokenizer.batch_decode(
            [r[: int(m.sum())] for r, m in zip(roll.responses, roll.response_mask)], skip_special_tokens=True
        )
        for f in dataclasses.fields(roll):
            value = getattr(roll, f.name)
            if isinstance(value, torch.Tensor):
                setattr(roll, f.name, value.to(device))
        return roll

    def load_weights(self, model: torch.nn.Module) -> None:
        load_weights(self.llm, model)


def sampler_for_run(run) -> VLLMSampler:
    """The engine of `tempo-rl train --generator vllm`: built from the run's base model directory,
    then given the policy's current weights (a resumed run's are the checkpoint's)."""
    from transformers import AutoConfig

    from .loading import model_path

    cfg = run.cfg
    path = model_path(cfg)
    positions = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 4096)
    sampler = VLLMSampler(
        path,
        max_model_len=min(int(positions), 8192),
        seed=cfg.seed,
        entropy_top_k=cfg.vllm_entropy_top_k,
        kv_cache_gb=cfg.vllm_kv_cache_gb,
    )
    sampler.load_weights(run.model)
    return sampler
