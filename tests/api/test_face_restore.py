"""Face restoration over HTTP: restore_faces in txt2img/img2img, extras' GFPGAN/CodeFormer
fields, /face-restorers, the infotext, and 400s that name the missing weights."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from tests.postprocess.face_weights import write_faceless_detector


def _models_with_gfpgan(tmp_path):
    """A GFPGAN folder with a detector that finds no face and a GFPGAN file that is never
    loaded (restoration loads the restorer only once a face is found)."""
    folder = tmp_path / "models" / "GFPGAN"
    write_faceless_detector(folder / "detection_mobilenet0.25_Final.pth")
    (folder / "GFPGANv1.4.pth").write_bytes(b"never read: no face is found")
    return folder


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_face_restorers_lists_a1111s_two(client):
    assert client.get("/sdapi/v1/face-restorers").json() == [
        {"name": "CodeFormer", "cmd_dir": None}, {"name": "GFPGAN", "cmd_dir": None}]


def test_missing_gfpgan_weights_are_a_400_naming_file_and_folder(client, tmp_path):
    payload = webuiapi_txt2img(restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "GFPGANv1.4.pth" in detail and str(tmp_path / "models" / "GFPGAN") in detail


def test_missing_detector_is_a_400_naming_it(client, tmp_path):
    (tmp_path / "models" / "GFPGAN").mkdir(parents=True)
    (tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"x")
    payload = webuiapi_txt2img(restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400 and "detection_Resnet50_Final.pth" in response.json()["detail"]


def test_txt2img_restore_faces_runs_and_writes_the_infotext(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    plain = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=5)).json()
    payload = webuiapi_txt2img(seed=5, restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    assert "Seed: 5, Face restoration: GFPGAN, Size: 64x64" in info["infotexts"][0]
    assert "Face restoration" not in json.loads(plain["info"])["infotexts"][0]
    assert np.array_equal(_pixels(body["images"][0]), _pixels(plain["images"][0]))  # no face found: unchanged


def test_face_restoration_option_applies_when_the_field_is_null(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    payload = webuiapi_txt2img(seed=5, restore_faces=None,
                               override_settings={"face_restoration": True, "face_restoration_model": "GFPGAN"})
    info = json.loads(client.post("/sdapi/v1/txt2img", json=payload).json()["info"])
    assert info["restore_faces"] is True and "Face restoration: GFPGAN" in info["infotexts"][0]


def test_img2img_restore_faces(client, tmp_path):
    from tests.api.payloads import a1111_img2img_payload

    _models_with_gfpgan(tmp_path)
    image = Image.new("RGB", (64, 64), (120, 80, 40))
    payload = a1111_img2img_payload(init_images=[_png(image)], seed=3, restore_faces=True,
                                    override_settings={"face_restoration_model": "GFPGAN"})
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    assert "Face restoration: GFPGAN" in json.loads(response.json()["info"])["infotexts"][0]


def test_extras_gfpgan_visibility_runs_the_restorer(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    body = client.post("/sdapi/v1/extra-single-image", json={"image": _png(image), "gfpgan_visibility": 1}).json()
    assert body["html_info"] == "<p>GFPGAN visibility: 1.0</p>"
    assert np.array_equal(_pixels(body["image"]), np.asarray(image))


def test_extras_codeformer_without_weights_names_the_file(client, tmp_path):
    pytest.importorskip("spandrel_extra_arches")  # without the package, the 400 names the package instead
    image = Image.new("RGB", (16, 16))
    response = client.post("/sdapi/v1/extra-single-image",
                           json={"image": _png(image), "codeformer_visibility": 0.5, "codeformer_weight": 0.3})
    assert response.status_code == 400
    assert "codeformer-v0.1.0.pth" in response.json()["detail"]
