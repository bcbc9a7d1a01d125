"""Sampling groups of responses and scoring token log-probabilities.

A rollout holds the left-padded prompts (P*G, Lp), the responses (P*G, Lr) right-padded after the
first EOS (which belongs to the response: the policy must learn when to stop), and the mask.

Environment tokens. A task may write one token of each response itself (`ChanceToken`: a coin, a
tool's output): at that response position the sampler replaces the policy's token by a uniform draw
from the task's choices, and the rollout's `loss_mask` is 0 there. The token stays in the response:
later tokens condition on it, and the group's prefix tree (hence TEMPO's TD) reads it like any other;
only its own advantage and loss are zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .loss import entropy_from_logits, token_logprobs
from .tree_rollout import ChanceToken


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


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, Lp) left-padded
    prompt_mask: torch.Tensor  # (B, Lp)
    responses: torch.Tensor  # (B, Lr) right-padded with pad ids after EOS
    response_mask: torch.Tensor  # (B, Lr) contiguous prefix of ones, EOS included
    group_ids: torch.Tensor  # (B,) index of the prompt in the step's batch
    texts: list[str]  # decoded responses, special tokens dropped
    stats: dict = field(default_factory=dict)  # sampler counters: tokens_generated, ...
    env_mask: torch.Tensor | None = None  # (B, Lr) 1 where a token carries loss; None: response_mask

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
        return Rollout(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.responses[rows],
            self.response_mask[rows],
            self.group_ids[rows],
            [self.texts[i] for i in rows.tolist()],
            self.stats,
            None if self.env_mask is None else self.env_mask[rows],
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
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    chat_template: bool = False,
    greedy: bool = False,
    autocast_dtype=None,
    tree=None,
    chance: ChanceToken | None = None,
) -> Rollout:
    """G samples of each prompt (greedy: argmax decoding, for evaluation). Generation runs under
    inference_mode; the returned tensors are ordinary ones (cloned), usable in autograd. With a
    `TreeConfig` as `tree`, each group is sampled as a prefix tree by `tree_rollout.sample_tree`
    instead of `generate` (same sampling rules, same global RNG). With a `ChanceToken`, its
    position holds an environment draw (greedy decoding too) and `loss_mask` is 0 there."""
    roll = _sample(
        model,
        tokenizer,
        prompts,
        group_size=group_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        chat_template=chat_template,
        greedy=greedy,
        autocast_dtype=autocast_dtype,
        tree=tree,
        chance=chance,
    )
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
def _sample(
    model,
    tokenizer,
    prompts,
    *,
    group_size,
    max_new_tokens,
    temperature,
    top_p,
    chat_template,
    greedy,
    autocast_dtype,
    tree=None,
    chance=None,
) -> Rollout:
    device = next(model.parameters()).device
    enc = encode_prompts(tokenizer, prompts, chat_template=chat_template, device=device)
    g = group_size
    ids = enc["input_ids"].repeat_interleave(g, 0)  # (P*G, Lp)
    att = enc["attention_mask"].repeat_interleave(g, 0)
    if tree is not None and not greedy:
        responses, mask, stats = _sample_tree(
            model, tokenizer, enc, g, max_new_tokens, temperature, top_p, tree, autocast_dtype, chance
        )
    else:
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        )
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model.generate(
                input_ids=ids,
                attention_mask=att,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=None if chance is None else [ChanceLogits(chance, ids.shape[1])],
                **sampling,
            )
        responses = out[:, ids.shape[1] :]  # (P*G, Lr)
        mask = response_mask_after_eos(responses, tokenizer.eos_token_id)
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
        stats = {"tokens_generated": int(mask.sum())}
    texts = tokenizer.batch_decode([r[: int(m.sum())] for r, m in zip(responses, mask)], skip_special_tokens=True)
    groups = torch.arange(len(prompts), device=device).repeat_interleave(g)
    return Rollout(ids, att, responses, mask, groups, texts, stats)


def _sample_tree(model, tokenizer, enc, g, max_new_tokens, temperature, top_p, tree, autocast_dtype, chance=None):
    """(responses (P*G, Lr), mask, sampler stats) of tree-sampled groups, group-major like `generate`."""
    from .tree_rollout import SamplingConfig, sample_tree_padded

    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        chance=chance,
    )
    device = enc["input_ids"].device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = sample_tree_padded(
            model, enc["input_ids"], enc["attention_mask"], group_size=g, sampling=sampling, tree=tree
        )
    return out.responses.to(device), out.response_mask.long().to(device), out.stats


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
