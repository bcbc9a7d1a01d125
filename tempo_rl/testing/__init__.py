"""Check any TEMPO implementation against tempo-rl's exact reference.

    import tempo_rl.testing as tt
    report = tt.check_implementation(my_tempo)            # raises AssertionError on a counterexample
    print(report)                                         # properties checked, batches run

`my_tempo(responses, response_mask, rewards, group_ids, **options) -> (B, L)` is checked on random
batches drawn by the hypothesis strategies of `tempo_rl.testing.strategies` (ragged and empty
responses, groups of 1 to 64 interleaved anywhere, vocabularies of 1 to 2^31 - 1, padding equal to
real ids, several reward kinds, loss masks, memory layouts and dtypes). Adapters take other
signatures: `plain`, `verl_estimator`, `per_row`. `tempo-rl check module:function` runs the same
check from the shell. See docs/testing.md.

Needs hypothesis: `pip install -e '.[testing]'` in a clone of tempo-rl.
"""

from __future__ import annotations

from ..extras import requires

with requires("testing", "tempo_rl.testing"):
    import hypothesis  # noqa: F401

from .adapters import OPTIONS, Implementation, per_row, plain, verl_estimator
from .check import PROPERTIES, CheckReport, Counterexample, Trial, allowed_error, check_implementation
from .strategies import (
    GROUP_ID_FORMS,
    LAYOUTS,
    Case,
    Presentation,
    case_from,
    cases,
    concat,
    interleave,
    layouts_for,
    layouts_of,
    presentations,
    relayout,
    rewards_for,
    take,
    widen,
)

__all__ = [
    "GROUP_ID_FORMS",
    "LAYOUTS",
    "OPTIONS",
    "PROPERTIES",
    "Case",
    "Presentation",
    "CheckReport",
    "Counterexample",
    "Implementation",
    "Trial",
    "allowed_error",
    "case_from",
    "cases",
    "check_implementation",
    "concat",
    "interleave",
    "layouts_for",
    "layouts_of",
    "per_row",
    "plain",
    "presentations",
    "relayout",
    "rewards_for",
    "take",
    "verl_estimator",
    "widen",
]
