"""The real `webuiapi` client package against a real server on loopback."""

from __future__ import annotations

import socket

import pytest

from tests.factories import served_on_loopback, settings_for_tests

webuiapi = pytest.importorskip("webuiapi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def live_server(engine, tmp_path):
    from webui_api.app import create_app

    port = free_port()
    settings = settings_for_tests(tmp_path, port=port, api_auth=(("user", "pass"),))
    with served_on_loopback(create_app(settings, engine=engine), port):
        yield port


def test_webuiapi_txt2img_and_listings(live_server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, sampler="Euler a", steps=3,
                            username="user", password="pass")
    result = api.txt2img(prompt="a cat", negative_prompt="blurry", seed=42, width=64, height=64, batch_size=2)
    assert len(result.images) == 2
    assert result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [42, 43]
    assert result.parameters["prompt"] == "a cat"
    assert [s["name"] for s in api.get_samplers()][:1]
    assert api.get_sd_models()[0]["title"] == api.get_options()["sd_model_checkpoint"]
    assert api.get_progress()["state"]["job_count"] == 0
