"""Where a response sits in its padded row: the one definition every layer follows.

A row of the response mask is either right padded (a prefix of ones: the response starts at
column 0) or left padded (a suffix of ones: it ends at column L - 1). An all-zero or all-ones row
is both. The response is the row's tokens under the ones, y_i = responses[i, s_i : s_i + n_i],
and its advantages are placed back at the same columns, 0 everywhere else. So a left-padded batch
gives exactly the right-padded result with each row shifted by s_i (proofs_notes/tempo.md,
Proposition 5c).

Any other row is refused: one with a hole (a 0 between ones), whose fix is to pass the contiguous
span as `response_mask` and the tokens to train as `loss_mask`, or one padded on both sides.
"""

from __future__ import annotations

from typing import Sequence

from .advantage import tempo_advantages


def hole_message(row: int, position: int) -> str:
    """The error for a 0 at `position` between ones of mask row `row` (shared by every layer)."""
    return (
        f"response_mask row {row} has a hole at position {position} (a 0 between ones): each row must be "
        f"one contiguous span of ones, a prefix (right padding) or a suffix (left padding); to leave "
        f"tokens inside a response out of the loss (e.g. tool output), pass the contiguous span as "
        f"response_mask and the tokens to train as loss_mask"
    )


def both_sides_message(row: int, start: int, stop: int) -> str:
    """The error for a row whose ones sit strictly inside it (columns start..stop - 1)."""
    return (
        f"response_mask row {row} is padded on both sides (ones at positions {start}..{stop - 1}): each "
        f"row must be a prefix of ones (right padding) or a suffix of ones (left padding)"
    )


def response_span(mask_row: Sequence[bool | int], row: int = 0) -> tuple[int, int]:
    """(s_i, n_i): the first column and the length of the response in one mask row.

    >>> response_span([1, 1, 0]), response_span([0, 1, 1]), response_span([0, 0]), response_span([])
    ((0, 2), (1, 2), (0, 0), (0, 0))
    """
    ones = [t for t, keep in enumerate(mask_row) if keep]
    if not ones:
        return 0, 0
    start, stop = ones[0], ones[-1] + 1
    if len(ones) != stop - start:
        hole = next(t for t in range(start, stop) if not mask_row[t])
        raise ValueError(hole_message(row, hole))
    if start > 0 and stop < len(mask_row):
        raise ValueError(both_sides_message(row, start, stop))
    return start, stop - start


def response_spans(mask: Sequence[Sequence[bool | int]]) -> list[tuple[int, int]]:
    """`response_span` of every row of a (B, L) mask."""
    return [response_span(row, i) for i, row in enumerate(mask)]


def unpad(rows: Sequence[Sequence], spans: Sequence[tuple[int, int]]) -> list[list]:
    """Each row cut to its response's columns (padding is never read)."""
    return [list(row[s : s + n]) for row, (s, n) in zip(rows, spans)]


def pad(ragged: Sequence[Sequence[float]], spans: Sequence[tuple[int, int]], width: int) -> list[list[float]]:
    """Each ragged row put back at its response's columns of a row of `width`, 0.0 elsewhere.

    >>> pad([[0.5, 1.0], [2.0]], [(0, 2), (2, 1)], 3)
    [[0.5, 1.0, 0.0], [0.0, 0.0, 2.0]]
    """
    out = []
    for values, (s, n) in zip(ragged, spans):
        row = [0.0] * width
        row[s : s + n] = values
        out.append(row)
    return out


def padded_tempo_advantages(
    responses: Sequence[Sequence[int]],
    response_mask: Sequence[Sequence[bool | int]],
    rewards: Sequence[float],
    group_ids: Sequence,
    *,
    loss_mask: Sequence[Sequence[bool | int]] | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    td_coef: float = 1.0,
) -> list[list[float]]:
    """TEMPO advantages of padded (B, L) rows, left or right padded row by row, as (B, L) lists.

    The response of row i is `responses[i][s_i : s_i + n_i]` (`response_span`); its advantages
    (`reference.tempo_advantages`) go back to those columns, 0.0 elsewhere.

    >>> y = [[7, 1, 0], [0, 7, 2]]  # Example 1 of proofs_notes/tempo.md, the second row left padded
    >>> padded_tempo_advantages(y, [[1, 1, 0], [0, 1, 1]], [1.0, 0.0], [0, 0], norm_by_std=False)
    [[0.5, 1.0, 0.0], [0.0, -0.5, -1.0]]
    """
    spans = response_spans(response_mask)
    loss = None if loss_mask is None else [[bool(v) for v in row] for row in unpad(loss_mask, spans)]
    ragged = tempo_advantages(
        unpad(responses, spans),
        rewards,
        group_ids,
        loss_masks=loss,
        norm_by_std=norm_by_std,
        eps=eps,
        td_coef=td_coef,
    )
    return pad(ragged, spans, len(response_mask[0]) if len(response_mask) else 0)
