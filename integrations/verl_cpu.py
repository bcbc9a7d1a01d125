"""verl's own trainer on CPU (verl 0.9.x): a "cpu" platform and an "hf" rollout, for trying a recipe
on a laptop and for testing TEMPO in verl's whole loop without a GPU.

    VERL_USE_EXTERNAL_MODULES=tempo_rl.integrations.verl_cpu python -m verl.trainer.main_ppo \\
        trainer.device=cpu trainer.n_gpus_per_node=2 +ray_kwargs.ray_init.num_gpus=2 \\
        +ray_kwargs.ray_init.num_cpus=8 actor_rollout_ref.rollout.name=hf ...

verl imports the modules named in `VERL_USE_EXTERNAL_MODULES` in every one of its processes. This one
registers, through verl's extension points only:

- the platform "cpu" (`verl.plugin.platform.PlatformRegistry`) and makes it the default
  (`VERL_PLATFORM=cpu`, inherited by Ray's workers): torch's CPU device, gloo collectives. verl's
  resource pools count Ray "GPU" resources, so the platform names Ray's GPU resource and the run
  declares logical GPUs (`+ray_kwargs.ray_init.num_gpus=N`, one per training rank);
- verl's FSDP engines for device "cpu" (`verl.workers.engine.EngineRegistry`);
- the rollout "hf" (`RolloutReplicaRegistry` and `verl.workers.rollout.base._ROLLOUT_REGISTRY`):
  one Ray actor per replica (`tempo_rl.integrations.verl_hf_rollout`) samples with the transformers
  model, token by token with its KV cache, and takes the actor's weights at every `update_weights`,
  as verl's vLLM server does.

verl 0.9.1 builds the process-group backend "cpu:gloo,<device>:<backend>", which is "cpu:gloo,cpu:gloo"
on this platform and torch refuses a device named twice; the module sets the default backend of
`verl.utils.distributed.initialize_global_process_group_ray` to "cpu:gloo". That and the registries
are verl 0.9's: outside verl >= 0.9.1, < 0.10 importing this module raises, naming the version found.

Name it in `VERL_USE_EXTERNAL_MODULES` (first, before modules that build on verl's trainer): verl
then imports it before anything asks for the platform. A CPU run is slow and for small models: the
rollout samples one sequence at a time, without batching.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import types
from typing import Any, Iterator

import torch

from tempo_rl.integrations import require_engine

require_engine("verl", "verl")

import verl  # noqa: E402

__all__ = ["CPU", "HF_ROLLOUT", "PlatformCPU", "check_verl_version"]

CPU = "cpu"
HF_ROLLOUT = "hf"
SUPPORTED = ((0, 9, 1), (0, 10))  # [low, high): the verl internals named in the module docstring


def check_verl_version(found: str) -> None:
    """Raise RuntimeError, naming `found`, outside the verl versions this module was written for."""
    parts = tuple(int(p) for p in found.split("+")[0].split(".")[:3] if p.isdigit())
    if not SUPPORTED[0] <= parts < SUPPORTED[1]:
        raise RuntimeError(
            f"tempo_rl.integrations.verl_cpu supports verl >= 0.9.1, < 0.10 (it registers into verl 0.9's "
            f"platform, engine and rollout registries); found verl {found}"
        )


check_verl_version(verl.__version__)

from verl.plugin.platform import PlatformBase, PlatformRegistry  # noqa: E402


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _cpu_device_module() -> types.SimpleNamespace:
    """`torch.cpu` plus the memory and RNG calls verl makes on its device module: no device memory in
    use (0 bytes), the host's free and total memory for `mem_get_info`, torch's CPU generator."""
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    calls = {name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("_")}
    zero_bytes = {
        name: (lambda *args, **kwargs: 0)
        for name in ("memory_reserved", "memory_allocated", "max_memory_reserved", "max_memory_allocated")
    }
    return types.SimpleNamespace(
        **calls,
        **zero_bytes,
        empty_cache=_nothing,
        ipc_collect=_nothing,
        reset_peak_memory_stats=_nothing,
        set_per_process_memory_fraction=_nothing,
        mem_get_info=lambda *args: (os.sysconf("SC_AVPHYS_PAGES") * page, pages * page),
        get_device_name=lambda *args: CPU,
        get_rng_state=lambda *args: torch.get_rng_state(),
        set_rng_state=lambda state, *args: torch.set_rng_state(state),
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
    )


@PlatformRegistry.register(platform=CPU)
class PlatformCPU(PlatformBase):
    """torch's CPU device with gloo collectives; Ray's "GPU" resource stands for a training rank."""

    device_name = CPU  # type: ignore[assignment]
    vendor_name = CPU  # type: ignore[assignment]
    device_module = _cpu_device_module()  # type: ignore[assignment]

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # type: ignore[override]
        return CPU  # verl moves modules to `get_device_id()`; an int there would name an accelerator

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for a logical GPU; nothing reads it on CPU

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


os.environ.setdefault("VERL_PLATFORM", CPU)  # before ray.init: every verl process inherits it


def _gloo_only_process_group() -> None:
    """verl would ask torch for "cpu:gloo,cpu:gloo"; on this platform gloo serves the one device."""
    from verl.utils import distributed

    if os.environ.get("VERL_PLATFORM") == CPU:
        distributed.initialize_global_process_group_ray.__defaults__ = (None, "cpu:gloo")


def _register_engines() -> None:
    """verl's FSDP engines, registered for device "cpu" (verl registers them for cuda and npu)."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        registered = EngineRegistry._engines.get(model_type, {}).get("fsdp", {})
        if CPU not in registered:
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device=CPU)(engine)


_gloo_only_process_group()
_register_engines()


def _register_hf_rollout() -> None:
    """The "hf" rollout, by name: verl imports `tempo_rl.integrations.verl_hf_rollout` when a run
    asks for it. (That module imports verl first, so verl loads this one before it.)"""
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    module = "tempo_rl.integrations.verl_hf_rollout"
    RolloutReplicaRegistry.register(HF_ROLLOUT, lambda: importlib.import_module(module).HFReplica)
    base._ROLLOUT_REGISTRY[(HF_ROLLOUT, "async")] = f"{module}.HFServerAdapter"


_register_hf_rollout()
