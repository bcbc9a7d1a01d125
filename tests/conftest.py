"""Hypothesis profiles (`ci`, the default, has no deadline, since CPU time here is shared) and the
tiny saved policy the trainer tests load.

Without CUDA, Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on
before triton is first imported: here, so that `make test` runs the Triton differential tests too.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Every test that uses the `browser` fixture (headless Chromium) is marked `browser`, as is any test
    that starts Chromium itself (by hand): `make test` deselects them (`-m 'not browser'`, counted in
    pytest's summary) and `make test-browser` runs them."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A tiny trainer policy and its tokenizer saved with save_pretrained, one copy per test module
    (some tests damage their copy on purpose). Returns the directory as a string."""
    from tempo_rl.trainer.tiny import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_tokenizer()
    build_model(len(tok), hidden=32, layers=2, heads=2, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
