"""POST /sdapi/v1/extra-single-image and /extra-batch-images against A1111's behaviour."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.postprocess.upscaler_files import write_esrgan


def _b64(image: Image.Image, parameters: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _noise(width: int = 64, height: int = 48) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _open(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_a1111_simple_upscaling_payload(client):
    """test/test_extras.py's payload: resize_mode 0 wins over the w/h fields."""
    payload = {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
               "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
               "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
               "image": _b64(_noise())}
    response = client.post("/sdapi/v1/extra-single-image", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    image = _open(body["image"])
    assert image.size == (128, 96)
    assert image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


@pytest.mark.parametrize("extra", [{}, {"model": "clip"}])
def test_a1111_image_only_payloads_return_the_image_unchanged(client, extra):
    """upscaler_1 defaults to "None": A1111 does nothing and reports an empty info."""
    source = _noise(40, 24)
    response = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(source), **extra})
    assert response.status_code == 200, response.text
    assert response.json()["html_info"] == "<p></p>"
    out = _open(response.json()["image"])
    assert out.size == (40, 24) and np.array_equal(np.asarray(out.convert("RGB")), np.asarray(source))


def test_default_factor_is_written_as_an_int(client):
    body = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(_noise()), "upscaler_1": "Nearest"}).json()
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Nearest</p>"


def test_scale_to_with_crop_and_existing_parameters_kept(client):
    payload = {"image": _b64(_noise(64, 48), parameters="a cat\nSteps: 20"), "resize_mode": 1,
               "upscaling_resize_w": 100, "upscaling_resize_h": 100, "upscaling_crop": True, "upscaler_1": "Lanczos"}
    body = client.post("/sdapi/v1/extra-single-image", json=payload).json()
    text = "Postprocess upscale to: 100x100, Postprocess crop to: 100x100, Postprocess upscaler: Lanczos"
    assert body["html_info"] == f"<p>{text}</p>"
    image = _open(body["image"])
    assert image.size == (100, 100)
    assert image.info["parameters"] == "a cat\nSteps: 20" and image.info["postprocessing"] == text
    info = client.post("/sdapi/v1/png-info", json={"image": body["image"]}).json()
    assert info["info"] == "a cat\nSteps: 20" and info["items"]["postprocessing"] == text


def test_scale_to_without_crop_covers_the_target(client):
    payload = {"image": _b64(_noise(64, 48)), "resize_mode": 1, "upscaling_resize_w": 100,
               "upscaling_resize_h": 100, "upscaling_crop": False, "upscaler_1": "Lanczos"}
    body = client.post("/sdapi/v1/extra-single-image", json=payload).json()
    assert _open(body["image"]).size == (128, 96)  # factor max(100/64, 100/48), floored to 8s
    assert "crop" not in body["html_info"]


def test_second_upscaler_blends_and_is_reported(client):
    payload = {"image": _b64(_noise(32, 32)), "upscaler_1": "Nearest", "upscaler_2": "Lanczos",
               "extras_upscaler_2_visibility": 0.5, "upscaling_resize": 2.5}
    body = client.post("/sdapi/v1/extra-single-image", json=payload).json()
    assert body["html_info"] == ("<p>Postprocess upscale by: 2.5, Postprocess upscaler: Nearest, "
                                 "Postprocess upscaler 2: Lanczos</p>")
    assert _open(body["image"]).size == (80, 80)


def test_model_upscaler_from_the_data_dir(make_client, tmp_path):
    write_esrgan(tmp_path / "models" / "ESRGAN" / "2x-Tiny.safetensors", scale=2)
    client = make_client()
    body = client.post("/sdapi/v1/extra-single-image",
                       json={"image": _b64(_noise(24, 16)), "upscaler_1": "2x-Tiny", "upscaling_resize": 4}).json()
    assert _open(body["image"]).size == (96, 64)
    assert body["html_info"] == "<p>Postprocess upscale by: 4.0, Postprocess upscaler: 2x-Tiny</p>"


def test_batch_images_keep_order_and_sizes(client):
    images = [{"data": _b64(_noise(16, 16)), "name": "a.png"}, {"data": _b64(_noise(24, 8)), "name": "b.png"}]
    response = client.post("/sdapi/v1/extra-batch-images", json={"imageList": images, "upscaler_1": "Lanczos"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [_open(x).size for x in body["images"]] == [(32, 32), (48, 16)]
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"


def test_batch_needs_an_image_list(client):
    assert client.post("/sdapi/v1/extra-batch-images", json={}).status_code == 422


@pytest.mark.parametrize("field", ["upscaler_1", "upscaler_2"])
def test_unknown_upscaler_is_a_4xx_naming_it(client, field):
    response = client.post("/sdapi/v1/extra-single-image",
                           json={"image": _b64(_noise()), "upscaler_1": "Lanczos", field: "4x-Nowhere"})
    assert response.status_code == 400
    assert "4x-Nowhere" in response.json()["detail"]


@pytest.mark.parametrize(
    "payload,status",
    [
        ({"upscaling_resize": 0}, 422),
        ({"resize_mode": 2}, 422),
        ({"extras_upscaler_2_visibility": 1.5}, 422),
        ({"upscaling_resize": 1000, "upscaler_1": "Lanczos"}, 400),
        ({"gfpgan_visibility": 0.5}, 400),  # no GFPGAN weights in the test models dir
    ],
)
def test_bad_fields_are_refused(client, payload, status):
    response = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(_noise()), **payload})
    assert response.status_code == status, response.text


