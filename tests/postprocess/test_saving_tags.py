"""A1111's filename pattern tags, sanitising, save_txt, img2img/extras targets and naming options."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import datetime, timezone

import pytest
from PIL import Image

from webui_api.jobs import GeneratedImage, JobResult
from webui_api.option_defaults import OPTIONS_BY_KEY
from webui_api.postprocess.encode import read_image_info
from webui_api.postprocess.saving import (
    IMG2IMG_SAMPLES,
    JobNameFacts,
    NameFacts,
    apply_pattern,
    prompt_words,
    sanitize,
    save_extras,
    save_image,
    save_samples,
)

NOW = datetime(2026, 11, 23, 5, 6, 7)
DEFAULTS = {key: option.fresh_default() for key, option in OPTIONS_BY_KEY.items()}
JOB = JobNameFacts(
    steps=20, cfg_scale=7.0, sampler_name="DPM++ 2M", scheduler_label="Karras", batch_size=2, n_iter=2,
    all_seeds=(10, 11, 12, 13), main_prompt="a cat", main_negative_prompt="blurry", job_timestamp="20261123050607",
    clip_skip=2, styles=("Cinematic",), model_name="my model", model_hash="0123456789", denoising_strength=0.6,
    vae_name="vae-ft-mse.safetensors",
)


def facts(index: int = 0, prompt: str = "a cat, by x", job: JobNameFacts | None = JOB, **kw) -> NameFacts:
    return NameFacts(10 + index, prompt, 64, 32, NOW, job, index, **kw)


@pytest.mark.parametrize("pattern,expected", [
    ("[seed]-[seed_first]-[seed_last]", "11-10-13"),
    ("[steps]_[cfg]_[sampler]_[scheduler]_[sampler_scheduler]", "20_7.0_DPM++ 2M_Karras_DPM++ 2M Karras"),
    ("[model_name]-[model_hash]", "my model-0123456789"),
    ("[width]x[height] [date] [datetime] [datetime<%Y>]", "64x32 2026-11-23 20261123050607 2026"),
    ("[job_timestamp]", "20261123050607"),
    ("[batch_number]/[batch_size]/[generation_number]", "2/2/2"),
    ("[clip_skip] [denoising] [vae_filename] [styles]", "2 0.6 vae-ft-mse Cinematic"),
    ("[prompt]|[prompt_spaces]|[prompt_words]", "a_cat,_by_x|a cat, by x|a cat by x"),
    ("[none]x[NOPE][user]", "x[NOPE][user]"),
    ("[hasprompt<cat><dog|nodog>]", "catnodog"),
])
def test_tags_follow_a1111(pattern, expected):
    assert apply_pattern(pattern, facts(1)) == expected


def test_hashes_use_sha256_prefixes():
    expect = hashlib.sha256(b"a cat, by x").hexdigest()
    assert apply_pattern("[prompt_hash]", facts()) == expect[:8]
    assert apply_pattern("[prompt_hash<12>]", facts()) == expect[:12]
    assert apply_pattern("[negative_prompt_hash]", facts()) == hashlib.sha256(b"blurry").hexdigest()[:8]
    assert apply_pattern("[full_prompt_hash<4>]", facts()) == hashlib.sha256(b"a cat blurry").hexdigest()[:4]
    image = Image.new("RGB", (2, 2), "red")
    assert apply_pattern("[image_hash<6>]", facts(image=image)) == hashlib.sha256(image.tobytes()).hexdigest()[:6]


def test_skipped_tags_drop_the_text_before_them():
    single = JobNameFacts(**{**JOB.__dict__, "batch_size": 1, "n_iter": 1})
    assert apply_pattern("[seed]-[batch_number]-[generation_number]-[seed_last]-b", facts(job=single)) == "10-b"
    no_denoise = JobNameFacts(**{**JOB.__dict__, "denoising_strength": None})
    assert apply_pattern("[seed]_[denoising]", facts(job=no_denoise)) == "10"


def test_job_tags_stay_as_written_without_a_job():
    assert apply_pattern("[steps]-[seed]-[model_name]", facts(job=None)) == "[steps]-10-[model_name]"


def test_datetime_with_time_zone():
    aware = NameFacts(1, "p", 1, 1, datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc))
    assert apply_pattern("[datetime<%H><Asia/Tokyo>]", aware) == "21"


def test_sanitising_and_length_limit():
    assert sanitize("a/b:c?d") == "a_b_c_d"
    assert len(apply_pattern("[prompt]", facts(prompt="x" * 300))) == 128
    assert prompt_words("...") == "empty"
    assert prompt_words("one two three four five six seven eight nine ten") == "one two three four five six seven eight"
    assert prompt_words("a b c", limit=2) == "a b"


def _result(*seeds: int) -> JobResult:
    return JobResult([GeneratedImage(Image.new("RGB", (16, 8)), s, s + 1, "a cat", "") for s in seeds])


def test_save_txt_writes_the_infotext_beside_the_image(tmp_path):
    options = {**DEFAULTS, "save_txt": True}
    path = save_samples(_result(3), ["Steps: 20, Seed: 3"], options, tmp_path, now=NOW)[0]
    assert path.with_suffix(".txt").read_text(encoding="utf8") == "Steps: 20, Seed: 3\n"
    assert not any(p.suffix == ".tmp" for p in path.parent.iterdir())


def test_img2img_folders_and_directory_pattern(tmp_path):
    options = {**DEFAULTS, "directories_filename_pattern": "[model_name]/[prompt_words]",
               "samples_filename_pattern": "[seed]-[steps]"}
    path = save_samples(_result(4), ["i"], options, tmp_path, IMG2IMG_SAMPLES, NOW, JOB)[0]
    assert path == tmp_path / "outputs" / "img2img-images" / "my model" / "a cat" / "00000-4-20.png"


def test_without_number_and_add_suffix_instead_of_replace(tmp_path):
    options = {**DEFAULTS, "save_images_add_number": False, "save_images_replace_action": "Add number suffix",
               "save_to_dirs": False}
    first = save_samples(_result(5), ["i"], options, tmp_path, now=NOW)[0]
    second = save_samples(_result(5), ["i"], options, tmp_path, now=NOW)[0]
    assert first.name == "5-a cat.png" and second.name == "5-a cat-1.png"
    replaced = save_samples(_result(5), ["i"], {**options, "save_images_replace_action": "Replace"}, tmp_path, now=NOW)
    assert replaced[0] == first


def test_extras_are_flat_numbered_or_named_with_an_extras_chunk(tmp_path):
    image = Image.new("RGB", (8, 8))
    items = {"parameters": "a cat\nSteps: 20", "postprocessing": "Postprocess upscaler: Lanczos"}
    path = save_extras(image, "Postprocess upscaler: Lanczos", items, DEFAULTS, tmp_path, now=NOW)
    assert path == tmp_path / "outputs" / "extras-images" / "00000.png"
    parameters, chunks = read_image_info(Image.open(path))
    assert parameters == "a cat\nSteps: 20"
    assert chunks["extras"] == "Postprocess upscaler: Lanczos" and chunks["postprocessing"] == items["postprocessing"]
    named = save_extras(image, "x", {}, DEFAULTS, tmp_path, "holiday photo.jpg", now=NOW)
    assert named.name == "holiday photo.png"
    numbered = save_extras(image, "x", {}, {**DEFAULTS, "use_original_name_batch": False}, tmp_path, "a.png", now=NOW)
    assert numbered.name == "00001.png"


def test_extras_as_jpeg_carry_the_postprocessing_text(tmp_path):
    path = save_extras(Image.new("RGB", (8, 8)), "Postprocess upscale by: 2", {}, {**DEFAULTS, "samples_format": "jpg"},
                       tmp_path, now=NOW)
    assert path.suffix == ".jpg" and read_image_info(Image.open(path))[0] == "Postprocess upscale by: 2"


def test_grid_extended_filename_adds_the_pattern(tmp_path):
    from webui_api.postprocess.saving import TXT2IMG_GRIDS

    options = {**DEFAULTS, "grid_extended_filename": True}
    path = save_image(Image.new("RGB", (4, 4)), TXT2IMG_GRIDS, facts(basename="grid"), "g", options, tmp_path)
    assert path.name == "grid-0000-10.png"


# --------------------------------------------------------------------------- over HTTP


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_save_images_writes_files(client, tmp_path):
    from tests.api.payloads import a1111_img2img_payload

    payload = a1111_img2img_payload(init_images=[_png(Image.new("RGB", (64, 64), "gray"))], seed=21, batch_size=2,
                                    save_images=True, override_settings={"save_txt": True})
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    saved = sorted(p.name for p in (tmp_path / "outputs" / "img2img-images").glob("*/*"))
    assert saved == ["00000-21.png", "00000-21.txt", "00001-22.png", "00001-22.txt"]
    assert len(list((tmp_path / "outputs" / "img2img-grids").glob("*/grid-*.png"))) == 1
    assert len(response.json()["images"]) == 3  # the grid first, as A1111 returns it


def test_extras_save_images_writes_to_extras_images(client, tmp_path):
    body = {"imageList": [{"data": _png(Image.new("RGB", (8, 8))), "name": "one.png"}], "upscaler_1": "Lanczos",
            "save_images": True}
    assert client.post("/sdapi/v1/extra-batch-images", json=body).status_code == 200
    assert [p.name for p in (tmp_path / "outputs" / "extras-images").iterdir()] == ["one.png"]
    client.post("/sdapi/v1/extra-single-image", json={"image": _png(Image.new("RGB", (8, 8)))})
    assert len(list((tmp_path / "outputs" / "extras-images").iterdir())) == 1  # A1111's API saves nothing by default
