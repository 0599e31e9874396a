"""Fixtures shared by the Ray cluster test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME for every local Ray cluster this test process starts, one after another.

    Ray generates its cluster auth token into HOME/.ray/auth_token at the first start and keeps
    it in the process; a later cluster under another HOME gets a new token and never comes up
    (its GCS start times out). With one HOME every cluster of the session shares the token."""
    return tmp_path_factory.mktemp("ray-home")
