"""Hypothesis strategies for random TEMPO batches, and the memory layouts users pass them in.

Batches are built to exercise the prefix tree: tiny vocabularies and copied prefixes (so responses
share prefixes and branch at any depth), ragged lengths including 0 and L, groups of any size
interleaved anywhere, padding values that collide with real token ids, and binary, continuous,
equal, offset and few-valued rewards. `presentations` then hands the same values over the way
engines do: column-major, a column of a wider tensor, a slice of a bigger one, stride-0 expanded,
masks of bool/uint8/int32/float32, ids of int32/int64, group ids as tensors, lists of ints or of
strings (verl's uids).

    from hypothesis import given
    from tempo_rl.testing import cases, presentations

    @given(case=cases(max_batch=12, max_len=8))
    def test_mine(case):
        out = my_tempo(*case.args(), **case.kwargs())   # (B, L)

    @given(data=st.data(), case=cases())
    def test_layouts(data, case):
        seen = data.draw(presentations(case))          # same values, another layout
        assert torch.equal(my_tempo(*seen.args()), my_tempo(*case.args()))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Hashable, Sequence

import numpy as np
import torch
from hypothesis import strategies as st

from ..reference.padding import response_spans, unpad

__all__ = [
    "GROUP_ID_FORMS",
    "ID_DTYPES",
    "LAYOUTS",
    "MASK_DTYPES",
    "PADDING_VALUES",
    "PADDINGS",
    "Case",
    "case_from",
    "cases",
    "concat",
    "group_sequences",
    "interleave",
    "Presentation",
    "layouts_for",
    "left_pad",
    "layouts_of",
    "presentations",
    "relayout",
    "rewards_for",
    "take",
    "widen",
]

VOCAB_MAX = 2**31 - 1
PADDING_VALUES = (0, 1, -1, VOCAB_MAX)  # 0 and 1 collide with tiny vocabularies' real ids
REWARD_KINDS = ("binary", "continuous", "equal", "offset", "few")
LAYOUTS = ("contiguous", "column_major", "column_of_wider", "slice_of_bigger", "expanded")
PADDINGS = ("right", "left", "mixed")
MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.float32)
ID_DTYPES = (torch.int64, torch.int32)
GROUP_ID_FORMS = ("as_drawn", "list_int", "list_str", "numpy_str", "int32", "int64")


@dataclass(frozen=True)
class Case:
    """One batch: padded tensors plus the ragged view the reference takes.

    `layout` says how the tensors were handed over ("contiguous" for a fresh batch; see
    `presentations`); the values never depend on it.
    """

    responses: torch.Tensor  # (B, L) int
    response_mask: torch.Tensor  # (B, L) bool (or 0/1 of another dtype once presented)
    rewards: torch.Tensor  # (B,) float32 or float64
    group_ids: Sequence[Hashable] | torch.Tensor | np.ndarray  # (B,)
    loss_mask: torch.Tensor | None  # (B, L) bool or 0/1
    layout: str = "contiguous"

    @property
    def lengths(self) -> list[int]:
        """n_i, the number of real tokens of each response."""
        return self.response_mask.bool().sum(1).tolist()

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(s_i, n_i): first column and length of each response (s_i > 0 only for left padding)."""
        return response_spans(self.response_mask.bool().tolist())

    @property
    def sequences(self) -> list[list[int]]:
        """y_i = responses[i, s_i : s_i + n_i] as lists (padding dropped)."""
        return unpad(self.responses.tolist(), self.spans)

    @property
    def reward_list(self) -> list[float]:
        return self.rewards.tolist()

    @property
    def group_list(self) -> list[Hashable]:
        """The group ids as a list of Python values (tensor and numpy ids unpacked)."""
        if isinstance(self.group_ids, (torch.Tensor, np.ndarray)):
            return self.group_ids.tolist()
        return list(self.group_ids)

    @property
    def loss_lists(self) -> list[list[bool]] | None:
        """The loss mask cut to each response's tokens, or None."""
        if self.loss_mask is None:
            return None
        return unpad(self.loss_mask.bool().tolist(), self.spans)

    def kwargs(self) -> dict:
        return {"loss_mask": self.loss_mask}

    def args(self) -> tuple:
        return (self.responses, self.response_mask, self.rewards, self.group_ids)

    def with_rewards(self, rewards: torch.Tensor) -> Case:
        return replace(self, rewards=rewards)


