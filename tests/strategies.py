"""The hypothesis strategies of the project's tests: one source, `tempo_rl.testing.strategies`."""

from tempo_rl.testing.strategies import (  # noqa: F401
    Case,
    case_from,
    cases,
    concat,
    interleave,
    presentations,
    relayout,
    rewards_for,
    take,
    widen,
)
