"""Hypothesis profiles: `ci` (default) has no deadline, since CPU time here is shared.

Without CUDA, Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on
before triton is first imported: here, so that `make test` runs the Triton differential tests too.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
