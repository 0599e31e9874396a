"""Fixtures: a data dir holding tiny random-weight interrogate models in A1111's folders."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from .tiny_models import write_blip, write_clip, write_deepdanbooru

TAGS = ["cat", "dog_(animal)", "rating:safe", "blue_sky", "long_hair"]


@pytest.fixture(scope="session")
def interrogate_models(tmp_path_factory) -> Path:
    """models/BLIP, models/torch_deepdanbooru and a --clip-models-path folder, written once."""
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("interrogate-models")
    write_blip(root / "models" / "BLIP")
    write_clip(root / "clip", torchscript=True)
    write_deepdanbooru(root / "models" / "torch_deepdanbooru", TAGS)
    return root


@pytest.fixture()
def client_with_clip_dir(engine, tmp_path):
    """Factory: a TestClient whose models dir and --clip-models-path are the given folders."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from tests.factories import settings_for_tests
    from webui_api.app import create_app
    from webui_api.cli import default_cmd_flags

    clients = []

    def factory(models_dir: Path, clip_dir: Path) -> TestClient:
        settings = settings_for_tests(tmp_path, models_dir=models_dir)
        flags = {**default_cmd_flags(tmp_path), "clip_models_path": str(clip_dir)}
        client = TestClient(create_app(replace(settings, cmd_flags=MappingProxyType(flags)), engine=engine))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def interrogate_client(client_with_clip_dir, interrogate_models, tmp_path):
    """A client on the tiny models, with two small category files in <data-dir>/interrogate."""
    categories = tmp_path / "interrogate"
    categories.mkdir()
    (categories / "mediums.txt").write_text("a painting\na photo\na sketch\n", encoding="utf8")
    (categories / "colors.top2.txt").write_text("red\ngreen\nblue\n", encoding="utf8")
    return client_with_clip_dir(interrogate_models / "models", interrogate_models / "clip")