@st.composite
def group_sequences(draw, size: int, max_len: int, vocab: int) -> list[list[int]]:
    """`size` sequences of 0..max_len ids in [0, vocab) that share prefixes: each new one copies
    a prefix of an earlier one (of any length, so they branch at any depth) and continues freely."""
    tokens = st.integers(0, vocab - 1)
    seqs: list[list[int]] = []
    for _ in range(size):
        n = draw(st.integers(0, max_len))
        if seqs and draw(st.booleans()):
            src = draw(st.sampled_from(seqs))
            keep = draw(st.integers(0, min(n, len(src))))
            seq = src[:keep] + draw(st.lists(tokens, min_size=n - keep, max_size=n - keep))
        else:
            seq = draw(st.lists(tokens, min_size=n, max_size=n))
        seqs.append(seq)
    return seqs


@st.composite
def rewards_for(draw, size: int) -> list[float]:
    """`size` rewards of one kind: binary 0/1, continuous in [-5, 5], all equal (a degenerate
    group), offset (|R| >> spread: 1e3..1e5 plus multiples of 0.25) or a few repeated values.

    Every value is a float32, so float32 and float64 batches hold the same numbers.
    """
    kind = draw(st.sampled_from(REWARD_KINDS))
    if kind == "binary":
        return [float(draw(st.integers(0, 1))) for _ in range(size)]
    if kind == "equal":
        value = draw(st.floats(-10, 10, allow_nan=False, width=32))
        return [value] * size
    if kind == "offset":  # |R| >> spread: values must keep their precision
        base = draw(st.sampled_from([1e3, -1e4, 1e5]))
        return [base + draw(st.integers(0, 3)) * 0.25 for _ in range(size)]
    if kind == "few":
        return [draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])) for _ in range(size)]
    return [draw(st.floats(-5, 5, allow_nan=False, width=32)) for _ in range(size)]


