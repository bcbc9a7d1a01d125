"""Sampling groups of responses and scoring token log-probabilities.

A rollout holds the left-padded prompts (P*G, Lp), the responses (P*G, Lr) right-padded after the
first EOS (which belongs to the response: the policy must learn when to stop), and the mask.
`Rollout` is the one type every sampler returns (`sample_groups` here, `tree_rollout.sample_tree`)
and every trainer stage reads; `SamplingConfig` is the one set of sampling rules they share.

Environment tokens. A task may write one token of each response itself (`ChanceToken`: a coin, a
tool's output): at that response position the sampler replaces the policy's token by a uniform draw
from the task's choices, and the rollout's `loss_mask` is 0 there. The token stays in the response:
later tokens condition on it, and the group's prefix tree (hence TEMPO's TD) reads it like any other;
only its own advantage and loss are zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .loss import entropy_from_logits, token_logprobs

if TYPE_CHECKING:
    from .tree_rollout import TreeConfig


@dataclass(frozen=True)
class ChanceToken:
    """An environment draw inside every response: response position `position` holds one of
    `token_ids`, drawn uniformly by the sampler (not by the policy), and carries no loss."""

    position: int  # 0-based response position
    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.position < 0:
            raise ValueError(f"ChanceToken.position must be >= 0, got {self.position}")
        if not self.token_ids:
            raise ValueError("ChanceToken.token_ids must name at least one token")

    def draw(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) long: n independent uniform draws from token_ids."""
        pick = torch.randint(len(self.token_ids), (n,), generator=generator)
        return torch.tensor(self.token_ids, dtype=torch.long)[pick].to(device)

    def loss_mask(self, response_mask: torch.Tensor) -> torch.Tensor:
        """response_mask (B, L) with the chance position zeroed (where the response reaches it)."""
        out = response_mask.clone()
        if self.position < out.shape[1]:
            out[:, self.position] = 0
        return out


@dataclass(frozen=True)
class SamplingConfig:
    """How every token is sampled, roots and forks alike (ordinary sampling rules).

    `greedy`, `chat_template` and `autocast_dtype` are read by `sample_groups`, which takes text
    prompts and decodes through `generate` when greedy; the tree sampler takes token ids and samples."""

    max_new_tokens: int = 64  # response length budget, shared prefix included
    temperature: float = 1.0  # > 0; logits are divided by it
    top_p: float = 1.0  # nucleus sampling; 1.0 samples from the full tempered distribution
    eos_token_id: int | tuple[int, ...] | None = None  # sampled EOS ends the response and is part of it
    pad_token_id: int = 0  # fills responses past their end (mask 0)
    chance: ChanceToken | None = None  # an environment draw at one response position (no loss there)
    greedy: bool = False  # argmax decoding (evaluation); the chance token is still drawn
    chat_template: bool = False  # wrap each text prompt as a user turn of the tokenizer's chat template
    autocast_dtype: torch.dtype | None = None  # forward passes under this autocast dtype (bf16); None: off

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class ChanceLogits:
    """A `generate` logits processor that forces the chance token: at response position
    `chance.position` only a fresh uniform draw per row keeps a finite logit."""

    def __init__(self, chance: ChanceToken, prompt_len: int):
        self.chance, self.prompt_len = chance, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_len != self.chance.position:
            return scores
        token = self.chance.draw(scores.shape[0], scores.device)  # (N,)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter(1, token[:, None], 0.0)


def _rows(value, rows: torch.Tensor):
    return None if value is None else value[rows]


@dataclass
class Rollout:
    """G responses per prompt, group-major: what both samplers return and every trainer stage reads.

    The tree fields (`logprobs` .. `wave`) are filled by the tree sampler (`tree_rollout.sample_tree`)
    and None otherwise."""

    prompt_ids: torch.Tensor  # (B, Lp) left-padded
    prompt_mask: torch.Tensor  # (B, Lp)
    responses: torch.Tensor  # (B, Lr) right-padded with pad ids after EOS
    response_mask: torch.Tensor  # (B, Lr) contiguous prefix of ones, EOS included
    group_ids: torch.Tensor  # (B,) index of the prompt in the step's batch
    texts: list[str]  # decoded responses, special tokens dropped ([] without a tokenizer)
    stats: dict = field(default_factory=dict)  # sampler counters: tokens_generated, ...
    env_mask: torch.Tensor | None = None  # (B, Lr) 1 where a token carries loss; None: response_mask
    logprobs: torch.Tensor | None = None  # (B, Lr) float32, log-prob under the sampling distribution
    entropies: torch.Tensor | None = None  # (B, Lr) float32, entropy of the tempered distribution there
    parent: torch.Tensor | None = None  # (B,) long, row of the parent leaf; -1 for a root
    fork_depth: torch.Tensor | None = None  # (B,) long, response tokens taken from the parent (0: root)
    wave: torch.Tensor | None = None  # (B,) long, 0 for roots, w for children of wave w - 1 leaves

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, Lr) 0/1: the response tokens the policy chose (environment tokens are 0)."""
        return self.response_mask if self.env_mask is None else self.env_mask

    @property
    def n_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rows `rows` (per-row fields only; `parent` keeps its row numbers)."""
        return Rollout(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.responses[rows],
            self.response_mask[rows],
            self.group_ids[rows],
            [self.texts[i] for i in rows.tolist()] if self.texts else [],
            self.stats,
            _rows(self.env_mask, rows),
            _rows(self.logprobs, rows),
            _rows(self.entropies, rows),
            _rows(self.parent, rows),
            _rows(self.fork_depth, rows),
            _rows(self.wave, rows),
        )


