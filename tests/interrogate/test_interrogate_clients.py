"""webuiapi's interrogate() against a live loopback server on the tiny interrogate models."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from PIL import Image

from ..api.test_webuiapi_client import free_port

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture()
def live_interrogate_server(engine, tmp_path, interrogate_models):
    from tests.factories import served_on_loopback, settings_for_tests
    from webui_api.app import create_app
    from webui_api.cli import default_cmd_flags

    port = free_port()
    flags = {**default_cmd_flags(tmp_path), "clip_models_path": str(interrogate_models / "clip")}
    settings = replace(settings_for_tests(tmp_path, port=port, models_dir=interrogate_models / "models"),
                       cmd_flags=MappingProxyType(flags))
    (tmp_path / "interrogate").mkdir()
    (tmp_path / "interrogate" / "mediums.txt").write_text("a painting\na photo\n", encoding="utf8")
    with served_on_loopback(create_app(settings, engine=engine), port):
        yield port


def test_webuiapi_interrogate_both_models(live_interrogate_server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_interrogate_server)
    api.set_options({"interrogate_clip_min_length": 5, "interrogate_clip_max_length": 6,
                     "interrogate_deepbooru_score_threshold": 0.0})
    image = Image.new("RGB", (80, 48), (30, 160, 90))
    tags = api.interrogate(image, model="deepdanbooru")
    assert tags.info == "blue sky, cat, dog \\(animal\\), long hair"
    caption = api.interrogate(image)  # model defaults to "clip"
    assert caption.info.rsplit(", ", 1)[1] in {"a painting", "a photo"}
    assert caption.json == {"caption": caption.info}