@st.composite
def cases(
    draw,
    *,
    max_batch: int = 10,
    max_len: int = 8,
    min_len: int = 0,
    max_group: int = 6,
    max_vocab: int | None = None,
    with_loss_mask: bool | None = None,
    float64: bool | None = None,
) -> Case:
    """A random batch of interleaved groups, contiguous tensors.

    Args:
        max_batch: at most this many responses B (0 included).
        max_len: L is drawn in [min_len, max_len]; each response has 0..L tokens.
        min_len: the least L (e.g. 30 with max_len=140, so rows cross columns 32, 64 and 128,
            the block edges of block-based kernels).
        max_group: group sizes G in [1, max_group] (64 reaches the largest groups engines use).
        max_vocab: ids in [0, vocab) with vocab drawn in [1, max_vocab]; None draws 1..3 mostly
            (dense trees) and sometimes 2^31 - 1 (responses that never share a token).
        with_loss_mask: draw a loss mask (True), never (False) or either (None).
        float64: float64 rewards (True), float32 (False) or either (None).

    The padding value is one of 0, 1, -1, 2^31 - 1 and, half the time, the padding is overwritten
    with 0..2, values real tokens take. Group ids are distinct ints in [-5, 50] or short strings.
    Draw several sizes with `st.one_of(cases(max_group=6), cases(max_batch=80, max_len=5, max_group=64))`.
    """
    n_groups = draw(st.integers(0, max(1, max_batch // 2)))
    sizes = [draw(st.integers(1, max_group)) for _ in range(n_groups)]
    while sum(sizes) > max_batch:
        sizes.pop()
    big_vocab = max_vocab is None and draw(st.booleans()) and draw(st.booleans())
    vocab = VOCAB_MAX if big_vocab else draw(st.integers(1, max_vocab or 3))
    L = draw(st.integers(min(min_len, max_len), max_len))
    group_names = draw(
        st.lists(st.one_of(st.integers(-5, 50), st.text(max_size=3)), min_size=n_groups, max_size=n_groups, unique=True)
    )
    rows: list[tuple[Hashable, list[int], float]] = []
    for name, size in zip(group_names, sizes):
        seqs = draw(group_sequences(size, L, vocab))
        rews = draw(rewards_for(size))
        rows += [(name, s, r) for s, r in zip(seqs, rews)]
    order = draw(st.permutations(range(len(rows))))  # interleave groups anywhere
    rows = [rows[i] for i in order]
    B = len(rows)
    pad = draw(st.sampled_from(PADDING_VALUES))
    responses = torch.full((B, L), pad, dtype=torch.int64)
    mask = torch.zeros((B, L), dtype=torch.bool)
    for i, (_, seq, _) in enumerate(rows):
        responses[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        mask[i, : len(seq)] = True
    if draw(st.booleans()):  # padding values that collide with real tokens
        noise = draw(st.integers(0, 2))
        responses = torch.where(mask, responses, torch.full_like(responses, noise))
    use64 = draw(st.booleans()) if float64 is None else float64
    rewards = torch.tensor([r for _, _, r in rows], dtype=torch.float64 if use64 else torch.float32)
    use_loss = draw(st.booleans()) if with_loss_mask is None else with_loss_mask
    loss = None
    if use_loss:
        bits = draw(st.lists(st.booleans(), min_size=B * L, max_size=B * L))
        loss = torch.tensor(bits, dtype=torch.bool).reshape(B, L)
    return Case(responses, mask, rewards, [name for name, _, _ in rows], loss)


def case_from(seqs: list[list[int]], rews: list[float], ids: list, L: int | None = None) -> Case:
    """A padded Case from ragged lists (padding value 0, float64 rewards, no loss mask).

    >>> case_from([[7, 1], [7]], [1.0, 0.0], ["q", "q"]).responses.tolist()
    [[7, 1], [7, 0]]
    """
    L = max((len(s) for s in seqs), default=0) if L is None else L
    responses = torch.zeros((len(seqs), L), dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        responses[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        mask[i, : len(s)] = True
    return Case(responses, mask, torch.tensor(rews, dtype=torch.float64), list(ids), None)


def widen(case: Case, L: int, tag: Hashable) -> Case:
    """The same batch with L >= its width columns (padding 0) and group ids tagged (tag, id)."""
    B, L0 = case.responses.shape
    grow = lambda t, fill: torch.cat([t, torch.full((B, L - L0), fill, dtype=t.dtype)], 1)  # noqa: E731
    return Case(
        grow(case.responses, 0),
        grow(case.response_mask, False),
        case.rewards,
        [(tag, g) for g in case.group_list],
        None if case.loss_mask is None else grow(case.loss_mask, False),
    )


def concat(parts: list[Case]) -> Case:
    """One batch of several (same width and reward dtype); a part without a loss mask keeps all."""
    loss = None
    if any(p.loss_mask is not None for p in parts):
        loss = torch.cat([p.loss_mask if p.loss_mask is not None else p.response_mask for p in parts])
    return Case(
        torch.cat([p.responses for p in parts]),
        torch.cat([p.response_mask for p in parts]),
        torch.cat([p.rewards for p in parts]),
        sum((p.group_list for p in parts), []),
        loss,
    )


def take(case: Case, rows: torch.Tensor) -> Case:
    """The batch's rows in the order `rows` (a 1-D int64 tensor) gives."""
    ids = case.group_list
    return Case(
        case.responses[rows],
        case.response_mask[rows],
        case.rewards[rows],
        [ids[i] for i in rows.tolist()],
        None if case.loss_mask is None else case.loss_mask[rows],
    )


def left_pad(case: Case, rows: Sequence[bool]) -> Case:
    """The same batch with the rows marked True left padded: each such right-padded row rotated
    right by L - n_i, its padding values (and its loss mask's padding) carried round to the front.

    >>> left_pad(case_from([[7, 1], [7]], [1.0, 0.0], ["q", "q"]), [False, True]).responses.tolist()
    [[7, 1], [0, 7]]
    """
    width = case.responses.shape[1]
    shifts = [width - n if left else 0 for left, n in zip(rows, case.lengths)]

    def roll(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.roll(row, k) for row, k in zip(t, shifts)]) if shifts else t.clone()

    loss = None if case.loss_mask is None else roll(case.loss_mask)
    return replace(case, responses=roll(case.responses), response_mask=roll(case.response_mask), loss_mask=loss)


def interleave(group_ids: Sequence[Hashable], shuffled: Sequence[int]) -> torch.Tensor:
    """A row order that moves groups anywhere but keeps each group's members in their order.

    `shuffled` is any permutation of range(B); its slot pattern is filled group by group in order.
    Spec 5b promises bitwise invariance for that; reordering a group's own members may change
    the last bit of a fast path's sums, which Proposition 5(a) allows there.
    """
    queues: dict = {}
    for row, gid in enumerate(group_ids):
        queues.setdefault(gid, []).append(row)
    taken = {gid: 0 for gid in queues}
    order = []
    for row in shuffled:
        gid = group_ids[row]
        order.append(queues[gid][taken[gid]])
        taken[gid] += 1
    return torch.tensor(order, dtype=torch.long)


# ------------------------------------------------------------------ layouts and dtypes


def _poison(dtype: torch.dtype) -> float | int | bool:
    """What fills the memory around a view: a value that shows up if a kernel reads it."""
    if dtype == torch.bool:
        return True
    if dtype.is_floating_point:
        return float("nan")
    return torch.iinfo(dtype).max


def _expandable(tensor: torch.Tensor) -> bool:
    if tensor.numel() == 0:
        return False
    if tensor.dim() == 1:
        return bool((tensor == tensor[0]).all())
    return bool((tensor == tensor[:1]).all() or (tensor == tensor[:, :1]).all())


def layouts_for(tensor: torch.Tensor) -> list[str]:
    """The layouts `relayout` can give this (1-D or 2-D) tensor: all but "column_major" for 1-D,
    and "expanded" only when its values repeat along a dimension."""
    names = [h for h in LAYOUTS if h != "column_major" or tensor.dim() == 2]
    return [h for h in names if h != "expanded" or _expandable(tensor)]


def relayout(tensor: torch.Tensor, how: str) -> torch.Tensor:
    """A tensor with the same values (and dtype, device) as `tensor` in another memory layout.

    Args:
        tensor: (B,) or (B, L).
        how: one of LAYOUTS:
            "contiguous": a fresh row-major copy.
            "column_major": (B, L) stored column by column, `t.t().contiguous().t()`.
            "column_of_wider": (B,) -> column 1 of a (B, 3) tensor (stride 3, as
                `rewards = scores[:, 1]`); (B, L) -> every other column of a (B, 2L) tensor.
            "slice_of_bigger": rows and columns cut from a larger tensor (storage offset > 0,
                row stride > L).
            "expanded": stride 0, `t[:1].expand(B)` (rows, or columns, all equal); only where the
                values allow it.

    Memory around a view holds NaN (float), True (bool) or the dtype's max (int), so a kernel
    that ignores strides or the storage offset reads values that cannot pass for the real ones.

    >>> r = torch.tensor([1.0, 2.0])
    >>> v = relayout(r, "column_of_wider")
    >>> torch.equal(v, r), v.stride()
    (True, (3,))
    """
    if tensor.dim() not in (1, 2):
        raise ValueError(f"relayout: tensor must be 1-D or 2-D, got shape {tuple(tensor.shape)}")
    if how not in LAYOUTS:
        raise ValueError(f"relayout: how must be one of {LAYOUTS}, got {how!r}")
    if how not in layouts_for(tensor):
        raise ValueError(
            f"relayout: {how!r} does not apply to a tensor of shape {tuple(tensor.shape)}"
            + (" whose values do not repeat" if how == "expanded" else "")
        )

    def full(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.full(shape, _poison(tensor.dtype), dtype=tensor.dtype, device=tensor.device)

    if how == "contiguous":
        return tensor.clone(memory_format=torch.contiguous_format)
    if how == "column_major":
        return tensor.t().contiguous().t()
    if how == "column_of_wider":
        if tensor.dim() == 1:
            wide = full((tensor.shape[0], 3))
            wide[:, 1] = tensor
            return wide[:, 1]
        wide = full((tensor.shape[0], 2 * tensor.shape[1]))
        wide[:, ::2] = tensor
        return wide[:, ::2]
    if how == "slice_of_bigger":
        if tensor.dim() == 1:
            big = full((tensor.shape[0] + 3,))
            big[2:-1] = tensor
            return big[2:-1]
        big = full((tensor.shape[0] + 3, tensor.shape[1] + 2))
        big[2:-1, 1:-1] = tensor
        return big[2:-1, 1:-1]
    if tensor.dim() == 1:
        return tensor[:1].expand(tensor.shape[0])
    if bool((tensor == tensor[:1]).all()):
        return tensor[:1].expand(*tensor.shape)
    return tensor[:, :1].expand(*tensor.shape)


def _group_ids_as(ids: list[Hashable], form: str) -> Sequence[Hashable] | torch.Tensor | np.ndarray:
    """The same partition of rows into groups, spelled as `form` (one of GROUP_ID_FORMS)."""
    if form == "as_drawn":
        return list(ids)
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(g, len(dense)) for g in ids]
    if form == "list_int":
        return [7 * k - 3 for k in index]  # not 0..n-1: an implementation must not assume dense ids
    if form == "list_str":
        return [f"uid-{k:04d}" for k in index]
    if form == "numpy_str":  # how verl hands over its uids
        return np.array([f"{k:08x}-uid" for k in index], dtype=object)
    return torch.tensor([7 * k - 3 for k in index], dtype=torch.int32 if form == "int32" else torch.int64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Presentation:
    """How a batch is handed over: a dtype and a layout (one of LAYOUTS) per tensor, a group id form.

    `apply(case)` returns the same values in that form; it raises ValueError where a layout does
    not fit the values ("expanded" needs repeated values).
    """

    responses: tuple[torch.dtype, str] = (torch.int64, "contiguous")
    response_mask: tuple[torch.dtype, str] = (torch.bool, "contiguous")
    rewards: str = "contiguous"
    group_ids: str = "as_drawn"
    loss_mask: tuple[torch.dtype, str] = (torch.bool, "contiguous")
    left_padded: tuple[int, ...] = ()  # rows handed over left padded (`left_pad`); the rest right padded

    def apply(self, case: Case) -> Case:
        if self.left_padded:
            B = case.responses.shape[0]
            case = left_pad(case, [i in self.left_padded for i in range(B)])
        cast = lambda t, spec: relayout(t.to(spec[0]), spec[1])  # noqa: E731
        loss = None if case.loss_mask is None else cast(case.loss_mask, self.loss_mask)
        return Case(
            cast(case.responses, self.responses),
            cast(case.response_mask, self.response_mask),
            relayout(case.rewards, self.rewards),
            _group_ids_as(case.group_list, self.group_ids),
            loss,
            layout=self.describe(with_loss=loss is not None),
        )

    def describe(self, *, with_loss: bool = True) -> str:
        """E.g. "responses int32 column_major, response_mask uint8 expanded, rewards column_of_wider,
        group_ids list_str"."""
        spec = lambda name, t: f"{name} {_dtype_name(t[0])} {t[1]}"  # noqa: E731
        parts = [
            spec("responses", self.responses),
            spec("response_mask", self.response_mask),
            f"rewards {self.rewards}",
            f"group_ids {self.group_ids}",
        ]
        parts += [spec("loss_mask", self.loss_mask)] if with_loss else []
        if self.left_padded:
            parts.append(f"rows {', '.join(map(str, self.left_padded))} left padded")
        return ", ".join(parts)


@st.composite
def layouts_of(
    draw,
    case: Case,
    *,
    mask_dtypes: Sequence[torch.dtype] = MASK_DTYPES,
    id_dtypes: Sequence[torch.dtype] = ID_DTYPES,
    group_id_forms: Sequence[str] = GROUP_ID_FORMS,
    paddings: Sequence[str] = ("right",),
) -> Presentation:
    """A Presentation that fits `case`: each tensor's layout drawn from those `relayout` can give
    it, masks in one of `mask_dtypes`, ids in one of `id_dtypes` (every id drawn by `cases` fits
    int32), group ids in one of `group_id_forms` (same groups, other names). Rewards keep their
    dtype. `paddings` (of PADDINGS): "right" as drawn, "left" every row left padded, "mixed" some
    rows left padded; the values then sit in other columns, so compare results row by row after
    `Case.spans`. Shrinks towards contiguous int64 / bool / the ids as drawn / right padding."""
    padding = draw(st.sampled_from(list(paddings)))
    B = case.responses.shape[0]
    left: tuple[int, ...] = ()
    if padding == "left":
        left = tuple(range(B))
    elif padding == "mixed":
        left = tuple(i for i in range(B) if draw(st.booleans()))
    if left:
        case = left_pad(case, [i in left for i in range(B)])

    def spec(t: torch.Tensor, dtypes: Sequence[torch.dtype]) -> st.SearchStrategy[tuple[torch.dtype, str]]:
        return st.tuples(st.sampled_from(list(dtypes)), st.sampled_from(layouts_for(t)))

    responses = draw(spec(case.responses, id_dtypes))
    mask = draw(spec(case.response_mask, mask_dtypes))
    rewards = draw(st.sampled_from(layouts_for(case.rewards)))
    form = draw(st.sampled_from(list(group_id_forms)))
    loss = draw(spec(case.loss_mask, mask_dtypes)) if case.loss_mask is not None else (torch.bool, "contiguous")
    return Presentation(responses, mask, rewards, form, loss, left)


def presentations(
    case: Case,
    *,
    mask_dtypes: Sequence[torch.dtype] = MASK_DTYPES,
    id_dtypes: Sequence[torch.dtype] = ID_DTYPES,
    group_id_forms: Sequence[str] = GROUP_ID_FORMS,
) -> st.SearchStrategy[Case]:
    """`case` with the same values handed over another way (see `layouts_of`); the returned
    Case's `layout` field describes the draw."""
    drawn = layouts_of(case, mask_dtypes=mask_dtypes, id_dtypes=id_dtypes, group_id_forms=group_id_forms)
    return drawn.map(lambda p: p.apply(case))
