"""TEMPO in OpenRLHF (0.11.x): `python -m tempo_rl.integrations.openrlhf ... --algo.advantage.estimator tempo`.

OpenRLHF computes advantages in `RemoteExperienceMaker.compute_advantages_and_returns(experiences)`
on the micro-batches of one rollout. Each `Experience` carries `sequences` (B, T) (prompt and
response, unpadded per sample, right-padded when samples are concatenated), `action_mask` (B, T-1)
over `sequences[:, 1:]` (1 on generated tokens; 0 on environment output between the turns of an
agent rollout), `rewards` (B,) and `index`, each sample's position in the rollout: samples
`index // n_samples_per_prompt` share a prompt, the grouping OpenRLHF's `group_norm` uses.

`TempoExperienceMaker` is OpenRLHF's `RemoteExperienceMaker` whose `compute_advantages_and_returns`
applies OpenRLHF's length penalties, then computes TEMPO's token advantages for the whole rollout
with one call of `tempo_rl.advantage_step` (arXiv 2509.18314) and writes them, in the dtype of the
rewards, at the action positions; OpenRLHF's KL reward (`--algo.kl.init_coef` without
`--algo.kl.use_loss`) is added as OpenRLHF adds it to GRPO, as its cumulative return.
A response's tree runs from its first to its last action token; environment output inside stays in
the tree and gets advantage 0.

OpenRLHF builds the experience maker inside its `PPOTrainer` Ray actor and offers no option to
choose its class. The launcher starts Ray with tempo-rl's `install` as the
`worker_process_setup_hook` (Ray's documented per-worker hook), which puts `TempoExperienceMaker`
in place of the name `RemoteExperienceMaker` in `openrlhf.trainer.ppo_trainer`, then runs
OpenRLHF's own `openrlhf.cli.train_ppo_ray` with the same arguments, except:

- `--algo.advantage.estimator tempo` is passed to OpenRLHF as `group_norm` (its group checks and
  no critic); `--algo.advantage.no_std_norm` gives the Dr. GRPO form (no division by the std);
- `--tempo.td_coef` (1.0), `--tempo.eps` (1e-9, OpenRLHF's `group_norm` epsilon),
  `--tempo.backend` ("auto"), `--tempo.trust_check`, `--tempo.trust_groups` (4) and
  `--tempo.log_branch_snr` are TEMPO's, read by the launcher.

Tree statistics are logged with the rollout's other per-sample info as `tempo/*`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import torch

from tempo_rl.integrations import require_engine

if __name__ == "__main__":  # run the importable module, so Ray's workers find the same names
    from tempo_rl.integrations.openrlhf import main

    main()
    sys.exit(0)

require_engine("openrlhf.trainer.ppo_utils.experience_maker", "openrlhf")

from openrlhf.models.utils import compute_reward  # noqa: E402
from openrlhf.trainer.ppo_utils.experience import Experience  # noqa: E402
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker  # noqa: E402
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties  # noqa: E402

import tempo_rl  # noqa: E402

__all__ = ["OPTIONS_ENV", "TempoExperienceMaker", "install", "main", "response_rows", "split_argv", "step_options"]

OPTIONS_ENV = "TEMPO_OPENRLHF_OPTIONS"  # the launcher's TEMPO options, JSON, for Ray's workers


def step_options(options: dict[str, Any] | None = None, *, norm_by_std: bool = True) -> tempo_rl.StepOptions:
    """The engine step's options from the launcher's `--tempo.*` values (default: from OPTIONS_ENV)."""
    if options is None:
        options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    return tempo_rl.StepOptions(
        td_coef=float(options.get("td_coef", 1.0)),
        norm_by_std=norm_by_std,
        eps=float(options.get("eps", 1e-9)),
        backend=str(options.get("backend", "auto")),
        trust_check=bool(options.get("trust_check", False)),
        trust_groups=int(options.get("trust_groups", 4)),
        log_branch_snr=bool(options.get("log_branch_snr", False)),
        metrics_prefix="tempo/",
    )


def response_rows(
    sequences: torch.Tensor, action_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenRLHF's rows -> responses (B, L) left-aligned, their tree mask (B, L), loss mask (B, L) and
    `starts` (B,), each row's first action position (in `action_mask`'s coordinates, which are
    `sequences[:, 1:]`'s)."""
    actions = sequences[:, 1:]  # (B, T-1): action_mask[:, j] is about actions[:, j]
    width_a = action_mask.shape[1]
    positions = torch.arange(width_a, device=action_mask.device)  # (A,)
    acted = action_mask.bool()
    starts = torch.where(acted, positions, width_a).amin(dim=1)  # (B,)
    ends = torch.where(acted, positions + 1, 0).amax(dim=1)  # (B,) one past the last action
    lengths = (ends - starts).clamp(min=0)  # (B,)
    width = max(int(lengths.max().item()), 1) if len(lengths) else 1
    offsets = torch.arange(width, device=action_mask.device)  # (L,)
    tree = offsets[None, :] < lengths[:, None]  # (B, L)
    index = (starts[:, None] + offsets[None, :]).clamp(max=width_a - 1)  # (B, L)
    responses = torch.where(tree, actions[:, :width_a].gather(1, index), 0)
    return responses, tree, acted.gather(1, index) & tree, starts


