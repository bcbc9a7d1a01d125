"""tempo_rl.testing: the layouts strategy, check_implementation on tempo-rl's own backends (all pass)
and on deliberately wrong variants (each caught, with a small counterexample), the adapters and
`tempo-rl check`.

Examples are few here (the checker's own default is 500): Triton runs interpreted on CPU.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import replace

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import tempo_rl
import tempo_rl.testing as tt
from tempo_rl.cli import main as cli_main
from tempo_rl.reference import group_rows, loop_tempo_advantages
from tempo_rl.tolerances import advantage_bound

from . import wrong_variants as wrong
from .strategies import Case, case_from, cases, presentations, relayout

INTERPRETED = not torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXAMPLES = {"reference": 30, "torch": 60, "triton": 10 if INTERPRETED else 60}


def _backend(name: str):
    def fn(*args, **options):
        return tempo_rl.tempo_advantages(*args, backend=name, **options)

    return tt.plain(fn, name=f"backend={name}", device=DEVICE if name != "reference" else None)


# ------------------------------------------------------------------ relayout and presentations


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.bool])
def test_relayout_keeps_values_in_each_layout(dtype):
    t2 = (torch.arange(12).reshape(3, 4) % 3).to(dtype)  # (3, 4)
    t1 = torch.tensor([2, 0, 1]).to(dtype)  # (3,)
    same2, same1 = torch.ones(3, 4).to(dtype), torch.ones(3).to(dtype)  # expandable
    want = {  # how -> (strides of the 2-D view, strides of the 1-D view)
        "contiguous": ((4, 1), (1,)),
        "column_major": ((1, 3), None),
        "column_of_wider": ((8, 2), (3,)),
        "slice_of_bigger": ((6, 1), (1,)),
    }
    for how, (s2, s1) in want.items():
        v2 = relayout(t2, how)
        assert torch.equal(v2, t2) and v2.dtype == dtype and v2.stride() == s2, how
        if s1 is not None:
            v1 = relayout(t1, how)
            assert torch.equal(v1, t1) and v1.stride() == s1, how
    assert relayout(t2, "slice_of_bigger").storage_offset() > 0
    assert relayout(same2, "expanded").stride() == (0, 1) and torch.equal(relayout(same2, "expanded"), same2)
    assert relayout(same1, "expanded").stride() == (0,)


def test_relayout_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="how must be one of"):
        relayout(torch.zeros(2), "diagonal")
    with pytest.raises(ValueError, match="do not repeat"):
        relayout(torch.tensor([1.0, 2.0]), "expanded")
    with pytest.raises(ValueError, match="column_major"):
        relayout(torch.zeros(3), "column_major")
    with pytest.raises(ValueError, match="1-D or 2-D"):
        relayout(torch.zeros(2, 2, 2), "contiguous")


@given(case=cases(max_batch=10, max_len=6), data=st.data())
@settings(max_examples=60)
def test_presentations_keep_every_value(case, data):
    seen = data.draw(presentations(case))
    assert torch.equal(seen.responses.long(), case.responses)
    assert torch.equal(seen.response_mask.bool(), case.response_mask)
    assert torch.equal(seen.rewards, case.rewards) and seen.rewards.dtype == case.rewards.dtype
    assert (seen.loss_mask is None) == (case.loss_mask is None)
    if case.loss_mask is not None:
        assert torch.equal(seen.loss_mask.bool(), case.loss_mask)
    # Same partition into groups, whatever the ids look like.
    groups = lambda ids: sorted(map(tuple, group_rows(ids).values()))  # noqa: E731
    assert groups(seen.group_list) == groups(case.group_list)
    assert seen.layout.startswith("responses ")


def _one_tensor_relaid(case: Case):
    """Every layout of every tensor argument, one argument at a time: (description, Case)."""
    for name in ("responses", "response_mask", "rewards", "loss_mask"):
        tensor = getattr(case, name)
        if tensor is None:
            continue
        for how in tt.layouts_for(tensor):
            yield f"{name} {how}", replace(case, **{name: relayout(tensor, how)})


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fast_equals_reference_in_every_layout(backend):
    """The fast paths on strided, column-major, sliced and expanded tensors, every mask and id dtype,
    group ids as tensors / lists / verl's numpy uids: bitwise the result on contiguous tensors, and
    equal to the reference. Each example tries every layout of each argument on its own, then a
    drawn combination of layouts and dtypes."""

    def run(c: Case) -> torch.Tensor:
        move = lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t  # noqa: E731
        loss = None if c.loss_mask is None else move(c.loss_mask)
        return tempo_rl.tempo_advantages(*map(move, c.args()), loss_mask=loss, backend=backend).cpu()

    @given(case=cases(max_batch=12, max_len=8, max_group=8), data=st.data())
    @settings(
        max_examples=EXAMPLES[backend],
        phases=(Phase.explicit, Phase.generate) if backend == "triton" and INTERPRETED else tuple(Phase),
    )
    def check(case, data):
        ref = tempo_rl.tempo_advantages(*case.args(), **case.kwargs(), backend="reference")
        plain = run(case)
        bound = advantage_bound(case, ref, plain.dtype, norm_by_std=True, eps=1e-6)
        assert ((plain.double() - ref.double()).abs() <= bound).all(), f"contiguous: {plain} != {ref}"
        seen = data.draw(presentations(case))
        for layout, relaid in [*_one_tensor_relaid(case), (seen.layout, seen)]:
            fast = run(relaid)
            assert torch.isfinite(fast).all(), f"{layout}: {fast}"
            assert torch.equal(fast, plain), f"{layout}: {fast} != {plain} (contiguous)"

    check()


# ------------------------------------------------------------------ tempo-rl's own implementations pass


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_own_backends_pass(backend):
    report = tt.check_implementation(_backend(backend), max_examples=EXAMPLES[backend])
    assert report.examples >= EXAMPLES[backend]
    assert tt.PROPERTIES["reference"] in report.properties and tt.PROPERTIES["invariance"] in report.properties


@pytest.mark.parametrize("norm_by_std,td_coef,eps", [(False, 0.5, 1e-6), (True, 0.0, 0.0)])
def test_torch_backend_passes_with_other_options(norm_by_std, td_coef, eps):
    tt.check_implementation(_backend("torch"), norm_by_std=norm_by_std, td_coef=td_coef, eps=eps, max_examples=30)


@pytest.mark.parametrize("exact", [True, False])
def test_reference_loops_pass_through_the_per_row_adapter(exact):
    """reference/loop.py, in rationals and in plain floats (the authors' loop with the contract's fixes)."""

    def loop(*args, **options):
        return loop_tempo_advantages(*args, exact=exact, **options)

    report = tt.check_implementation(tt.per_row(loop, name=f"loop exact={exact}"), max_examples=40)
    assert any("layouts" in line for line in report.not_checked)


def _verl_style(token_level_rewards, response_mask, index, config, *, responses, response_lengths):
    """A verl estimator computed the way tempo_rl.integrations.verl does (verl itself not needed)."""
    L = response_mask.shape[1]
    tree = (torch.arange(L)[None, :] < response_lengths[:, None]).long()  # (B, L)
    adv = tempo_rl.tempo_advantages(
        responses[:, :L],
        tree,
        token_level_rewards.sum(-1),
        list(index),
        loss_mask=response_mask,
        norm_by_std=bool(config.get("norm_adv_by_std_in_grpo", True)),
        eps=float(config.get("tempo_eps", 1e-6)),
        td_coef=float(config.get("tempo_td_coef", 1.0)),
        backend="torch",
    )
    return adv, adv


def test_verl_estimator_adapter_passes_a_verl_style_estimator():
    report = tt.check_implementation(tt.verl_estimator(_verl_style), max_examples=40)
    assert report.name.endswith("_verl_style")


def test_verl_estimator_adapter_hands_over_verl_inputs():
    seen = {}

    def spy(token_level_rewards, response_mask, index, config, **kw):
        seen.update(rewards=token_level_rewards, mask=response_mask, index=index, config=config, **kw)
        return token_level_rewards * 0, None

    case = Case(
        torch.tensor([[5, 6, 0], [5, 0, 0], [0, 0, 0]]),
        torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).bool(),
        torch.tensor([2.0, -1.0, 3.0]),
        ["a", "a", 7],
        torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1]]).bool(),
    )
    impl = tt.verl_estimator(spy, supports=("loss_mask", "td_coef"))
    impl.call(case, {"norm_by_std": True, "eps": 0.1, "td_coef": 0.5})
    assert seen["rewards"].sum(-1).tolist() == [2.0, -1.0, 3.0]  # R_i as the row sum, as verl's GRPO reads it
    assert seen["mask"].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]  # loss mask and padding
    assert seen["response_lengths"].tolist() == [2, 1, 0]
    assert seen["config"] == {"tempo_td_coef": 0.5}  # only what the estimator declared
    assert seen["index"][0] == seen["index"][1] != seen["index"][2]


def test_a_function_without_some_options_declares_them():
    def hard_wired(responses, response_mask, rewards, group_ids):  # norm_by_std=True, td_coef=1, eps=1e-6
        return tempo_rl.tempo_advantages(responses, response_mask, rewards, group_ids, backend="torch")

    report = tt.check_implementation(tt.plain(hard_wired, supports=()), max_examples=20)
    assert any("loss masks" in line for line in report.not_checked)
    with pytest.raises(tt.Counterexample, match="declare the options it takes") as info:
        tt.check_implementation(hard_wired, max_examples=5)
    assert info.value.property == "accepts"
    with pytest.raises(ValueError, match="supports: unknown option"):
        tt.plain(hard_wired, supports=("loss_masks",))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_examples"):
        tt.check_implementation(_backend("torch"), max_examples=0)
    with pytest.raises(TypeError, match="norm_by_std"):
        tt.check_implementation(_backend("torch"), norm_by_std=1)
    with pytest.raises(ValueError, match="eps"):
        tt.check_implementation(_backend("torch"), eps=-1.0)
    with pytest.raises(ValueError, match="td_coef"):
        tt.check_implementation(_backend("torch"), td_coef=math.nan)
    with pytest.raises(ValueError, match="td_coef must be a value or a non-empty sequence"):
        tt.check_implementation(_backend("torch"), td_coef=[])
    with pytest.raises(TypeError, match="loss_mask must be a bool"):
        tt.check_implementation(_backend("torch"), loss_mask="yes")


# ------------------------------------------------------------------ wrong implementations are caught

NO_LOSS = ("norm_by_std", "eps", "td_coef")
WRONG = {
    "padding compared as tokens": (tt.plain(wrong.padding_as_tokens), ("grpo", "reference")),
    "population std": (tt.per_row(wrong.population_std), "reference"),
    "missed end-of-response child": (tt.per_row(wrong.missed_end_of_response), "reference"),
    "TD on the whole suffix": (tt.per_row(wrong.td_on_whole_suffix), ("grpo", "reference")),
}


def _caught(impl, **kw) -> tt.Counterexample:
    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(impl, max_examples=200, **kw)
    return info.value


def _really_differs(impl, found: tt.Counterexample) -> bool:
    """The minimised batch, run again outside the checker under the option setting it failed
    under, does give another answer than the reference."""
    case = found.trial.case
    opts = {k: found.options[k] for k in ("norm_by_std", "eps", "td_coef")}
    out = impl.call(case, opts)
    if isinstance(out, list):  # per-row: n_i values a row
        out = torch.tensor([row + [0.0] * (case.responses.shape[1] - len(row)) for row in out])
    out = torch.as_tensor(out).double().reshape(case.responses.shape)
    ref = tempo_rl.tempo_advantages(
        *case.args(), loss_mask=case.loss_mask if "loss_mask" in impl.supports else None, backend="reference", **opts
    ).double()
    return not torch.allclose(out, ref, rtol=1e-6, atol=1e-9, equal_nan=False)


@pytest.mark.parametrize("mistake", list(WRONG))
def test_wrong_variant_is_caught_with_a_small_counterexample(mistake):
    impl, prop = WRONG[mistake]
    found = _caught(impl)
    assert found.property in (prop if isinstance(prop, tuple) else (prop,)), str(found)
    B, L = found.trial.case.responses.shape
    assert B <= 4 and L <= 4, str(found)  # minimised: these mistakes show on 2 or 3 responses of 1 to 3 tokens
    message = str(found)
    assert "first difference at (row" in message and "expected" in message and "returned" in message
    assert "reproduce:" in message and f"B = {B}, L = {L}" in message
    assert _really_differs(impl, found)


IGNORED = {
    "td_coef": wrong.ignores_td_coef,
    "norm_by_std": wrong.ignores_norm_by_std,
    "eps": wrong.ignores_eps,
    "loss_mask": wrong.ignores_loss_mask,
}


@pytest.mark.parametrize("option", list(IGNORED))
def test_an_ignored_option_is_caught_with_default_arguments(option):
    """Each function takes every option and drops one; with its default arguments the checker
    sweeps the options, so it finds a setting where that one matters and names it."""
    impl = tt.plain(IGNORED[option])
    found = _caught(impl, seed=0)
    assert found.property in ("grpo", "reference"), str(found)
    default = {"norm_by_std": True, "eps": 1e-6, "td_coef": 1.0}
    if option == "loss_mask":
        assert found.trial.case.loss_mask is not None and found.options["loss_mask"], str(found)
    else:
        assert found.options[option] != default[option], str(found)
    assert f"{option}={found.options[option]}" in str(found) or option == "loss_mask", str(found)
    assert "(setting " in str(found) and "counterexample batch" in str(found)
    assert _really_differs(impl, found)


def test_pinned_options_check_only_those():
    report = tt.check_implementation(wrong.ignores_td_coef, td_coef=1.0, max_examples=24, seed=0)
    assert report.options["td_coef"] == (1.0,) and report.settings == 6  # norm_by_std x eps x loss mask
    report = tt.check_implementation(
        wrong.ignores_norm_by_std, norm_by_std=True, td_coef=[0.0, 0.5], eps=1e-6, loss_mask=False, max_examples=8
    )
    assert report.settings == 2 and report.options["norm_by_std"] == (True,)
    found = _caught(tt.plain(wrong.ignores_td_coef), td_coef=[1.0, 0.5], norm_by_std=False, loss_mask=False)
    assert found.options["td_coef"] == 0.5 and not found.options["norm_by_std"], str(found)


def test_options_a_function_does_not_take_are_not_swept():
    def no_options(responses, response_mask, rewards, group_ids):
        return tempo_rl.tempo_advantages(responses, response_mask, rewards, group_ids, backend="torch")

    report = tt.check_implementation(tt.plain(no_options, supports=()), max_examples=5)
    assert report.settings == 1 and report.options["td_coef"] == (1.0,)
    assert any("td_coef: the function does not take it" in line for line in report.not_checked)
    with pytest.raises(ValueError, match="td_coef: the function does not take it"):
        tt.check_implementation(tt.plain(no_options, supports=()), td_coef=[0.0, 1.0])
    with pytest.raises(ValueError, match="loss_mask=True"):
        tt.check_implementation(tt.plain(no_options, supports=()), loss_mask=True)


def test_authors_loop_is_reported():
    """The authors' released loop: NaN for a group of one and padding compared as tokens (docs/testing.md)."""
    found = _caught(tt.plain(wrong.authors_loop, supports=NO_LOSS), seed=1)
    assert found.property in ("finite", "reference")
    if found.property == "finite":
        assert found.trial.case.responses.shape[0] == 1, str(found)  # a group of one
    fixed = lambda *a, **kw: wrong.authors_loop(*a, group_of_one_is_nan=False, **kw)  # noqa: E731
    impl = tt.plain(fixed, supports=NO_LOSS, name="authors_loop, group of one fixed")
    found = _caught(impl)
    assert found.property in ("grpo", "reference") and found.trial.case.responses.shape[0] <= 3, str(found)
    assert _really_differs(impl, found)


