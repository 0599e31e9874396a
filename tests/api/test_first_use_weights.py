"""First use works like A1111: built-in upscaler and face restoration names as clients send
them, their files fetched from a (loopback) mirror before the job is queued, or a clear 400
naming the file, folder and fetch command when downloads are off."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from tests.postprocess.face_weights import write_faceless_detector
from tests.postprocess.upscaler_files import write_esrgan
from tests.weights.mirror import MirrorState, serve_mirror
from tests.weights.tiny_files import origin_path, pinned_to, tiny_esrgan_bytes
from webui_api.weights import FetchPolicy, WeightFolders, WeightsFetcher, WeightsRegistry


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def aiyabot_upscale(upscaler: str = "R-ESRGAN 4x+", **extra: object) -> dict[str, object]:
    """aiyabot's upscalecog payload (its field set, data-URL image)."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    return {"upscaling_resize": 2, "upscaler_1": upscaler, "image": _data_url(image), "gfpgan_visibility": 0,
            "codeformer_visibility": 0, "upscale_first": False, "upscaler_2": "None",
            "extras_upscaler_2_visibility": 0, **extra}


def online(client, registry: WeightsRegistry, mirror: str) -> None:
    """Let the test app download from `mirror`, expecting the digests of `registry`."""
    runtime = client.app.state.runtime
    runtime.weights = WeightsFetcher(registry, WeightFolders.from_settings(runtime.settings),
                                      FetchPolicy(offline=False, mirror=mirror))