def test_bad_image_is_400(client):
    assert client.post("/sdapi/v1/extra-single-image", json={"image": "not-base64!"}).status_code == 400
    assert client.post("/sdapi/v1/extra-single-image", json={}).status_code == 400


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_samples_format_applies_and_keeps_parameters(client, fmt):
    assert client.post("/sdapi/v1/options", json={"samples_format": fmt}).status_code == 200
    payload = {"image": _b64(_noise(), parameters="a dog"), "upscaler_1": "Lanczos"}
    body = client.post("/sdapi/v1/extra-single-image", json=payload).json()
    assert _open(body["image"]).format == {"jpg": "JPEG", "webp": "WEBP"}[fmt]
    assert client.post("/sdapi/v1/png-info", json={"image": body["image"]}).json()["info"] == "a dog"


def test_tile_options_reach_the_model(make_client, tmp_path):
    """ESRGAN_tile / ESRGAN_tile_overlap drive tiling: tiled and untiled runs agree."""
    write_esrgan(tmp_path / "models" / "ESRGAN" / "2x-Tiny.pth", scale=2)
    client = make_client()
    payload = {"image": _b64(_noise(40, 32)), "upscaler_1": "2x-Tiny", "upscaling_resize": 2}
    outputs = []
    for tile, overlap in ((0, 16), (16, 16), (8, 0)):
        options = {"ESRGAN_tile": tile, "ESRGAN_tile_overlap": overlap}
        assert client.post("/sdapi/v1/options", json=options).status_code == 200
        outputs.append(np.asarray(_open(client.post("/sdapi/v1/extra-single-image", json=payload).json()["image"])))
    assert outputs[0].shape == (64, 80, 3)
    assert np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max() <= 1
    assert np.abs(outputs[0].astype(int) - outputs[2].astype(int)).max() > 1  # seams without context


class PicklingWorker:
    """A worker replica in-process: an item's remote form crosses a pickle round trip and runs
    through workers.run_call with the replica's own model cache, as on a Ray worker replica."""

    name = "replica"

    def __init__(self, settings) -> None:
        from webui_api.postprocess.face_restore.cache import PostprocessModels

        self.settings = settings
        self.models = PostprocessModels()
        self.remote_runs = 0

    def execute(self, item, progress):
        import pickle

        from webui_api.workers import run_call

        if item.remote is None:
            return item.run(item.cancel)
        self.remote_runs += 1
        call = pickle.loads(pickle.dumps(item.remote))
        return run_call(None, progress, call, [item.cancel], self.settings, self.models)

    def close(self) -> None:
        pass


def test_extras_run_on_a_remote_worker_like_on_the_local_one(engine, make_client, tmp_path):
    """--ray: extras go to a worker replica (the device's owner) as a RemoteExtras; the answer is
    the local one, and the replica keeps its upscaler model loaded."""
    from fastapi.testclient import TestClient

    from tests.factories import settings_for_tests
    from webui_api.app import create_app

    write_esrgan(tmp_path / "models" / "ESRGAN" / "2x-Tiny.safetensors", scale=2)
    images = [{"data": _b64(_noise(16, 16), "a cat\nSteps: 3"), "name": "a.png"},
              {"data": _b64(_noise(24, 8)), "name": "b.png"}]
    payload = {"imageList": images, "upscaler_1": "2x-Tiny", "upscaler_2": "Lanczos",
               "extras_upscaler_2_visibility": 0.5}
    local = make_client().post("/sdapi/v1/extra-batch-images", json=payload)
    settings = settings_for_tests(tmp_path)
    worker = PicklingWorker(settings)
    with TestClient(create_app(settings, engine=engine, workers=[worker])) as client:
        remote = client.post("/sdapi/v1/extra-batch-images", json=payload)
        again = client.post("/sdapi/v1/extra-single-image", json={"image": images[1]["data"], "upscaler_1": "2x-Tiny"})
    assert local.status_code == remote.status_code == again.status_code == 200, remote.text
    assert worker.remote_runs == 2 and worker.models.loads == 1
    assert remote.json()["html_info"] == local.json()["html_info"]
    for ours, theirs in zip(remote.json()["images"], local.json()["images"], strict=True):
        assert np.array_equal(np.asarray(_open(ours)), np.asarray(_open(theirs)))
        assert _open(ours).info == _open(theirs).info