def _nudged(out: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """One float64 ulp up where `where` and out != 0: far inside the tolerance, but not bitwise."""
    return torch.where(where & (out != 0), torch.nextafter(out, torch.tensor(math.inf, dtype=out.dtype)), out)


def _reference64(responses, response_mask, rewards, group_ids, **options):
    return tempo_rl.tempo_advantages(
        responses, response_mask, torch.as_tensor(rewards).double(), group_ids, backend="reference", **options
    )


def test_batch_invariance_is_checked_bitwise():
    def depends_on_batch_size(*args, **options):  # the last bit follows the parity of B
        out = _reference64(*args, **options)
        return _nudged(out, torch.full(out.shape, out.shape[0] % 2 == 1))

    found = _caught(tt.plain(depends_on_batch_size))
    assert found.property == "invariance", str(found)
    tt.check_implementation(tt.plain(depends_on_batch_size), batch_invariant=False, max_examples=30)


def test_non_branch_exactness_is_checked_bitwise():
    def odd_tokens_off_by_one_ulp(*args, **options):
        out = _reference64(*args, **options)
        return _nudged(out, (torch.arange(out.shape[1]) % 2 == 1).expand(out.shape))

    found = _caught(tt.plain(odd_tokens_off_by_one_ulp), batch_invariant=False)
    assert found.property == "grpo", str(found)
    tt.check_implementation(
        tt.plain(odd_tokens_off_by_one_ulp), exact_non_branch=False, batch_invariant=False, max_examples=30
    )


def test_degenerate_groups_and_shapes_are_checked():
    def eps_noise(responses, response_mask, rewards, group_ids, **options):  # 1e-300 instead of exactly 0
        out = _reference64(responses, response_mask, rewards, group_ids, **options)
        r = torch.as_tensor(rewards)
        for rows in group_rows(
            torch.as_tensor(group_ids).tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
        ).values():
            if len(rows) == 1 or bool((r[rows] == r[rows[0]]).all()):
                out[rows] += torch.as_tensor(response_mask)[rows].double() * 1e-300
        return out

    assert _caught(tt.plain(eps_noise)).property == "degenerate"

    def one_column_short(*args, **options):
        return _reference64(*args, **options)[:, :-1]

    found = _caught(tt.plain(one_column_short))
    assert found.property == "shape" and "returned shape" in str(found)


# ------------------------------------------------------------------ the command


def test_check_command(tmp_path, capsys):
    (tmp_path / "engine_impl.py").write_text(
        textwrap.dedent("""
        import tempo_rl

        def tempo(*args, **options):
            return tempo_rl.tempo_advantages(*args, backend="torch", **options)

        def grpo_only(*args, td_coef=1.0, **options):
            return tempo_rl.grpo_advantages(*args, backend="torch", **options)

        def td_coef_ignored(*args, td_coef=1.0, **options):
            return tempo_rl.tempo_advantages(*args, backend="torch", **options)
    """)
    )
    common = ["check", "--max-examples", "15", "--seed", "0"]
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:tempo"]) == 0
    assert "no counterexample in" in capsys.readouterr().out
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:grpo_only"]) == 1
    out = capsys.readouterr().out
    assert "fails: equals the reference" in out and "first difference at (row" in out
    assert cli_main([*common, "tempo_rl.reference:loop_tempo_advantages", "--adapter", "per-row"]) == 0
    capsys.readouterr()
    # the options are swept by default, so an ignored td_coef is caught; pinning td_coef=1 passes
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:td_coef_ignored"]) == 1
    out = capsys.readouterr().out
    assert "(setting " in out and "td_coef=1.0" not in out.splitlines()[1], out
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:td_coef_ignored", "--td-coef", "1"]) == 0
    assert "td_coef in (1.0)" in capsys.readouterr().out
    pinned = ["--td-coef", "0,2", "--no-norm-by-std", "--no-loss-mask"]
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:tempo", *pinned]) == 0
    assert "2 option settings" in capsys.readouterr().out
    assert cli_main([*common, f"{tmp_path}/engine_impl.py:missing"]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_edge_cases_are_checked_too():
    """A function right on random batches but wrong on a pinned edge case is still caught."""
    edge = case_from([[1], [1, 2], [1, 2, 0]], [0.0, 1.0, 3.0], [7, 7, 7])

    def wrong_on_edge(responses, response_mask, rewards, group_ids, **options):
        out = _reference64(responses, response_mask, rewards, group_ids, **options)
        same = responses.shape == edge.responses.shape and torch.equal(responses.long(), edge.responses)
        return out * 2 if same and list(group_ids) == [7, 7, 7] else out

    with pytest.raises(tt.Counterexample):
        tt.check_implementation(tt.plain(wrong_on_edge), max_examples=5, seed=0)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--max-examples", "0"], "--max-examples"),
        (["--td-coef", "nan"], "--td-coef"),
        (["--td-coef", "0,x"], "--td-coef"),
        (["--eps", "inf"], "--eps"),
        (["--eps", "-1"], "--eps"),
        (["--device", "nosuchdevice"], "--device"),
        (["--device", "cuda:99"], "--device"),  # no such GPU here, with or without CUDA
        (["--device", "cpu", "--adapter", "per-row"], "--device"),
    ],
)
def test_check_command_usage_errors_exit_2_in_one_line(flags, named, capsys):
    """A bad flag is a usage error (2), reported before any check, never a counterexample (1)."""
    assert cli_main(["check", "tempo_rl.reference:loop_tempo_advantages", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert named in captured.err and "Traceback" not in captured.err


def test_the_reproduction_names_the_device():
    def doubled(*args, **options):
        return 2 * tempo_rl.tempo_advantages(*args, backend="torch", **options)

    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(tt.plain(doubled, device="cpu"), max_examples=5, seed=0)
    assert "responses = torch.tensor(" in str(info.value) and "device='cpu')" in str(info.value)


# ------------------------------------------------------------------ the checker's blind spots, closed
def _exact(responses, response_mask, rewards, group_ids, **options):
    """The reference in the rewards' dtype."""
    return tempo_rl.tempo_advantages(responses, response_mask, rewards, group_ids, backend="reference", **options)


def assumes_right_padding(responses, response_mask, rewards, group_ids, **options):
    """Right on right-padded batches: it reads each row's first n columns as the response."""
    n = response_mask.bool().sum(1, keepdim=True)
    right = torch.arange(responses.shape[1]) < n
    return _exact(responses, right, rewards, group_ids, **options)


def second_block_wrong(responses, response_mask, rewards, group_ids, **options):
    """A block-based kernel whose blocks after the first (columns 32 on) lose their last bit."""
    out = _exact(responses, response_mask, rewards, group_ids, **options)
    out[:, 32:] *= 1 + 1e-9
    return out


def test_an_implementation_wrong_only_on_left_padding_is_caught_with_default_arguments():
    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(assumes_right_padding)
    message = str(info.value)
    assert "left padded" in message and "response_mask = torch.tensor(" in message


def test_an_implementation_wrong_only_past_column_32_is_caught_with_default_arguments():
    """Caught by the GRPO reduction (bitwise), or by batch invariance when the wrong token is a row's
    only one (left padded to column 32 in the batch, at column 0 alone): either needs L > 32."""
    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(second_block_wrong)
    assert info.value.property in ("reference", "grpo", "invariance"), str(info.value)
    assert info.value.trial.case.responses.shape[1] > 32, str(info.value)


def test_left_padded_batches_pass_an_implementation_that_reads_the_mask():
    report = tt.check_implementation(_exact, max_examples=48, seed=3)
    assert report.random == 48


def test_a_nondeterministic_implementation_is_a_counterexample_not_a_traceback():
    calls = [0]

    def sometimes(*args, **options):
        calls[0] += 1
        out = _exact(*args, **options)
        return out + 1.0 if calls[0] == 7 else out

    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(sometimes, max_examples=50, seed=0)
    assert "nondeterministic" in str(info.value)


def test_a_meta_device_result_is_a_counterexample():
    def meta(responses, *args, **options):
        return torch.empty(responses.shape, device="meta")

    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(meta, max_examples=5, seed=0)
    assert info.value.property == "shape" and "meta device" in str(info.value)


def test_writing_into_the_inputs_is_reported_with_the_original_batch():
    def zeroes_rewards(responses, response_mask, rewards, group_ids, **options):
        out = _exact(responses, response_mask, rewards, group_ids, **options)
        rewards.zero_()
        return out

    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(zeroes_rewards, max_examples=20, seed=0)
    assert info.value.property == "inputs" and "wrote into rewards" in str(info.value)
    assert bool((info.value.trial.case.rewards != 0).any())  # the batch kept as handed over, not zeroed


def test_a_correctly_rounded_float16_result_passes():
    def half(*args, **options):
        return _exact(*args, **options).half()

    report = tt.check_implementation(half, max_examples=48, seed=0)
    assert report.edge_cases == len(tt.check.EDGE)


def test_a_slow_check_prints_progress():
    lines: list[str] = []
    tt.check_implementation(_exact, max_examples=24, seed=0, progress=lines.append, progress_every=0.0)
    assert lines and "batches" in lines[0] and "about" in lines[0]


def test_the_report_says_what_ran_not_what_was_asked(capsys):
    """--max-examples 30 over 24 option settings runs 2 random batches each (48) and the 9 pinned
    edge cases under every setting; the report says so instead of "264 batches"."""
    assert cli_main(["check", "tempo_rl.reference:loop_tempo_advantages", "--adapter", "per-row",
                     "--max-examples", "30", "--seed", "0"]) == 0  # fmt: skip
    head = capsys.readouterr().out.splitlines()[0]
    edge = len(tt.check.EDGE)
    assert f"48 random batches (30 asked for, 2 per option setting) and {edge} pinned edge cases" in head
    assert f"24 option settings ({48 + 24 * edge} batches in all)" in head


def test_a_function_that_exits_is_a_counterexample_not_a_pass(capsys):
    def exits(*args, **options):
        raise SystemExit(0)

    with pytest.raises(tt.Counterexample) as info:
        tt.check_implementation(exits, max_examples=5, seed=0)
    assert info.value.property == "accepts" and "raised SystemExit" in str(info.value)