def test_builtin_name_with_present_file_upscales(client, tmp_path):
    write_esrgan(tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    response = client.post("/sdapi/v1/extra-single-image", json=aiyabot_upscale())
    assert response.status_code == 200, response.text
    assert "Postprocess upscaler: R-ESRGAN 4x+" in response.json()["html_info"]


def test_offline_missing_builtin_is_a_400_naming_file_folder_and_command(client, tmp_path):
    response = client.post("/sdapi/v1/extra-single-image", json=aiyabot_upscale("ESRGAN_4x"))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "ESRGAN_4x.pth" in detail and str(tmp_path / "models" / "ESRGAN") in detail
    assert 'webui-api models fetch "ESRGAN_4x"' in detail
    assert not (tmp_path / "models" / "ESRGAN").exists()


def test_missing_builtin_is_fetched_from_the_mirror_on_first_use(client, tmp_path):
    data = tiny_esrgan_bytes(tmp_path)
    registry, entry = pinned_to(WeightsRegistry.builtin(), "R-ESRGAN 4x+", data)
    state = MirrorState(files={origin_path(entry): data})
    with serve_mirror(state) as mirror:
        online(client, registry, mirror)
        first = client.post("/sdapi/v1/extra-single-image", json=aiyabot_upscale())
        second = client.post("/sdapi/v1/extra-single-image", json=aiyabot_upscale())
    assert first.status_code == 200, first.text
    assert second.status_code == 200
    assert (tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth").read_bytes() == data
    assert len(state.requests) == 1  # fetched once, then found in A1111's folder
    listed = {i["name"]: i for i in client.get("/sdapi/v1/upscalers").json()}
    assert listed["R-ESRGAN 4x+"]["model_path"] == str(tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth")


def test_mirror_with_wrong_bytes_is_refused_and_leaves_nothing(client, tmp_path):
    data = tiny_esrgan_bytes(tmp_path)
    registry, entry = pinned_to(WeightsRegistry.builtin(), "R-ESRGAN 4x+", data)
    with serve_mirror(MirrorState(files={origin_path(entry): data[:-4] + b"evil"})) as mirror:
        online(client, registry, mirror)
        response = client.post("/sdapi/v1/extra-single-image", json=aiyabot_upscale())
    assert response.status_code == 502 and "sha256" in response.json()["detail"]
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]


def test_txt2img_hires_with_missing_builtin_upscaler_is_refused_before_queueing(client, tmp_path):
    """aiyabot / text-generation-webui send hr_upscaler "ESRGAN_4x" / "R-ESRGAN 4x+"."""
    payload = webuiapi_txt2img(enable_hr=True, hr_upscaler="R-ESRGAN 4x+", hr_scale=1.5, steps=2)
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400
    assert 'webui-api models fetch "R-ESRGAN 4x+"' in response.json()["detail"]


def test_txt2img_hires_fetches_esrgan_4x_then_runs(make_client, tmp_path):
    data = tiny_esrgan_bytes(tmp_path, scale=2)
    registry, entry = pinned_to(WeightsRegistry.builtin(), "ESRGAN_4x", data)
    client = make_client(own_engine=True)  # an engine that scans this data dir's upscaler folders
    with serve_mirror(MirrorState(files={origin_path(entry): data})) as mirror:
        online(client, registry, mirror)
        payload = webuiapi_txt2img(enable_hr=True, hr_upscaler="ESRGAN_4x", hr_scale=2, hr_second_pass_steps=1.0,
                                   steps=2, denoising_strength=0.5)
        response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert "Hires upscaler: ESRGAN_4x" in json.loads(response.json()["info"])["infotexts"][0]
    assert (tmp_path / "models" / "ESRGAN" / "ESRGAN_4x.pth").read_bytes() == data


def test_face_restoration_weights_fetched_on_first_use(client, tmp_path):
    """GFPGAN, facexlib's detector and parser land in models/GFPGAN as A1111 puts them."""
    detector = write_faceless_detector(tmp_path / "src" / "detector.pth").read_bytes()
    files = {"GFPGAN": b"GFPGAN weights: never loaded, no face is found", "facexlib detection": detector,
             "facexlib parsing": b"parser weights: never loaded, no face is found"}
    registry = WeightsRegistry.builtin()
    served = {}
    for name, data in files.items():
        registry, entry = pinned_to(registry, name, data)
        served[origin_path(entry)] = data
    state = MirrorState(files=served)
    with serve_mirror(state) as mirror:
        online(client, registry, mirror)
        payload = webuiapi_txt2img(seed=5, restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
        response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    folder = tmp_path / "models" / "GFPGAN"
    assert sorted(p.name for p in folder.iterdir()) == [
        "GFPGANv1.4.pth", "detection_Resnet50_Final.pth", "parsing_parsenet.pth"]
    assert len(weights_requests(state)) == 3


def test_offline_face_restoration_names_the_fetch_command(client):
    payload = webuiapi_txt2img(restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400
    assert 'webui-api models fetch "GFPGAN"' in response.json()["detail"]


def test_sd_upscale_script_fetches_its_builtin_upscaler_before_queueing(client, tmp_path):
    from tests.api.payloads import a1111_img2img_payload
    from tests.api.test_img2img import gradient, png_b64

    data = tiny_esrgan_bytes(tmp_path)
    registry, entry = pinned_to(WeightsRegistry.builtin(), "R-ESRGAN 4x+", data)
    state = MirrorState(files={origin_path(entry): data})
    payload = a1111_img2img_payload(init_images=[png_b64(gradient())], script_name="sd upscale",
                                    script_args=["", 8, "R-ESRGAN 4x+", 2.0])
    offline = client.post("/sdapi/v1/img2img", json=payload)
    assert offline.status_code == 400 and 'webui-api models fetch "R-ESRGAN 4x+"' in offline.json()["detail"]
    with serve_mirror(state) as mirror:
        online(client, registry, mirror)
        response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    assert "SD upscale upscaler: R-ESRGAN 4x+" in json.loads(response.json()["info"])["infotexts"][0]
    assert len(weights_requests(state)) == 1


def weights_requests(state: MirrorState) -> list:
    """The mirror's requests other than the Approx NN preview file every previewing job asks for."""
    return [request for request in state.requests if "/VAE-approx/" not in request[0]]


def test_default_previews_fetch_the_approx_nn_file_on_first_use(client, tmp_path):
    """A1111 downloads models/VAE-approx/model.pt when missing; "Approx NN" is the default preview."""
    import io

    import torch

    from webui_api.engine.vae_approx import VAEApprox

    buffer = io.BytesIO()
    torch.save(VAEApprox(4).state_dict(), buffer)
    data = buffer.getvalue()
    registry, entry = pinned_to(WeightsRegistry.builtin(), "vaeapprox-sd1", data)
    state = MirrorState(files={origin_path(entry): data})
    with serve_mirror(state) as mirror:
        online(client, registry, mirror)
        response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=2))
        again = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=2))
    assert response.status_code == 200 and again.status_code == 200, response.text
    assert (tmp_path / "models" / "VAE-approx" / "model.pt").read_bytes() == data
    assert len(state.requests) == 1


def test_a_failed_optional_preview_file_is_not_retried_by_every_job(client, tmp_path):
    """The mirror lacks model.pt (404): the job runs with Approx cheap previews, the next one
    does not ask again."""
    state = MirrorState(files={})
    with serve_mirror(state) as mirror:
        online(client, WeightsRegistry.builtin(), mirror)
        first = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=2))
        second = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(steps=2))
    assert first.status_code == 200 and second.status_code == 200, first.text
    approx = "/AUTOMATIC1111/stable-diffusion-webui/raw/v1.10.1/models/VAE-approx/model.pt"
    assert [path for path, _ in state.requests] == [approx]
    assert not (tmp_path / "models" / "VAE-approx" / "model.pt").exists()