def _cat_right_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B_k, L_k) tensors along rows, right-padding each with zeros to the widest."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def _to_actions(values: torch.Tensor, tree: torch.Tensor, starts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, L) per response token -> (B, A) at OpenRLHF's action positions, zeros elsewhere."""
    offsets = torch.arange(values.shape[1], device=values.device)  # (L,)
    index = (starts[:, None] + offsets[None, :]).clamp(max=like.shape[1] - 1)  # (B, L)
    return torch.zeros_like(like).scatter_add_(1, index, torch.where(tree, values, 0).to(like.dtype))


class TempoExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with TEMPO's token advantages (options: `step_options`)."""

    def __init__(self, *args: Any, tempo_options: tempo_rl.StepOptions | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        norm_by_std = not self.args.algo.advantage.no_std_norm
        self.tempo_options = tempo_options or step_options(norm_by_std=norm_by_std)

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: list[Experience]) -> list[Experience]:
        args = self.strategy.args
        for experience in experiences:  # at least float32, as OpenRLHF's own method
            experience.rewards = experience.rewards.to(torch.promote_types(experience.rewards.dtype, torch.float32))
        apply_length_penalties(experiences, args)

        rows = [response_rows(e.sequences, e.action_mask) for e in experiences]
        responses, tree, loss = (_cat_right_padded([r[k] for r in rows]) for k in range(3))  # (N, L) the rollout
        rewards = torch.cat([e.rewards for e in experiences])  # (N,)
        n = args.rollout.n_samples_per_prompt
        group_ids = torch.tensor([i // n for e in experiences for i in e.index])  # (N,) OpenRLHF's groups
        result = tempo_rl.advantage_step(
            responses, tree, rewards, group_ids, loss_mask=loss, options=self.tempo_options
        )

        first = 0
        for experience, (_, row_tree, _, starts) in zip(experiences, rows):
            count = len(experience.index)
            adv = result.advantages[first : first + count, : row_tree.shape[1]]  # (B, L_e)
            first += count
            mask = experience.action_mask
            values = _to_actions(adv, row_tree, starts, mask.to(experience.rewards.dtype))  # (B, A)
            kl_return = self._kl_return(experience)
            if kl_return is not None:
                values = values + kl_return
            experience.advantages, experience.returns = values, values.clone()
            experience.info["return"] = experience.rewards.clone()
            for name, value in result.metrics.items():
                experience.info[name] = torch.full((count,), value)
            experience.kl = None
        return experiences

    def _kl_return(self, experience: Experience) -> torch.Tensor | None:
        """OpenRLHF's KL reward as a return (B, A): its `compute_reward` with no outcome reward, summed
        from each token to the end as its GRPO does; None when the KL is a loss or its coefficient 0."""
        if experience.kl is None or self.kl_ctl.value <= 0:
            return None
        zero = torch.zeros_like(experience.rewards)
        reward = compute_reward(
            zero, self.kl_ctl.value, experience.kl, action_mask=experience.action_mask, reward_clip_range=None
        )
        return self.get_cumulative_returns(reward, experience.action_mask, 1.0).to(experience.rewards.dtype)


def install() -> None:
    """Ray's `worker_process_setup_hook`: OpenRLHF's PPOTrainer builds a TempoExperienceMaker."""
    if OPTIONS_ENV not in os.environ:
        return
    import openrlhf.trainer.ppo_trainer as ppo_trainer

    ppo_trainer.RemoteExperienceMaker = TempoExperienceMaker  # type: ignore[misc]


def split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The launcher's command line -> OpenRLHF's arguments and TEMPO's options (None: TEMPO is off)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo.advantage.estimator", dest="estimator")
    parser.add_argument("--tempo.td_coef", dest="td_coef", type=float, default=1.0)
    parser.add_argument("--tempo.eps", dest="eps", type=float, default=1e-9)
    parser.add_argument("--tempo.backend", dest="backend", default="auto")
    parser.add_argument("--tempo.trust_check", dest="trust_check", action="store_true")
    parser.add_argument("--tempo.trust_groups", dest="trust_groups", type=int, default=4)
    parser.add_argument("--tempo.log_branch_snr", dest="log_branch_snr", action="store_true")
    known, rest = parser.parse_known_args(list(argv))
    options = vars(known)
    estimator = options.pop("estimator")
    if estimator is not None:
        rest += ["--algo.advantage.estimator", "group_norm" if estimator == "tempo" else estimator]
    return rest, (options if estimator == "tempo" else {})


def main(argv: Sequence[str] | None = None) -> None:
    """OpenRLHF's `openrlhf.cli.train_ppo_ray`, with TEMPO when `--algo.advantage.estimator tempo`."""
    import runpy

    import ray

    openrlhf_argv, options = split_argv(sys.argv[1:] if argv is None else argv)
    if options:
        os.environ[OPTIONS_ENV] = json.dumps(options)
        env = {  # OpenRLHF's own defaults, which its ray.init would set
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
            "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN"),
            "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
            OPTIONS_ENV: os.environ[OPTIONS_ENV],
        }
        ray.init(runtime_env={"env_vars": env, "worker_process_setup_hook": f"{__name__}.install"})
        install()
    sys.argv = ["openrlhf.cli.train_ppo_ray", *openrlhf_argv]
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
