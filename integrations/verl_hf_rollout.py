"""The "hf" rollout of tempo_rl.integrations.verl_cpu: verl's rollout-server protocol served by a
transformers model on CPU. One Ray actor per replica samples one sequence at a time (token by token,
with the model's KV cache) and takes the actor's weights at every `update_weights`, as verl's vLLM
server does; the training workers' side (`HFServerAdapter`) hands the weights over.

verl loads this module when a run sets `actor_rollout_ref.rollout.name=hf` with
`VERL_USE_EXTERNAL_MODULES=tempo_rl.integrations.verl_cpu` (which registers the name).
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch
import verl  # noqa: F401  (first: verl then loads its external modules, the CPU platform among them)
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

__all__ = ["HFReplica", "HFRolloutServer", "HFServerAdapter", "server_name"]


def server_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray name of replica `replica_rank`'s server: the workers' adapters find it by name."""
    return f"tempo_hf_server_{replica_rank}{suffix}"


class HFRolloutServer:
    """One rollout replica on CPU: samples with the transformers model, one request at a time,
    and loads the actor's weights at each `update_weights`. Speaks verl's server protocol
    (`generate(prompt_ids, sampling_params, request_id) -> TokenOutput`, sleep / wake_up, ...)."""

    def __init__(self, config: Any, model_path: str, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.config = config  # verl's RolloutConfig
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.generator = torch.Generator().manual_seed(int(config.seed) + replica_rank)
        self.global_steps: int | None = None

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, **unused: Any
    ) -> TokenOutput:
        params = dict(sampling_params)
        max_tokens = params.get("max_tokens") or params.get("max_new_tokens") or self.config.response_length
        prompt = torch.tensor([list(prompt_ids)])  # (1, P)
        tokens, log_probs = self._sample(prompt, int(max_tokens), params)
        return TokenOutput(
            token_ids=tokens,
            log_probs=log_probs if params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    @torch.inference_mode()
    def _sample(self, prompt: torch.Tensor, max_tokens: int, params: dict) -> tuple[list[int], list[float]]:
        """Ancestral sampling at the rollout's temperature / top-k / top-p; log-probs of the raw policy."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        temperature, top_k, top_p = (
            float(params.get("temperature", 1.0)),
            int(params.get("top_k", -1)),
            params.get("top_p", 1.0),
        )
        warpers = LogitsProcessorList()
        if temperature > 0 and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and float(top_p) < 1.0:
            warpers.append(TopPLogitsWarper(float(top_p)))
        eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) - {None}
        ids, past, tokens, log_probs = prompt, None, [], []
        for _ in range(max_tokens):
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            logits, past = out.logits[:, -1, :].float(), out.past_key_values  # (1, V)
            if temperature > 0:
                probs = torch.softmax(warpers(prompt, logits), dim=-1)
                token = torch.multinomial(probs, 1, generator=self.generator)  # (1, 1)
            else:
                token = logits.argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
            log_probs.append(float(torch.log_softmax(logits, dim=-1)[0, int(token)]))
            if int(token) in stops:
                break
            ids = token
        return tokens, log_probs

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: int | None) -> None:
        """The actor's parameters, by Hugging Face name; an unknown name is an error."""
        state = dict(named_tensors)
        unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"hf rollout: weights {unexpected[:3]} are not parameters of the rollout model")
        self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # verl's server protocol: memory and request control, which a CPU server does not need.
    async def wake_up(self, tags: list[str] | None = None) -> None:
        pass

    async def sleep(self) -> None:
        pass

    async def clear_kv_cache(self) -> None:
        pass

    async def release_kv_cache(self) -> None:
        pass

    async def resume_kv_cache(self) -> None:
        pass

    async def wait_for_requests_to_drain(self) -> None:
        pass

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        pass

    async def start_profile(self, **kwargs: Any) -> None:
        pass

    async def stop_profile(self) -> None:
        pass


class HFReplica(RolloutReplica):
    """verl's rollout replica with one `HFRolloutServer` (tensor and pipeline parallel size 1)."""

    async def launch_servers(self) -> None:
        if self.world_size != 1:
            raise ValueError(
                f"hf rollout: tensor, data and pipeline parallel sizes must be 1 (world size {self.world_size})"
            )
        server = (
            ray.remote(HFRolloutServer)
            .options(name=server_name(self.replica_rank, self.name_suffix), num_cpus=0, max_concurrency=4)
            .remote(
                self.config, str(self.model_config.get("local_path") or self.model_config["path"]), self.replica_rank
            )
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_name(self.replica_rank, self.name_suffix)


class HFServerAdapter(rollout_base.BaseRollout):
    """The training worker's side of the "hf" rollout: hands the actor's weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        self.replica_rank = rank if replica_rank == -1 else replica_rank  # one training rank per replica

    async def resume(self, tags: list[str]) -> None:
        pass

    async def release(self) -> None:
        pass

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"hf rollout: wire_format {wire_format!r} is not supported; use 'named_tensors'")
        # Every rank reads the whole generator: the engine gathers each full tensor collectively.
        named = [(name, _full(t).detach().to("cpu", copy=True)) for name, t in weights]
        server = ray.get_actor(server_name(self.replica_rank))
        await server.load_weights.remote(named, kwargs.get("global_steps"))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
