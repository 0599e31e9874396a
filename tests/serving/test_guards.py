"""Request guards: 4xx naming the limit before any work is queued."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from webui_api.pixel_budget import pixel_budget
from webui_api.postprocess.encode import image_size_base64
from webui_api.serving.guards import RequestLimits

TINY = webuiapi_txt2img(steps=1, width=64, height=64)


def png_claiming(width: int, height: int) -> str:
    """A valid PNG header declaring width x height, with almost no pixel data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def small_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture()
def guarded(spy_client):
    limits = RequestLimits(max_pixels=128 * 128, max_batch=4, max_steps=10, max_prompt_length=50,
                           max_body_bytes=200_000, max_input_pixels=256 * 256)
    return spy_client(guards=limits)


@pytest.mark.parametrize(("fields", "flag", "value"), [
    ({"width": 256, "height": 256}, "--max-pixels", "65536"),
    ({"enable_hr": True, "hr_scale": 4, "denoising_strength": 0.5}, "--max-pixels", "65536"),
    ({"batch_size": 3, "n_iter": 2}, "--max-batch", "6"),
    ({"steps": 11}, "--max-steps", "11"),
    ({"prompt": "x" * 51}, "--max-prompt-length", "51"),
])
def test_limits_are_422_naming_the_flag_and_value(guarded, fields, flag, value):
    client, spy = guarded
    response = client.post("/sdapi/v1/txt2img", json={**TINY, **fields})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "LimitExceeded" and flag in body["detail"] and value in body["detail"]
    assert spy.calls == []


def test_requests_at_the_limits_pass(guarded):
    client, spy = guarded
    payload = {**TINY, "width": 128, "height": 128, "batch_size": 2, "n_iter": 2, "steps": 2, "prompt": "x" * 50}
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200 and spy.calls == ["txt2img"]


def test_a_body_over_the_limit_is_413_before_parsing(guarded):
    client, spy = guarded
    response = client.post("/sdapi/v1/txt2img", json={**TINY, "negative_prompt": "y" * 300_000})
    assert response.status_code == 413
    assert "--max-body-mb" in response.json()["detail"] and spy.calls == []


def test_a_chunked_body_over_the_limit_is_413(guarded):
    client, _ = guarded

    def chunks():
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"z" * 10_000
        yield b'"}'

    response = client.post("/sdapi/v1/txt2img", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_a_small_chunked_body_still_works(guarded):
    import json

    client, _ = guarded
    data = json.dumps(TINY).encode()
    response = client.post("/sdapi/v1/txt2img", content=iter([data[:100], data[100:]]),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200


def test_a_decompression_bomb_is_refused_from_its_header(guarded):
    client, spy = guarded
    with pixel_budget(0):  # no budget: the header alone gives the size
        assert image_size_base64(png_claiming(5000, 4000)) == (5000, 4000)
    big = client.post("/sdapi/v1/img2img", json={**TINY, "init_images": [png_claiming(5000, 4000)]})
    assert big.status_code == 413
    assert "--max-input-pixels" in big.json()["detail"] and "5000x4000" in big.json()["detail"]
    bomb = client.post("/sdapi/v1/img2img", json={**TINY, "init_images": [png_claiming(30_000, 30_000)]})
    assert bomb.status_code == 413 and "decompression bomb" in bomb.json()["detail"]
    mask = client.post("/sdapi/v1/img2img", json={**TINY, "init_images": [small_png()], "mask": png_claiming(300, 300)})
    assert mask.status_code == 413 and "input image #2" in mask.json()["detail"]
    assert spy.calls == []


def test_async_tasks_are_guarded_when_queued(guarded):
    client, _ = guarded
    response = client.post("/agent-scheduler/v1/queue/txt2img", json={**TINY, "steps": 50})
    assert response.status_code == 422 and "--max-steps" in response.json()["detail"]
    assert client.get("/agent-scheduler/v1/queue").json()["total_pending_tasks"] == 0


def test_flags_reach_the_settings(tmp_path):
    from webui_api.cli import parse_args

    settings, _ = parse_args(["--data-dir", str(tmp_path), "--max-pixels", "1000", "--max-batch", "2",
                              "--max-steps", "9", "--max-prompt-length", "7", "--max-body-mb", "0.5",
                              "--max-input-pixels", "99"], {})
    assert settings.guards == RequestLimits(max_pixels=1000, max_batch=2, max_steps=9, max_prompt_length=7,
                                            max_body_bytes=512 * 1024, max_input_pixels=99)
    defaults, _ = parse_args(["--data-dir", str(tmp_path)], {})
    assert defaults.guards == RequestLimits() and defaults.result_cache_mb == 256
    assert defaults.audit_log == tmp_path / "logs" / "audit.jsonl"
