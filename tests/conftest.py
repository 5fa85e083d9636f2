"""Fixtures shared by every test; data helpers for the models and guides live in ``expfam_helpers``."""

from __future__ import annotations

import pyro
import pytest


@pytest.fixture(autouse=True)
def clear_param_store():
    """Give every test an empty Pyro parameter store and validation on."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()

