"""The fused policy loss: chunked torch and Triton equal the full-logits reference, loss and gradients.

Oracle: `policy_loss_ref` (fast/policy_loss_torch.py), itself checked against the trainer's loss
(trainer/loss.py) below. Tolerance, FlashAttention's rule, measured per example: the fast path in
float32 may be off the float64 reference by at most 4x what the reference itself, run in float32,
is off it (plus a floor of 64 float32 ulps of the value's scale, for components where the
reference happens to round exactly; for the loss, plus 4 ulps of its terms' scale, since terms of
|A| ~ 1e4 may cancel to a loss of ~20 and the reference in float32 may round luckily). Triton runs natively on CUDA, else in the interpreter
(tests/conftest.py), with small BLOCK_V so rows cross column blocks.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_rl
from tempo_rl.fast.policy_loss_torch import (
    policy_loss_chunked,
    policy_loss_ref,
    token_logprobs_chunked,
    token_weights,
)
from tempo_rl.policy_loss import fused_logprobs
from tempo_rl.trainer.loss import entropy_from_logits, policy_loss, token_logprobs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS32 = torch.finfo(torch.float32).eps
METRICS = ("policy_loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "approx_kl", "entropy")


def _triton_chunked(**kw):
    from tempo_rl.fast.policy_loss_triton import chunk_step_triton

    return functools.partial(policy_loss_chunked, chunk_step=functools.partial(chunk_step_triton, block_v=16), **kw)


# ----------------------------------------------------------------------------- inputs
@st.composite
def problems(draw, max_v: int = 70):
    """Loss inputs as users pass them: ragged masks with empty rows, ratios far from 1, extreme and
    zero advantages, padding holding garbage (-inf, nan), strided views."""
    b, t = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    h, v = draw(st.integers(1, 9)), draw(st.integers(2, max_v))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T), rows of length 0 allowed
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * scale
    bias = torch.randn(v, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    targets = torch.randint(0, v, (b, t), generator=g)
    # old_logp: the current log-probs shifted so the ratio exp(shift) lands in and out of the clip range.
    shift = torch.randn(b, t, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 0.1, 0.5, 2.0]))
    temperature = draw(st.sampled_from([1.0, 0.7, 1.5]))
    logits = (hidden @ weight.T + (0 if bias is None else bias)) / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old = logp - shift
    adv_scale = draw(st.sampled_from([1.0, 1e-3, 1e4]))
    adv = torch.randn(b, t, generator=g, dtype=torch.float64) * adv_scale
    adv = torch.where(torch.rand(b, t, generator=g) < 0.2, torch.zeros_like(adv), adv)  # A = 0 tokens
    kl_coef = draw(st.sampled_from([0.0, 0.05]))
    ref = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    old = torch.where(mask, old, torch.full_like(old, -math.inf))  # padding holds garbage
    adv = torch.where(mask, adv, torch.full_like(adv, math.nan))
    return {
        "hidden": hidden,
        "weight": weight,
        "bias": bias,
        "targets": targets,
        "old_logp": old,
        "advantages": adv,
        "mask": mask,
        "ref_logp": ref if kl_coef else None,
        "kl_coef": kl_coef,
        "temperature": temperature,
        "aggregation": draw(st.sampled_from(["token-mean", "sequence-mean"])),
        "clip_low": 0.2,
        "clip_high": 0.28,
        "chunk": draw(st.integers(1, b * t + 2)),
        "strided": draw(st.booleans()),
    }


def _cast(pb: dict, dtype: torch.dtype, device: str = "cpu") -> tuple[dict, dict]:
    """(tensor args with hidden / weight / bias in `dtype` and requiring grad, keyword scalars)."""

    def leaf(x):
        if x is None:
            return None
        y = x.to(device=device, dtype=dtype)
        if pb["strided"] and y.dim() >= 2:  # a column slice of a wider tensor: non-contiguous
            wide = torch.zeros(*y.shape[:-1], 2 * y.shape[-1], dtype=dtype, device=device)
            wide[..., ::2] = y
            y = wide[..., ::2]
        return y.detach().requires_grad_(True)

    args = {"hidden": leaf(pb["hidden"]), "weight": leaf(pb["weight"]), "bias": leaf(pb["bias"])}
    other = {
        k: (None if pb[k] is None else pb[k].to(device))
        for k in ("targets", "old_logp", "advantages", "mask", "ref_logp")
    }
    if pb["strided"]:
        other["targets"] = other["targets"].t().contiguous().t()  # column-major
    kw = {k: pb[k] for k in ("kl_coef", "temperature", "aggregation", "clip_low", "clip_high")}
    return {**args, **other}, kw


def _run(fn, pb: dict, dtype: torch.dtype, device: str = "cpu", **extra) -> dict[str, torch.Tensor]:
    """Loss, metrics and gradients of hidden / weight / bias, as float64 on the CPU."""
    a, kw = _cast(pb, dtype, device)
    loss, metrics = fn(
        a["hidden"],
        a["weight"],
        a["targets"],
        a["old_logp"],
        a["advantages"],
        a["mask"],
        bias=a["bias"],
        ref_logp=a["ref_logp"],
        **kw,
        **extra,
    )
    loss.backward()
    out = {"loss": loss.detach(), **{f"m_{k}": v for k, v in metrics.items()}}
    for name in ("hidden", "weight", "bias"):
        if a[name] is not None:
            out[f"d_{name}"] = a[name].grad
    return {k: v.double().cpu() for k, v in out.items()}


def _surrogate_scale(pb: dict) -> float:
    """sum over tokens of w |A| max(r, 1) (1 + |log p|): how far float32 rounding of each token's log-prob
    (relative error ~eps in |log p|, times |A| r) can move the surrogate. The loss is a weighted sum of
    such terms, which may cancel to a value far smaller than its terms: with |A| ~ 1e4 and a loss of
    ~20, the result's own scale says nothing about its rounding error, the terms' scale does."""
    a, kw = _cast({**pb, "strided": False}, torch.float64)
    with torch.no_grad():
        logits = (a["hidden"] @ a["weight"].T + (0 if a["bias"] is None else a["bias"])) / kw["temperature"]
        logp = torch.log_softmax(logits, -1).gather(-1, a["targets"].unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - a["old_logp"]).clamp(min=1.0)
        w = token_weights(pb["mask"], kw["aggregation"]).double()
        adv = torch.where(pb["mask"], a["advantages"], torch.zeros_like(a["advantages"])).abs()
        terms = w * adv * ratio * (1.0 + logp.abs())
    return float(torch.where(pb["mask"], terms, torch.zeros_like(terms)).sum())


def _assert_close_to_oracle(fast: dict, ref32: dict, ref64: dict, pb: dict) -> None:
    surrogate = 4 * EPS32 * _surrogate_scale(pb)
    for key in ["loss", "d_hidden", "d_weight", "d_bias", "m_policy_loss", "m_kl", "m_approx_kl", "m_entropy"]:
        if key not in ref64:
            continue
        assert torch.isfinite(fast[key]).all(), key
        base = (ref32[key] - ref64[key]).abs().max().item()
        floor = 64 * EPS32 * (1.0 + ref64[key].abs().max().item())
        if key in ("loss", "m_policy_loss"):
            floor += surrogate
        err = (fast[key] - ref64[key]).abs().max().item()
        assert err <= 4 * base + floor, f"{key}: error {err:.3g} vs float32 reference's {base:.3g} (+{floor:.3g})"
    _assert_clip_fractions(fast, ref64, pb)


def _assert_clip_fractions(fast: dict, ref64: dict, pb: dict) -> None:
    """Equal, except for tokens whose ratio lies within float32 rounding of a clip bound."""
    n = max(int(pb["mask"].sum()), 1)
    a, kw = _cast({**pb, "strided": False}, torch.float64)
    with torch.no_grad():
        logits = (a["hidden"] @ a["weight"].T + (0 if a["bias"] is None else a["bias"])) / kw["temperature"]
        logp = torch.log_softmax(logits, -1).gather(-1, a["targets"].unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - a["old_logp"])
    near = sum(((ratio - bound).abs() <= 1e-4 * bound) & pb["mask"] for bound in (0.8, 1.28)).sum().item()
    for key in ("m_clip_fraction", "m_clip_fraction_low", "m_clip_fraction_high"):
        assert abs(fast[key] - ref64[key]).item() * n <= near + 1e-6, key


def _differential(fn, pb: dict, **extra) -> None:
    ref64 = _run(policy_loss_ref, pb, torch.float64)
    ref32 = _run(policy_loss_ref, pb, torch.float32)
    fast = _run(fn, pb, torch.float32, DEVICE, **extra)
    _assert_close_to_oracle(fast, ref32, ref64, pb)


# ----------------------------------------------------------------------------- differential
@settings(max_examples=60)
@given(problems())
def test_chunked_torch_matches_reference(pb):
    _differential(policy_loss_chunked, pb, chunk_size=pb["chunk"])


@settings(max_examples=15 if DEVICE == "cpu" else 60)
@given(problems(max_v=40))
def test_triton_chunk_step_matches_reference(pb):
    _differential(_triton_chunked(chunk_size=pb["chunk"]), pb)


@settings(max_examples=10)
@given(problems())
def test_public_function_every_backend(pb):
    for backend in ("auto", "torch"):
        _differential(functools.partial(tempo_rl.fused_policy_loss, backend=backend), pb)
    # The reference backend is the float32 oracle itself: held to the oracle's tolerance it could not
    # fail, so it must give the definition's own numbers, bitwise.
    got = _run(functools.partial(tempo_rl.fused_policy_loss, backend="reference"), pb, torch.float32, DEVICE)
    want = _run(policy_loss_ref, pb, torch.float32, DEVICE)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_public_function_triton_backend():
    pb = _fixed_problem()
    _differential(functools.partial(tempo_rl.fused_policy_loss, backend="triton"), pb)


@settings(max_examples=15)
@given(problems())
def test_bfloat16_inputs(pb):
    """bf16 hidden and weight (matmuls in bf16, everything after in float32), as under autocast."""
    ref64 = _run(policy_loss_ref, pb, torch.float64)
    ref16 = _run(policy_loss_ref, pb, torch.bfloat16)
    fast = _run(policy_loss_chunked, pb, torch.bfloat16, DEVICE, chunk_size=pb["chunk"])
    for key in ("loss", "d_hidden", "d_weight", "d_bias"):
        if key in ref64:
            base = (ref16[key] - ref64[key]).abs().max().item()
            floor = 64 * torch.finfo(torch.bfloat16).eps * (1.0 + ref64[key].abs().max().item())
            err = (fast[key] - ref64[key]).abs().max().item()
            assert err <= 4 * base + floor, f"{key}: {err:.3g} vs bf16 reference's {base:.3g}"


def _fixed_problem() -> dict:
    """A problem drawn once from a fixed seed (B=3, T=5, V=37 > BLOCK_V=16), KL on, empty row."""
    g = torch.Generator().manual_seed(7)
    b, t, h, v = 3, 5, 6, 37
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    hidden, weight = torch.randn(b, t, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g).double()
    targets = torch.randint(0, v, (b, t), generator=g)
    logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return {
        "hidden": hidden,
        "weight": weight,
        "bias": None,
        "targets": targets,
        "old_logp": logp - torch.randn(b, t, generator=g).double(),
        "advantages": torch.randn(b, t, generator=g).double(),
        "mask": mask,
        "ref_logp": logp + 0.2,
        "kl_coef": 0.1,
        "temperature": 1.0,
        "aggregation": "sequence-mean",
        "clip_low": 0.2,
        "clip_high": 0.28,
        "chunk": 4,
        "strided": False,
    }


# ----------------------------------------------------------------------------- definitions
@settings(max_examples=30)
@given(problems())
def test_reference_is_the_trainers_loss(pb):
    """policy_loss_ref == trainer/loss.py's policy_loss on token_logprobs of the same logits."""
    a, kw = _cast({**pb, "strided": False}, torch.float32)
    loss, metrics = policy_loss_ref(
        a["hidden"],
        a["weight"],
        a["targets"],
        a["old_logp"],
        a["advantages"],
        a["mask"],
        bias=a["bias"],
        ref_logp=a["ref_logp"],
        **kw,
    )
    logits = torch.nn.functional.linear(a["hidden"], a["weight"], a["bias"]) / kw["temperature"]
    m = a["mask"]
    old = torch.where(m, a["old_logp"].float(), 0.0)  # the trainer never sees padding garbage
    adv = torch.where(m, a["advantages"].float(), 0.0)
    ref = None if a["ref_logp"] is None else torch.where(m, a["ref_logp"].float(), 0.0)
    out = policy_loss(
        token_logprobs(logits, a["targets"]),
        old,
        adv,
        m.long(),
        aggregation=kw["aggregation"],
        ref_logp=ref,
        kl_coef=kw["kl_coef"],
    )
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6 * (1 + out.loss.abs().item()))
    torch.testing.assert_close(metrics["clip_fraction"], out.clip_fraction)
    torch.testing.assert_close(metrics["approx_kl"], out.approx_kl, rtol=1e-5, atol=1e-6)
    entropy = (entropy_from_logits(logits.detach()) * m).sum() / m.sum().clamp(min=1)
    torch.testing.assert_close(metrics["entropy"], entropy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_hand_worked_clip(backend):
    """V = 2, zero head: logp = -log 2 at every token. old_logp = -2 log 2 makes r = 2 > 1.28:
    A = +1 is clipped (loss -1.28, no gradient), A = -1 is not (loss +2, gradient -r A = 2 on logp)."""
    hidden = torch.ones(1, 2, 3, requires_grad=True)
    weight = torch.zeros(2, 3, requires_grad=True)
    targets, mask = torch.tensor([[0, 1]]), torch.ones(1, 2)
    old = torch.full((1, 2), -2 * math.log(2))
    adv = torch.tensor([[1.0, -1.0]])
    loss, m = tempo_rl.fused_policy_loss(hidden, weight, targets, old, adv, mask, backend=backend)
    loss.backward()
    assert loss.item() == pytest.approx((-1.28 + 2.0) / 2, abs=1e-6)
    assert m["clip_fraction_high"].item() == 0.5 and m["clip_fraction_low"].item() == 0.0
    # Only token 1 carries gradient: d loss / d logp_1 = (2 / 2) (token-mean), d logp / d z = onehot(1) - (1/2, 1/2).
    expected_dw = torch.tensor([[-0.5] * 3, [0.5] * 3])
    torch.testing.assert_close(weight.grad, expected_dw)
    torch.testing.assert_close(hidden.grad, torch.zeros(1, 2, 3))
    assert m["entropy"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_backward_scales_with_incoming_gradient_and_frozen_head():
    pb = _fixed_problem()
    a, kw = _cast(pb, torch.float32)
    a["weight"].requires_grad_(False)
    loss, _ = policy_loss_chunked(
        a["hidden"],
        a["weight"],
        a["targets"],
        a["old_logp"],
        a["advantages"],
        a["mask"],
        ref_logp=a["ref_logp"],
        **kw,
        chunk_size=3,
    )
    (3.0 * loss).backward()
    b, _ = _cast(pb, torch.float32)
    ref, _ = policy_loss_ref(
        b["hidden"], b["weight"], b["targets"], b["old_logp"], b["advantages"], b["mask"], ref_logp=b["ref_logp"], **kw
    )
    (3.0 * ref).backward()
    assert a["weight"].grad is None
    torch.testing.assert_close(a["hidden"].grad, b["hidden"].grad, rtol=1e-4, atol=1e-6)


def test_second_backward_is_refused():
    """Gradients are scaled in place in backward: a second backward must fail loudly, not double-scale."""
    pb = _fixed_problem()
    a, kw = _cast(pb, torch.float32)
    loss, _ = policy_loss_chunked(
        a["hidden"], a["weight"], a["targets"], a["old_logp"], a["advantages"], a["mask"], ref_logp=a["ref_logp"], **kw
    )
    (2.0 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        (2.0 * loss).backward()


def test_logprobs_in_chunks_match_full_logits():
    pb = _fixed_problem()
    h, w = pb["hidden"].float(), pb["weight"].float()
    full = token_logprobs(torch.nn.functional.linear(h, w) / 0.7, pb["targets"])
    torch.testing.assert_close(token_logprobs_chunked(h, w, pb["targets"], temperature=0.7, chunk_size=4), full)
    torch.testing.assert_close(fused_logprobs(h, w, pb["targets"], temperature=0.7), full)


def test_empty_mask_gives_zero_loss_and_zero_gradient():
    pb = {**_fixed_problem(), "mask": torch.zeros(3, 5, dtype=torch.bool)}
    out = _run(policy_loss_chunked, pb, torch.float32, chunk_size=2)
    assert out["loss"].item() == 0.0 and out["d_hidden"].abs().max().item() == 0.0
    assert all(torch.isfinite(v).all() for v in out.values())


# ----------------------------------------------------------------------------- bad input
def _good() -> dict:
    b, t, h, v = 2, 3, 4, 5
    return {
        "hidden": torch.zeros(b, t, h),
        "weight": torch.zeros(v, h),
        "targets": torch.zeros(b, t, dtype=torch.long),
        "old_logp": torch.zeros(b, t),
        "advantages": torch.zeros(b, t),
        "mask": torch.ones(b, t),
    }


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"hidden": torch.zeros(2, 3)}, "hidden"),
        ({"hidden": torch.zeros(2, 3, 4, dtype=torch.long)}, "hidden"),
        ({"weight": torch.zeros(5, 7)}, "weight"),
        ({"weight": torch.zeros(5, 4, dtype=torch.float64)}, "weight"),
        ({"targets": torch.zeros(2, 3)}, "targets"),
        ({"targets": torch.full((2, 3), 5)}, "targets"),
        ({"targets": torch.zeros(2, 4, dtype=torch.long)}, "targets"),
        ({"old_logp": torch.zeros(2, 4)}, "old_logp"),
        ({"old_logp": torch.full((2, 3), math.nan)}, "old_logp"),
        ({"advantages": torch.zeros(3, 3)}, "advantages"),
        ({"advantages": torch.zeros(2, 3, dtype=torch.long)}, "advantages"),
        ({"advantages": torch.full((2, 3), math.inf)}, "advantages"),
        ({"mask": torch.ones(2, 2)}, "mask"),
        ({"mask": torch.full((2, 3), 2.0)}, "mask"),
        ({"bias": torch.zeros(4)}, "bias"),
        ({"ref_logp": torch.zeros(2, 2), "kl_coef": 0.1}, "ref_logp"),
        ({"kl_coef": 0.1}, "ref_logp"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"clip_low": 1.5}, "clip_low"),
        ({"clip_high": math.nan}, "clip_high"),
        ({"temperature": 0.0}, "temperature"),
        ({"hidden": torch.ones(2, 3, 4), "weight": torch.ones(5, 4), "temperature": 1e-38}, "temperature"),
        ({"hidden": torch.full((2, 3, 4), math.inf)}, "hidden"),
        ({"weight": torch.full((5, 4), math.nan)}, "weight"),
        ({"aggregation": "sum"}, "aggregation"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    args = {**_good(), **change}
    positional = [args.pop(k) for k in ("hidden", "weight", "targets", "old_logp", "advantages", "mask")]
    with pytest.raises((ValueError, TypeError), match=name):
        tempo_rl.fused_policy_loss(*positional, **args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smallest_accepted_temperature_gives_finite_loss_and_gradients(dtype):
    """A temperature the check lets through keeps logits / temperature finite: loss, metrics and
    gradients are finite at the smallest one it accepts, and one 4x smaller is refused."""
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(2, 3, 8, generator=g) * 3).to(dtype)
    weight = torch.randn(11, 8, generator=g).to(dtype)
    targets, mask = torch.randint(0, 11, (2, 3), generator=g), torch.ones(2, 3)
    old_logp = torch.full((2, 3), -1.0)
    adv = torch.randn(2, 3, generator=g)
    bound = 8 * hidden.float().abs().max().item() * weight.float().abs().max().item()
    smallest = 2 * bound / torch.finfo(torch.float32).max  # logits and their differences within float32
    for backend in ("torch", "reference"):
        h = hidden.clone().requires_grad_(True)
        loss, metrics = tempo_rl.fused_policy_loss(
            h, weight, targets, old_logp, adv, mask, temperature=smallest * 1.01, backend=backend
        )
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(h.grad).all(), backend
        assert all(torch.isfinite(v) for k, v in metrics.items() if k != "approx_kl"), (backend, metrics)
        assert metrics["entropy"] >= 0, (backend, metrics)
        with pytest.raises(ValueError, match="temperature=.* is too small"):
            tempo_rl.fused_policy_loss(
                hidden, weight, targets, old_logp, adv, mask, temperature=smallest / 4, backend=backend
            )
    assert torch.isfinite(fused_logprobs(hidden, weight, targets, temperature=smallest * 1.01)).all()
    with pytest.raises(ValueError, match="temperature=.* is too small"):
        fused_logprobs(hidden, weight, targets, temperature=smallest / 4)


# ----------------------------------------------------------------------------- Triton compiles for a GPU
@pytest.mark.slow
def test_triton_chunk_kernel_compiles_for_sm90():
    """The interpreter accepts code the compiler may reject: compile the kernel for an H100 too."""
    script = (
        "import triton\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        "from tempo_rl.fast import policy_loss_triton as m\n"
        "ptrs = ['logits_ptr', 'targets_ptr', 'old_ptr', 'pos_ptr', 'neg_ptr', 'ref_ptr', 'weight_ptr', 'logp_ptr',\n"
        "        'entropy_ptr', 'pg_ptr', 'kl_ptr']\n"
        "sig = {p: '*fp32' for p in ptrs}\n"
        "sig['targets_ptr'] = '*i64'\n"
        "sig.update(vocab='i32', stride_row='i64', clip_low='fp32', clip_high='fp32', kl_coef='fp32',\n"
        "           inv_temperature='fp32')\n"
        "for has_ref in (False, True):\n"
        "    const = dict(HAS_REF=has_ref, WITH_GRAD=True, BLOCK_V=4096)\n"
        "    s = {**sig, **{k: 'constexpr' for k in const}}\n"
        "    triton.compile(ASTSource(m._chunk_kernel, s, constexprs=const), target=GPUTarget('cuda', 90, 32))\n"
        "print('compiled')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if "ptxas" in done.stderr and "not found" in done.stderr:
        pytest.skip("this triton wheel ships no ptxas")
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_docstring_example():
    import doctest

    import tempo_rl.policy_loss

    result = doctest.testmod(tempo_rl.policy_loss)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_any_target_is_ignored_where_the_mask_is_0(backend):
    """HF labels: -100 (or any id) where the mask is 0 gives the loss of the same batch with valid ids there."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 3, 4, generator=g), torch.randn(5, 4, generator=g)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    old, adv = torch.randn(2, 3, generator=g) - 2.0, torch.randn(2, 3, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    want, _ = tempo_rl.fused_policy_loss(hidden, weight, targets, old, adv, mask, backend=backend)
    labels = torch.where(mask.bool(), targets, torch.tensor([[0, 0, -100], [0, 99, -100]]))
    got, _ = tempo_rl.fused_policy_loss(hidden, weight, labels, old, adv, mask, backend=backend)
    assert torch.equal(got, want)
    bad = targets.clone()
    bad[1, 0] = -100  # mask 1 there
    with pytest.raises(ValueError, match=r"targets\[1, 0\] = -100 where mask is 1"):
        tempo_rl.fused_policy_loss(hidden, weight, bad, old, adv, mask, backend=backend)
