"""Integration tests run in each engine's own virtual environment (`make test-integrations`).

Outside it the engine is missing and the tests skip; with TEMPO_INTEGRATIONS naming the engine
(as the Makefile sets it) a missing engine is an error instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import importlib
import os

import pytest


def require(module: str):
    """Import `module`, skipping the test module when the engine is absent and not required."""
    required = os.environ.get("TEMPO_INTEGRATIONS", "").split(",")
    try:
        return importlib.import_module(module)
    except ImportError:
        if module in required:
            raise
        pytest.skip(f"{module} is not installed here; `make test-integrations` installs it", allow_module_level=True)
