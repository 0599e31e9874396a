"""Width/height that are not multiples of 8, as Open WebUI sends them ("500x300"-style sizes).

A1111 accepts any size: it samples a latent of (height // 8, width // 8), so the decoded image is
the size floored to a multiple of 8, while infotext `Size` and info width/height keep the request.
"""

from __future__ import annotations

import base64
import io
import json

from PIL import Image


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_open_webui_free_size_txt2img(client):
    payload = {"prompt": "a cat", "batch_size": 1, "width": 100, "height": 60, "steps": 2}  # Open WebUI's shape
    response = client.post("/sdapi/v1/txt2img", headers={"authorization": "Basic "}, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert _image(body["images"][0]).size == (96, 56)
    info = json.loads(body["info"])
    assert (info["width"], info["height"]) == (100, 60)
    assert "Size: 100x60," in info["infotexts"][0]


def test_free_size_img2img(client):
    buffer = io.BytesIO()
    Image.new("RGB", (70, 45), (10, 120, 200)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    payload = {"prompt": "a cat", "init_images": [init], "width": 70, "height": 45, "steps": 2,
               "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    assert _image(response.json()["images"][0]).size == (64, 40)
    assert "Size: 70x45," in json.loads(response.json()["info"])["infotexts"][0]


def _png_b64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_free_size_hires_and_inpainting_answer_200(client):
    hires = {"prompt": "a cat", "width": 100, "height": 60, "steps": 2, "enable_hr": True, "hr_scale": 1.5,
             "hr_upscaler": "Latent", "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/txt2img", json=hires)
    assert response.status_code == 200, response.text
    assert _image(response.json()["images"][0]).size == (144, 88)  # 150x90 floored to multiples of 8
    inpaint = {"prompt": "a cat", "init_images": [_png_b64((70, 45), (10, 120, 200))], "width": 70, "height": 45,
               "mask": _png_b64((70, 45), (255, 255, 255)), "inpaint_full_res": True, "steps": 2}
    response = client.post("/sdapi/v1/img2img", json=inpaint)
    assert response.status_code == 200, response.text


def test_openapi_shows_a1111_defaults_for_script_fields(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("Txt2ImgRequest", "Img2ImgRequest"):
        properties = schemas[name]["properties"]
        assert properties["script_args"]["default"] == [] and properties["alwayson_scripts"]["default"] == {}
