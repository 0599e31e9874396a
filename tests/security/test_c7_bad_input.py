"""Class 7: bad input is a 4xx in A1111's error shape or FastAPI's 422, never a 500, and the
async task routes refuse exactly what the synchronous routes refuse."""

from __future__ import annotations

import json

import pytest

from tests.security.helpers import TINY, assert_a1111_error

JSON = {"content-type": "application/json"}
RAW_BODIES = [  # bodies Python's json accepts but that must not reach the engine
    ("hr_scale 1e308", '"enable_hr": true, "denoising_strength": 0.5, "hr_scale": 1e308'),
    ("hr_scale Infinity", '"enable_hr": true, "denoising_strength": 0.5, "hr_scale": Infinity'),
    ("hr_scale NaN", '"enable_hr": true, "denoising_strength": 0.5, "hr_scale": NaN'),
    ("cfg_scale NaN", '"cfg_scale": NaN'),
    ("eta -Infinity", '"eta": -Infinity'),
    ("seed beyond 64 bits", '"seed": 123456789012345678901234567890'),
    ("subseed beyond 64 bits", '"subseed": -99999999999999999999999'),
    ("NaN inside override_settings", '"override_settings": {"CLIP_stop_at_last_layers": NaN}'),
    ("deep comments", '"comments": {"a": ' + "[" * 300 + "]" * 300 + "}"),
    ("deep override_settings", '"override_settings": {"x": ' + '{"y": ' * 200 + "1" + "}" * 200 + "}"),
    ("alwayson entry not an object", '"alwayson_scripts": {"controlnet": 5}'),
    ("alwayson args not a list", '"alwayson_scripts": {"controlnet": {"args": 5}}'),
    ("hr_resize_x huge", '"enable_hr": true, "denoising_strength": 0.5, "hr_resize_x": 10000000000'),
]


def raw_body(fields: str) -> bytes:
    return ('{"prompt": "x", "steps": 1, "width": 64, "height": 64, ' + fields + "}").encode()


@pytest.mark.parametrize(("name", "fields"), RAW_BODIES, ids=[case[0] for case in RAW_BODIES])
def test_numbers_and_shapes_refused_at_the_edge_by_sync_and_async_routes_alike(client, name, fields):
    sync = client.post("/sdapi/v1/txt2img", content=raw_body(fields), headers=JSON)
    task = client.post("/agent-scheduler/v1/queue/txt2img", content=raw_body(fields), headers=JSON)
    assert sync.status_code == 422, (name, sync.text[:300])
    assert task.status_code == 422, (name, task.text[:300])
    assert "detail" in sync.json()  # the body serialised (no NaN, no bytes)
    assert client.get("/agent-scheduler/v1/queue").json()["total_pending_tasks"] == 0


@pytest.mark.parametrize(
    "headers, content",
    [
        ({"content-type": "text/plain"}, json.dumps(TINY).encode()),
        ({}, json.dumps(TINY).encode()),
        ({"content-type": "application/x-www-form-urlencoded"}, b"prompt=x&steps=1"),
        ({"content-type": "application/octet-stream"}, b"\xff\xfe\x00binary"),
    ],
    ids=["text/plain", "no content type", "form", "binary"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
        "/sdapi/v1/options",
        "/sdapi/v1/extra-single-image",
        "/controlnet/detect",
        "/agent-scheduler/v1/queue/txt2img",
        "/sdapi/v1/png-info",
    ],
)
def test_non_json_bodies_are_4xx_whose_body_serialises(client, path, headers, content):
    response = client.post(path, content=content, headers=headers)
    if path == "/sdapi/v1/options":  # the options route reads a free-form object and says what it expected
        assert_a1111_error(response, 400, "expected a JSON object")
        return
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"
    assert all(len(json.dumps(item)) < 2000 for item in detail)  # the refused input is echoed short


def test_multipart_upload_to_a_json_route_is_422(client):
    response = client.post("/sdapi/v1/txt2img", files={"file": ("a.json", json.dumps(TINY).encode())})
    assert response.status_code == 422 and isinstance(response.json()["detail"], list)


@pytest.mark.parametrize("field", ["steps", "batch_size", "n_iter", "width", "height", "cfg_scale", "seed"])
def test_null_for_a_required_number_means_its_default_sync_and_async(client, field):
    response = client.post("/sdapi/v1/txt2img", json={**TINY, "steps": 1, field: None})
    assert response.status_code == 200, response.text[:300]
    from webui_api.schemas.generation import Txt2ImgRequest

    request = Txt2ImgRequest.model_validate({**TINY, field: None})
    assert getattr(request, field) == Txt2ImgRequest.model_fields[field].default


