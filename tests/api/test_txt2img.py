"""POST /sdapi/v1/txt2img end to end on the embedded tiny model."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from tests.api.payloads import a1111_test_payload, webuiapi_txt2img

INFO_KEYS = [
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
    "is_using_inpainting_conditioning", "version",
]


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_webuiapi_payload_gives_a1111_response_shape(client):
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 1
    assert not body["images"][0].startswith("data:")
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert list(info) == INFO_KEYS
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["sampler_name"] == "Euler a"
    assert info["sd_model_name"] and len(info["sd_model_hash"]) == 10
    assert body["parameters"]["prompt"] == "a photo of a cat"
    assert body["parameters"]["sampler_index"] == "Euler a"


def test_png_carries_the_infotext(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img()).json()
    info = json.loads(body["info"])
    image = decode(body["images"][0])
    text = image.text["parameters"]
    assert text == info["infotexts"][0]
    lines = text.split("\n")
    assert lines[0] == "a photo of a cat"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 1234, Size: 64x64, Model hash: "
    )
    assert lines[2].endswith("Version: v1.10.1")


def test_same_seed_gives_byte_identical_images(client):
    first = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img()).json()["images"]
    second = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img()).json()["images"]
    assert first == second
    other = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=1235)).json()["images"]
    assert decode(other[0]).tobytes() != decode(first[0]).tobytes()


def test_random_seed_is_reported_and_reproducible(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=-1)).json()
    seed = json.loads(body["info"])["seed"]
    assert isinstance(seed, int) and 0 <= seed < 4294967294
    again = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=seed)).json()
    assert decode(again["images"][0]).tobytes() == decode(body["images"][0]).tobytes()


def test_batch_size_times_n_iter_images_and_no_grid(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(batch_size=2, n_iter=2, seed=10)).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 4
    assert info["all_seeds"] == [10, 11, 12, 13]
    assert info["index_of_first_image"] == 0
    seeds_in_png = [decode(b).text["parameters"].split("Seed: ")[1].split(",")[0] for b in body["images"]]
    assert seeds_in_png == ["10", "11", "12", "13"]


def test_batch_image_equals_the_same_seed_alone(client):
    batch = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(batch_size=2, seed=20)).json()["images"]
    alone = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=21)).json()["images"]
    pixels_batch = decode(batch[1]).convert("RGB").tobytes()
    pixels_alone = decode(alone[0]).convert("RGB").tobytes()
    diff = max(abs(a - b) for a, b in zip(pixels_batch, pixels_alone, strict=True))
    assert diff <= 2  # batched matmuls may differ in the last bit; A1111 has the same tolerance


def test_send_images_false_returns_no_images(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(send_images=False)).json()
    assert body["images"] == []
    assert json.loads(body["info"])["infotexts"]


def test_a1111_own_test_payloads(client):
    for extra in (
        {},
        {"negative_prompt": "example negative prompt"},
        {"height": 128},
        {"n_iter": 2},
        {"batch_size": 2},
    ):
        response = client.post("/sdapi/v1/txt2img", json=a1111_test_payload(**extra))
        assert response.status_code == 200, (extra, response.text)


def test_minimal_payload_uses_a1111_defaults(client):
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}).json()
    info = json.loads(body["info"])
    assert info["sampler_name"] == "Euler"  # sampler_index's default
    assert info["cfg_scale"] == 7.0 and info["steps"] == 2
    assert body["parameters"]["sampler_index"] == "Euler"
    assert body["parameters"]["n_iter"] == 1


def test_legacy_combined_sampler_name_is_split(client):
    body = client.post(
        "/sdapi/v1/txt2img", json=webuiapi_txt2img(sampler_name="DPM++ 2M Karras", scheduler=None)
    ).json()
    info = json.loads(body["info"])
    assert info["sampler_name"] == "DPM++ 2M"
    assert "Schedule type: Automatic" in info["infotexts"][0]


def test_explicit_scheduler_is_written_as_its_label(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(sampler_name="Euler", scheduler="karras")).json()
    assert "Sampler: Euler, Schedule type: Karras," in json.loads(body["info"])["infotexts"][0]


def test_sampler_names_match_case_insensitively(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(sampler_name="euler A", sampler_index=None)).json()
    assert json.loads(body["info"])["sampler_name"] == "Euler a"


def test_override_settings_apply_to_one_request_only(client):
    body = client.post(
        "/sdapi/v1/txt2img", json=webuiapi_txt2img(override_settings={"CLIP_stop_at_last_layers": 2})
    ).json()
    info = json.loads(body["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_eta_differing_from_the_ancestral_default_is_recorded(client):
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(eta=0)).json()
    assert "Eta: 0.0" in json.loads(body["info"])["infotexts"][0]


def test_jpeg_output_follows_samples_format(client):
    body = client.post(
        "/sdapi/v1/txt2img", json=webuiapi_txt2img(override_settings={"samples_format": "jpg"})
    ).json()
    assert decode(body["images"][0]).format == "JPEG"


def test_alwayson_scripts_rules(client):
    off = {"ADetailer": {"args": [False]}, "ControlNet": {"args": []}}
    assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(alwayson_scripts=off)).status_code == 200
    on = {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}}
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(alwayson_scripts=on))
    assert response.status_code == 422
    assert response.json()["detail"] == "always on script ADetailer not found"


def test_unknown_selectable_script_is_422(client):
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(script_name="prompt matrix"))
    assert response.status_code == 422
    assert response.json()["detail"] == "Script 'prompt matrix' not found"


def test_eta_option_fallback_is_used_and_recorded(client):
    """eta null: A1111 takes eta_ancestral from the options, and records it when not 1.0."""
    payload = webuiapi_txt2img(eta=None, override_settings={"eta_ancestral": 0.5})
    assert "Eta: 0.5" in json.loads(client.post("/sdapi/v1/txt2img", json=payload).json()["info"])["infotexts"][0]
    plain = webuiapi_txt2img(eta=None)
    assert "Eta" not in json.loads(client.post("/sdapi/v1/txt2img", json=plain).json()["info"])["infotexts"][0]
