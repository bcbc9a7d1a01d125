"""Compile the tree-attention kernels (`fast/tree_attention_triton.py`) for an H100 (sm_90a), no GPU
needed, and report registers and spills from ptxas.

    python -m tempo_rl.benchmarks.compile_tree_attention        # one line per variant, JSON

Variants: the forward, dK/dV and dQ kernels in float16, bfloat16, float32 and float64, with the
tiles and warps `_config` picks, head dims 64 and 128 (96 is padded to 128), contiguous last dims.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

# Compiling, not interpreting: must be set before triton is imported.
os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tempo_rl.fast import tree_attention_triton as kernels  # noqa: E402

from .compile_kernels import TARGET, resources  # noqa: E402

_PTR = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "float64": "*fp64"}
_KERNELS = {"forward": kernels._forward_kernel, "dkdv": kernels._dkdv_kernel, "dq": kernels._dq_kernel}


@dataclass(frozen=True)
class Variant:
    kernel: str
    dtype: str
    head_dim: int


# head dims per dtype: 64 and 128 (96 is padded to 128) and the widest, 256, for bfloat16
_DIMS = {"float16": (64,), "bfloat16": (64, 96, 128, 256), "float32": (64, 128), "float64": (64,)}


def variants() -> list[Variant]:
    return [Variant(k, dt, d) for k in _KERNELS for dt in _PTR for d in _DIMS[dt]]


def _signature(v: Variant) -> dict:
    fp = _PTR[v.dtype]
    acc = "*fp64" if v.dtype == "float64" else "*fp32"
    ptrs = {
        "forward": {"q_ptr": fp, "k_ptr": fp, "v_ptr": fp, "end_ptr": "*i64", "tile_end_ptr": "*i64"}
        | {"scale_ptr": acc, "out_ptr": fp, "lse_ptr": acc},
        "dkdv": {"q_ptr": fp, "k_ptr": fp, "v_ptr": fp, "do_ptr": fp, "end_ptr": "*i64", "tile_end_ptr": "*i64"}
        | {"scale_ptr": acc, "lse_ptr": acc, "delta_ptr": acc, "dk_ptr": fp, "dv_ptr": fp},
        "dq": {"q_ptr": fp, "k_ptr": fp, "v_ptr": fp, "do_ptr": fp, "end_ptr": "*i64", "tile_end_ptr": "*i64"}
        | {"scale_ptr": acc, "lse_ptr": acc, "delta_ptr": acc, "dq_ptr": fp},
    }[v.kernel]
    sizes = {"n_nodes": "i32", "head_dim": "i32", "value_dim": "i32", "group": "i32"}
    last = "od" if v.kernel == "forward" else "dod"
    first = ("on", "oh") if v.kernel == "forward" else ("don", "doh")
    strides = {f"stride_{s}": "i32" for s in ("qh", "qn", "kh", "kn", "vh", "vn", *first)}
    unit = {f"stride_{s}": "constexpr" for s in ("qd", "kd", "vd", last)}
    return ptrs | sizes | strides | unit


def compile_variant(v: Variant) -> dict:
    dtype = getattr(torch, v.dtype)
    cfg = kernels._config(v.kernel, v.head_dim, v.head_dim, dtype, None)
    sig = _signature(v)
    const = {name: 1 for name, t in sig.items() if t == "constexpr"}
    meta = kernels._meta(cfg, dtype)
    warps = meta.pop("num_warps")
    const |= meta
    sig |= {name: "constexpr" for name in const}
    source = ASTSource(_KERNELS[v.kernel], sig, constexprs=const)
    compiled = triton.compile(source, target=TARGET, options={"num_warps": warps})
    regs, spills = resources(compiled.asm["ptx"])
    return {**asdict(v), "block": cfg.block, "num_warps": warps, "registers": regs, "spill_bytes": spills}


def main() -> int:
    for v in variants():
        print(json.dumps(compile_variant(v)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