def encode_prompts(tokenizer, prompts: list[str], *, chat_template: bool, device) -> dict[str, torch.Tensor]:
    if chat_template:
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    tokenizer.padding_side = "left"  # generation appends on the right
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat_template)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def response_mask_after_eos(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (the whole row if it never stops). (B, L) -> (B, L)."""
    is_eos = responses == eos_id
    before_first = (is_eos.cumsum(-1) - is_eos.long()) == 0  # True through the first EOS
    return before_first.long()


def sample_groups(
    model, tokenizer, prompts: list[str], sampling: SamplingConfig, *, group_size: int, tree: TreeConfig | None = None
) -> Rollout:
    """`group_size` samples of each text prompt under `sampling` (greedy: argmax decoding, for
    evaluation). Generation runs under inference_mode; the returned tensors are ordinary ones
    (cloned), usable in autograd. With a `TreeConfig` as `tree`, each group is sampled as a prefix
    tree by `tree_rollout.sample_tree` instead of `generate` (same sampling rules, same global RNG).
    With a chance token, its position holds an environment draw (greedy decoding too) and
    `loss_mask` is 0 there."""
    roll = _sample(model, tokenizer, prompts, sampling, group_size=group_size, tree=tree)
    chance = sampling.chance
    return Rollout(
        roll.prompt_ids.clone(),
        roll.prompt_mask.clone(),
        roll.responses.clone(),
        roll.response_mask.clone(),
        roll.group_ids.clone(),
        roll.texts,
        roll.stats,
        None if chance is None else chance.loss_mask(roll.response_mask).clone(),
    )


@torch.inference_mode()
def _sample(model, tokenizer, prompts, sampling: SamplingConfig, *, group_size: int, tree) -> Rollout:
    device = next(model.parameters()).device
    enc = encode_prompts(tokenizer, prompts, chat_template=sampling.chat_template, device=device)
    ids = enc["input_ids"].repeat_interleave(group_size, 0)  # (P*G, Lp)
    att = enc["attention_mask"].repeat_interleave(group_size, 0)
    dtype = sampling.autocast_dtype
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        if tree is not None and not sampling.greedy:
            from .tree_rollout import sample_tree_padded  # imports this module

            out = sample_tree_padded(
                model, enc["input_ids"], enc["attention_mask"], group_size=group_size, sampling=sampling, tree=tree
            )
            responses, mask, stats = out.responses.to(device), out.response_mask.long().to(device), out.stats
        else:
            responses, mask, stats = _generate(model, ids, att, sampling)
    texts = tokenizer.batch_decode([r[: int(m.sum())] for r, m in zip(responses, mask)], skip_special_tokens=True)
    groups = torch.arange(len(prompts), device=device).repeat_interleave(group_size)
    return Rollout(ids, att, responses, mask, groups, texts, stats)


def _generate(model, ids: torch.Tensor, att: torch.Tensor, sampling: SamplingConfig):
    """(responses (N, Lr) padded after the first EOS, their mask, counters) from `generate`."""
    if sampling.greedy:
        decoding: dict = {"do_sample": False}
    else:
        decoding = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
    chance = sampling.chance
    out = model.generate(
        input_ids=ids,
        attention_mask=att,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=sampling.eos_token_id,
        pad_token_id=sampling.pad_token_id,
        logits_processor=None if chance is None else [ChanceLogits(chance, ids.shape[1])],
        **decoding,
    )
    responses = out[:, ids.shape[1] :]  # (N, Lr)
    mask = response_mask_after_eos(responses, sampling.eos_token_id)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, sampling.pad_token_id))
    return responses, mask, {"tokens_generated": int(mask.sum())}


def forward_hidden(model, roll: Rollout, *, autocast_dtype=None) -> torch.Tensor:
    """Final hidden states at the positions that predict the response tokens, (B, Lr, H), in the LM
    head's dtype: what `forward_logprobs` multiplies by the head, without forming (B, Lr, V)."""
    ids = torch.cat([roll.prompt_ids, roll.responses], dim=1)  # (B, Lp + Lr)
    att = torch.cat([roll.prompt_mask, roll.response_mask], dim=1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model.base_model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False)
    lp = roll.prompt_ids.shape[1]
    hidden = out.last_hidden_state[:, lp - 1 : -1]  # (B, Lr, H): position p predicts token p + 1
    return hidden.to(model.get_output_embeddings().weight.dtype)


def forward_logprobs(model, roll: Rollout, *, with_entropy: bool = False, autocast_dtype=None):
    """log pi(response token) at every response position, (B, Lr); and the entropy there if asked.

    Position ids follow the attention mask (as `generate` does for left padding), so scores match
    the sampling distribution exactly."""
    ids = torch.cat([roll.prompt_ids, roll.responses], dim=1)  # (B, Lp + Lr)
    att = torch.cat([roll.prompt_mask, roll.response_mask], dim=1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    device = ids.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits
    lp = roll.prompt_ids.shape[1]
    logits = logits[:, lp - 1 : -1]  # (B, Lr, V): position p predicts token p + 1
    logp = token_logprobs(logits, roll.responses)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, entropy
