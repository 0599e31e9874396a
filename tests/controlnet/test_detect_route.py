"""GET /controlnet/module_list and POST /controlnet/detect, over HTTP and through the webuiapi client."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.api.test_webuiapi_client import live_server  # noqa: F401 (fixture)
from tests.factories import settings_for_tests


def _png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _square() -> np.ndarray:
    image = np.zeros((96, 128, 3), np.uint8)
    image[24:72, 32:96] = 255
    return image


def _decode(text: str) -> np.ndarray:
    raw = base64.b64decode(text, validate=True)
    assert raw.startswith(b"\x89PNG")  # raw base64 of a PNG, no data: prefix, like the extension
    return np.asarray(Image.open(io.BytesIO(raw)))


def test_module_list_by_name_and_by_alias(client):
    body = client.get("/controlnet/module_list").json()
    assert set(body) == {"module_list", "module_detail"}
    assert body["module_list"][0] == "none"
    assert "depth" in body["module_list"] and "depth_midas" not in body["module_list"]
    assert set(body["module_detail"]) == set(body["module_list"])
    assert body["module_detail"]["canny"]["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1,
                                                             "max": 255, "step": 1}
    aliased = client.get("/controlnet/module_list", params={"alias_names": True}).json()
    assert "depth_midas" in aliased["module_list"] and "softedge_hed" in aliased["module_list"]
    assert aliased["module_detail"]["depth_midas"]["model_free"] is False
    assert len(aliased["module_list"]) == len(body["module_list"])


@pytest.mark.parametrize("field", ["controlnet_input_images", "controlnet_images"])
def test_detect_returns_one_map_per_image(client, field):
    payload = {
        "controlnet_module": "canny",
        field: [_png_b64(_square()), "data:image/png;base64," + _png_b64(_square())],
        "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200,
    }
    response = client.post("/controlnet/detect", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == "Success" and len(body["images"]) == 2
    edges = _decode(body["images"][0])
    assert edges.shape == (64, 85, 3)
    assert edges.max() == 255 and edges[28:44, 34:50].max() == 0  # outline found, inside flat


def test_detect_defaults_apply_for_minus_one(client):
    payload = {"controlnet_module": "threshold", "controlnet_input_images": [_png_b64(_square())]}
    body = client.post("/controlnet/detect", json=payload).json()
    assert _decode(body["images"][0]).shape == (512, 683, 3)  # resolution -1 → 512 on the short side


@pytest.mark.parametrize(
    ("payload", "detail"),
    [({"controlnet_module": "nope", "controlnet_input_images": ["x"]}, "Module not available"),
     ({"controlnet_module": "canny"}, "No image selected"),
     ({"controlnet_module": "clip_vision", "controlnet_input_images": ["x"]}, "Module not supported")],
)
def test_detect_refusals_are_422_with_the_extensions_wording(client, payload, detail):
    response = client.post("/controlnet/detect", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"] == detail


def test_detect_missing_annotator_names_the_file_and_folder(client, tmp_path):
    payload = {"controlnet_module": "depth_midas", "controlnet_input_images": [_png_b64(_square())]}
    response = client.post("/controlnet/detect", json=payload)
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "dpt_hybrid-midas-501f0c75.pt" in detail
    assert str(tmp_path / "models" / "ControlNetAnnotators" / "midas") in detail


def test_detect_honours_the_annotator_path_flag(engine, tmp_path):
    pytest.importorskip("controlnet_aux")
    from dataclasses import replace
    from types import MappingProxyType

    from fastapi.testclient import TestClient

    from tests.controlnet.annotator_files import write_hed
    from webui_api.app import create_app

    folder = tmp_path / "elsewhere"
    write_hed(folder)
    base = settings_for_tests(tmp_path)
    flags = MappingProxyType({**base.cmd_flags, "controlnet_annotator_models_path": str(folder)})
    payload = {"controlnet_module": "softedge_hed", "controlnet_input_images": [_png_b64(_square())],
               "controlnet_processor_res": 64}
    with TestClient(create_app(replace(base, cmd_flags=flags), engine=engine)) as client:
        response = client.post("/controlnet/detect", json=payload)
    assert response.status_code == 200, response.text
    assert _decode(response.json()["images"][0]).shape == (64, 85, 3)


def test_webuiapi_controlnet_detect(live_server):  # noqa: F811
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, username="user", password="pass")
    modules = api.controlnet_module_list()
    assert "canny" in modules
    result = api.controlnet_detect(images=[Image.fromarray(_square())], module="canny", processor_res=64,
                                   threshold_a=100, threshold_b=200)
    assert result.info == "Success"
    assert result.images[0].size == (85, 64)
