"""Compile every Triton kernel variant the launcher can pick for an H100 (sm_90a), no GPU needed,
and report registers and spills from ptxas.

    python -m tempo_rl.benchmarks.compile_kernels        # one line per variant, JSON

Variants: BLOCK_G 2..64 (group sizes 1..64) with the warps `_num_warps` picks, int32 and int64
ids, float32 and float64 rewards, TD on and off (td_coef = 0), statistics on and off, both
normalisations, unit and general inner strides (Triton specialises a stride of 1).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

# Compiling, not interpreting: must be set before triton is imported.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tempo_rl.fast import advantage_triton as kernels  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_FLOAT = {"float32": "*fp32", "float64": "*fp64"}


@dataclass(frozen=True)
class Variant:
    kernel: str
    block_g: int
    ids: str = "int64"
    rewards: str = "float32"
    with_td: bool = True
    store_lcp: bool = False
    norm_by_std: bool = True
    unit_stride: bool = True


def variants() -> list[Variant]:
    out = [Variant("group", g) for g in (2, 4, 8, 16, 32, 64)]
    out += [
        Variant("group", 8, ids="int32", rewards="float64", with_td=False, store_lcp=True),
        Variant("group", 8, rewards="float64", norm_by_std=False, store_lcp=True, unit_stride=False),
        Variant("group", 64, ids="int32", rewards="float64", store_lcp=True, unit_stride=False),
        Variant("fill", 8, rewards="float64", unit_stride=False),
        Variant("fill", 8),
        Variant("scatter", 8, unit_stride=False),
        Variant("scatter", 64, rewards="float64"),
    ]
    return out


def _stride(v: Variant) -> str | None:
    return None if v.unit_stride else "i64"


def _group_source(v: Variant) -> ASTSource:
    fp = _FLOAT[v.rewards]
    sig = {
        "tokens_ptr": "*i32" if v.ids == "int32" else "*i64",
        "lengths_ptr": "*i64",
        "rewards_ptr": fp,
        "scale_ptr": "*fp64",
        "order_ptr": "*i64",
        "offsets_ptr": "*i64",
        "sizes_ptr": "*i64",
        "params_ptr": "*fp64",
        "row_value_ptr": fp,
        "branch_pos_ptr": "*i32",
        "branch_value_ptr": fp,
        "lcp_ptr": "*i32",
        "stride_tb": "i64",
        "stride_tl": _stride(v),
    }
    const = dict(
        NORM_BY_STD=v.norm_by_std,
        WITH_TD=v.with_td,
        STORE_LCP=v.store_lcp,
        NO_LCP=kernels._NO_LCP,
        BLOCK_G=v.block_g,
        BLOCK_L=kernels._block_l(v.block_g),
    )
    return _source(kernels._group_kernel, sig, const, ["stride_tl"])


def _write_source(v: Variant) -> ASTSource:
    fp = _FLOAT[v.rewards]
    strides = {"stride_ob": "i64", "stride_ol": _stride(v), "stride_mb": "i64", "stride_ml": _stride(v)}
    if v.kernel == "fill":
        sig = {"out_ptr": fp, "lengths_ptr": "*i64", "row_value_ptr": fp, "loss_ptr": "*u8", "length": "i32", **strides}
        return _source(kernels._fill_kernel, sig, dict(HAS_LOSS=True, BLOCK_L=1024), ["stride_ol", "stride_ml"])
    sig = {"out_ptr": fp, "branch_pos_ptr": "*i32", "branch_value_ptr": fp, "loss_ptr": "*u8", **strides}
    return _source(kernels._scatter_kernel, sig, dict(HAS_LOSS=True, BLOCK_G=v.block_g), ["stride_ol", "stride_ml"])


def _source(fn, sig: dict, const: dict, unit: list[str]) -> ASTSource:
    # A stride of 1 is what Triton's launcher specialises to a constant; a general one stays i64.
    const = {**const, **{name: 1 for name in unit if sig[name] is None}}
    sig = {k: ("constexpr" if v is None else v) for k, v in sig.items()}
    sig.update({k: "constexpr" for k in const})
    return ASTSource(fn, sig, constexprs=const)


def _ptxas() -> list[str]:
    """Triton's bundled assemblers; the newer one reads the PTX versions newer Triton emits."""
    folder = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return [os.path.join(folder, name) for name in ("ptxas", "ptxas-blackwell")]


def resources(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill store bytes) as ptxas -v reports them for sm_90a."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        runs = [
            subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
            for ptxas in _ptxas()
            if os.path.exists(ptxas)
        ]
    finally:
        os.unlink(f.name)
    done = next((r for r in runs if r.returncode == 0), None)
    if done is None:
        raise RuntimeError("no bundled ptxas assembled the kernel: " + " | ".join(r.stderr[-300:] for r in runs))
    regs = max(int(x) for x in re.findall(r"Used (\d+) registers", done.stderr))
    spills = max(int(x) for x in re.findall(r"(\d+) bytes spill stores", done.stderr))
    return regs, spills


def compile_variant(v: Variant) -> dict:
    source = _group_source(v) if v.kernel == "group" else _write_source(v)
    num_warps = kernels._num_warps(v.block_g) if v.kernel == "group" else 4
    compiled = triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    regs, spills = resources(compiled.asm["ptx"])
    return {**asdict(v), "num_warps": num_warps, "registers": regs, "spill_bytes": spills}


def main() -> int:
    for v in variants():
        print(json.dumps(compile_variant(v)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
