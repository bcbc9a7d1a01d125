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


def pytest_deselected(items):
    """Count the deselected browser tests (under xdist each worker counts; the controller reports)."""
    if items:
        config = items[0].config
        config._browser_deselected = getattr(config, "_browser_deselected", 0) + sum(
            1 for item in items if item.get_closest_marker("browser")
        )


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)  # set on an xdist worker
    if workeroutput is not None:
        workeroutput["browser_deselected"] = getattr(session.config, "_browser_deselected", 0)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    got = getattr(node, "workeroutput", {}).get("browser_deselected", 0)
    node.config._browser_deselected = max(getattr(node.config, "_browser_deselected", 0), got)


def pytest_terminal_summary(terminalreporter, config):
    """One line saying how many browser tests were left out and how to run them (xdist's summary does
    not count deselected tests)."""
    n = getattr(config, "_browser_deselected", 0)
    if n:
        terminalreporter.write_line(
            f"{n} browser tests deselected: `make test-browser` installs chromium and runs them"
        )


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
