"""Fixtures for the engine tests: the embedded tiny model, built once per session.

Everything runs offline on the CPU; HF_HUB_OFFLINE makes any accidental download fail loudly.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """The embedded model, built once per session (building is deterministic and cheap)."""
    from webui_api.engine.models import build_embedded_model

    return build_embedded_model("cpu")
