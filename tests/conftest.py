"""Shared fixtures: one tiny engine per test session, a fresh app and data dir per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.factories import settings_for_tests


@pytest.fixture(scope="session")
def engine():
    """The embedded tiny model, built once: every API test shares it (it is read-only)."""
    import torch

    torch.set_num_threads(1)
    from webui_api.engine.facade import Engine

    built = Engine(device="cpu", dtype="float32")
    built.load()
    return built


@pytest.fixture()
def make_client(engine, tmp_path):
    """Factory: a TestClient over a fresh app; keyword arguments become Settings overrides."""
    from fastapi.testclient import TestClient

    from webui_api.app import create_app

    clients = []

    def factory(own_engine: bool = False, **overrides):
        """own_engine: build the engine from these settings (it then scans tmp_path's model
        folders) instead of sharing the session's folder-less one."""
        settings = settings_for_tests(tmp_path, **overrides)
        client = TestClient(create_app(settings, engine=None if own_engine else engine))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client):
    return make_client()
