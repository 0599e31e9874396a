"""Outputs by URL: stored under the data dir, signed, expiring, behind the API's auth."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from webui_api.errors import NotFound
from webui_api.output_urls import OutputStore, UrlExpired

SMALL = dict(steps=2, width=64, height=64, seed=3)


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def png_base64(size=(8, 8)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_request_field_returns_fetchable_urls(client, tmp_path):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(**SMALL, batch_size=2, output_urls=True)).json()
    assert len(body["images"]) == 2
    for url in body["images"]:
        assert url.startswith("http://testserver/sdapi/v1/outputs/") and "expires=" in url and "sig=" in url
        fetched = client.get(local_path(url))
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(fetched.content))
        assert image.size == (64, 64) and "parameters" in image.info  # the infotext travels with the file
    assert len(list((tmp_path / "outputs" / "api-urls").iterdir())) == 2


def test_base64_stays_the_default(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(**SMALL)).json()
    Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).load()


def test_server_flag_makes_urls_the_default_and_a_request_can_opt_out(make_client):
    client = make_client(output_urls=True)
    by_url = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(**SMALL)).json()
    assert by_url["images"][0].startswith("http://testserver/sdapi/v1/outputs/")
    inline = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(**SMALL, output_urls=False)).json()
    Image.open(io.BytesIO(base64.b64decode(inline["images"][0]))).load()


def test_urls_need_the_api_auth_and_a_valid_signature(make_client):
    client = make_client(api_auth=(("user", "secret"),))
    auth = ("user", "secret")
    payload = webuiapi_txt2img(**SMALL, output_urls=True)
    url = client.post("/sdapi/v1/txt2img", json=payload, auth=auth).json()["images"][0]
    assert client.get(local_path(url)).status_code == 401
    assert client.get(local_path(url), auth=auth).status_code == 200
    tampered = local_path(url).replace("expires=", "expires=9")
    assert client.get(tampered, auth=auth).status_code == 404
    assert client.get("/sdapi/v1/outputs/nothing.png?expires=1&sig=x", auth=auth).status_code == 404
    assert client.get("/sdapi/v1/outputs/nothing.png?expires=1&sig=\u00e9", auth=auth).status_code == 404  # not a 500


def test_urls_expire_and_expired_files_are_purged(tmp_path: Path):
    now = [1_000_000.0]
    store = OutputStore(tmp_path / "out", ttl_seconds=60, clock=lambda: now[0])
    stored = store.store(png_base64())
    path, media_type = store.open(stored.name, stored.expires, store.sign(stored))
    assert media_type == "image/png" and path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(NotFound):
        store.open(stored.name, stored.expires + 1, store.sign(stored))  # a longer life is not signed
    now[0] += 61
    with pytest.raises(UrlExpired):
        store.open(stored.name, stored.expires, store.sign(stored))
    import os
    import time

    os.utime(path, (time.time() - 120, time.time() - 120))  # written longer than a lifetime ago
    store_now = OutputStore(tmp_path / "out", ttl_seconds=60)
    assert store_now.purge_expired() == 1 and not path.exists()


def test_signatures_from_another_server_start_are_refused(tmp_path: Path):
    first = OutputStore(tmp_path, ttl_seconds=60)
    stored = first.store(png_base64())
    with pytest.raises(NotFound):
        OutputStore(tmp_path, ttl_seconds=60).open(stored.name, stored.expires, first.sign(stored))