def test_a_null_steps_task_runs_instead_of_failing_later(client):
    queued = client.post(
        "/agent-scheduler/v1/queue/txt2img", json={**TINY, "steps": None, "width": None, "height": None, "n_iter": None}
    )
    assert queued.status_code == 200, queued.text
    task_id = queued.json()["task_id"]
    import time

    for _ in range(600):
        task = client.get(f"/agent-scheduler/v1/task/{task_id}").json()["data"]
        if task["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert task["status"] == "done", task["result"]


@pytest.mark.parametrize("text", ["aGVsbG8é", "iVBOR\u00a0w0KGgo", "😀😀😀😀"])
@pytest.mark.parametrize("route", ["img2img", "extras", "mask", "controlnet unit"])
def test_non_ascii_in_any_base64_image_field_is_400(client, text, route):
    bodies = {
        "img2img": ("/sdapi/v1/img2img", {**TINY, "init_images": [text]}),
        "mask": ("/sdapi/v1/img2img", {**TINY, "init_images": [_png()], "mask": text}),
        "extras": ("/sdapi/v1/extra-single-image", {"image": text}),
        "controlnet unit": (
            "/sdapi/v1/txt2img",
            {
                **TINY,
                "alwayson_scripts": {
                    "controlnet": {"args": [{"enabled": True, "module": "none", "model": "None", "image": text}]}
                },
            },
        ),
    }
    path, body = bodies[route]
    assert_a1111_error(client.post(path, json=body), 400, "Invalid encoded image")


def _png() -> str:
    from tests.security.helpers import png_b64

    return png_b64(64, 64)


def test_priorities_beyond_64_bits_are_422_and_a_huge_valid_one_is_capped(client):
    too_big = client.post("/agent-scheduler/v1/queue/txt2img", json={**TINY, "priority": 2**70})
    assert too_big.status_code == 422 and "priority" in too_big.text
    huge = client.post("/agent-scheduler/v1/queue/txt2img", json={**TINY, "priority": 2**62})
    assert huge.status_code == 200, huge.text
    header = client.post("/agent-scheduler/v1/queue/txt2img", json=TINY, headers={"X-Priority": "9" * 30})
    assert header.status_code == 200, header.text
    sync = client.post("/sdapi/v1/txt2img", json=TINY, headers={"X-Priority": "9" * 30})
    assert sync.status_code == 200


@pytest.mark.parametrize(
    "field, value",
    [
        ("mask_blur", 10**11),
        ("mask_blur_x", -5),
        ("inpaint_full_res_padding", 10**9),
        ("inpainting_fill", 7),
        ("resize_mode", None),
    ],
)
def test_img2img_numbers_are_bounded(client, field, value):
    response = client.post("/sdapi/v1/img2img", json={**TINY, "init_images": [_png()], field: value})
    if value is None:  # null means the default
        assert response.status_code == 200, response.text[:300]
    else:
        assert response.status_code == 422, response.text[:300]


@pytest.mark.parametrize("interval", ["nan", "inf", "-inf"])
def test_sse_interval_must_be_finite(client, interval):
    queued = client.post("/agent-scheduler/v1/queue/txt2img", json=TINY).json()["task_id"]
    response = client.get(f"/agent-scheduler/v1/task/{queued}/events", params={"interval": interval})
    assert response.status_code == 422


def test_info_json_never_holds_nan(client):
    response = client.post("/sdapi/v1/txt2img", json={**TINY, "s_noise": 1.0, "eta": 0.5})
    assert response.status_code == 200
    json.loads(response.json()["info"], parse_constant=lambda name: pytest.fail(f"{name} in info"))


def test_server_serves_after_every_bad_request(client):
    for _, fields in RAW_BODIES:
        client.post("/sdapi/v1/txt2img", content=raw_body(fields), headers=JSON)
    assert client.post("/sdapi/v1/txt2img", json=TINY).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": "No Such Upscaler 9x"},
        {"styles": "not a list"},
        {"script_name": "no such script"},
        {"script_name": "x/y/z plot", "script_args": [4, "1, 2000"]},
        {"override_settings": {"samples_format": "avif"}},
        {"prompt": ["a", "b", "c"], "batch_size": 2},
    ],
    ids=["hires upscaler", "styles type", "script", "script args", "output format", "prompt list length"],
)
def test_a_task_is_refused_exactly_when_the_sync_request_is(client, fields):
    sync = client.post("/sdapi/v1/txt2img", json={**TINY, **fields})
    task = client.post("/agent-scheduler/v1/queue/txt2img", json={**TINY, **fields})
    assert 400 <= sync.status_code < 500, sync.text[:300]
    assert task.status_code == sync.status_code and task.json() == sync.json()
    assert client.get("/agent-scheduler/v1/queue").json()["total_pending_tasks"] == 0


def test_an_img2img_task_with_a_broken_image_is_refused_before_it_is_stored(client):
    task = client.post("/agent-scheduler/v1/queue/img2img", json={**TINY, "init_images": ["bm90IGFuIGltYWdl"]})
    assert_a1111_error(task, 400, "Invalid encoded image")
    assert client.get("/agent-scheduler/v1/queue").json()["total_pending_tasks"] == 0


class _RunsCode:
    """Pickled, this calls a function on load: what torch.load(weights_only=True) refuses."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_an_upscaler_file_whose_pickle_is_refused_is_a_400_naming_the_file(make_client, tmp_path):
    import torch

    from tests.security.helpers import png_b64

    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    torch.save({"params": _RunsCode()}, folder / "4x-Trojan.pth")
    client = make_client()
    response = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(8, 8), "upscaler_1": "4x-Trojan"})
    body = assert_a1111_error(response, 400, "4x-Trojan.pth", "refused")
    assert "convert it to .safetensors" in body["errors"]
