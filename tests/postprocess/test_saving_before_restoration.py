"""Options save_images_before_face_restoration and save_images_before_highres_fix: with
save_images, each decoded image is also saved before restoration ("-before-face-restoration",
just before its restored image) and each hires first-pass picture before its batch
("-before-highres-fix"), numbered in the order A1111 saves them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from tests.api.test_face_restore import _models_with_gfpgan
from webui_api.jobs import GeneratedImage, JobResult
from webui_api.postprocess.face_restore.restorers import JobFaceStep, keeps_originals
from webui_api.postprocess.saving import TXT2IMG_SAMPLES, save_samples


class Brighter:
    """A stand-in restorer: every pixel + 10."""

    def restore(self, image, request):
        return Image.fromarray(np.clip(np.asarray(image).astype(int) + 10, 0, 255).astype(np.uint8))


def test_the_step_keeps_what_it_was_given_only_when_asked():
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    keeping, plain = JobFaceStep(Brighter(), None, keep_originals=True), JobFaceStep(Brighter(), None)
    assert np.asarray(keeping(image))[0, 0].tolist() == [11, 12, 13]
    plain(image)
    assert keeping.originals == [image] and plain.originals == []


def test_keeping_follows_a1111s_rule():
    on = {"save_images_before_face_restoration": True}
    assert keeps_originals(on, True)
    assert not keeps_originals(on, False) and not keeps_originals({}, True)
    assert not keeps_originals({**on, "samples_save": False}, True)


def test_before_images_go_first_with_the_suffix(tmp_path):
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(2)]
    result = JobResult(
        images=[
            GeneratedImage(image=image, seed=7 + i, subseed=0, prompt="a cat", negative_prompt="")
            for i, image in enumerate(images)
        ]
    )
    before = [Image.new("RGB", (8, 8), (0, 0, 200)), Image.new("RGB", (8, 8), (0, 200, 0))]
    options = {"outdir_txt2img_samples": "out", "save_to_dirs": False}
    paths = save_samples(result, ["info 0", "info 1"], options, tmp_path, TXT2IMG_SAMPLES, before_restoration=before)
    names = [path.name for path in paths]
    assert names == ["00000-7-a cat-before-face-restoration.png", "00001-7-a cat.png",
                     "00002-8-a cat-before-face-restoration.png", "00003-8-a cat.png"]
    assert np.array_equal(np.asarray(Image.open(paths[2]).convert("RGB")), np.asarray(before[1]))
    assert Image.open(paths[0]).info["parameters"] == "info 0"


def _saved(tmp_path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "outputs" / "txt2img-images").rglob("*.png"))


def test_txt2img_saves_the_image_before_restoration(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    payload = webuiapi_txt2img(seed=5, restore_faces=True, save_images=True, override_settings={
        "face_restoration_model": "GFPGAN", "save_images_before_face_restoration": True})
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    assert _saved(tmp_path) == ["00000-5-before-face-restoration.png", "00001-5.png"]


def test_no_before_file_without_the_option_or_without_restoration(client, tmp_path):
    _models_with_gfpgan(tmp_path)
    payload = webuiapi_txt2img(
        seed=5, restore_faces=True, save_images=True, override_settings={"face_restoration_model": "GFPGAN"}
    )
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    unrestored = webuiapi_txt2img(
        seed=6, save_images=True, override_settings={"save_images_before_face_restoration": True}
    )
    assert client.post("/sdapi/v1/txt2img", json=unrestored).status_code == 200
    assert _saved(tmp_path) == ["00000-5.png", "00001-6.png"]


def test_first_pass_pictures_go_before_their_batch(tmp_path):
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    result = JobResult(images=[GeneratedImage(image=image, seed=7 + i, subseed=0, prompt="a", negative_prompt="")
                               for i, image in enumerate(images)])
    firsts = [Image.new("RGB", (4, 4), (0, i * 50, 0)) for i in range(4)]
    job = type("Facts", (), {"batch_size": 2})()
    options = {"outdir_txt2img_samples": "out", "save_to_dirs": False, "samples_filename_pattern": "[seed]"}
    paths = save_samples(result, [f"info {i}" for i in range(4)], options, tmp_path, TXT2IMG_SAMPLES, job=job,
                         before_hires=firsts, before_restoration=images[:1])
    names = [path.name for path in paths]
    assert names == ["00000-7-before-highres-fix.png", "00001-8-before-highres-fix.png",
                     "00002-7-before-face-restoration.png", "00003-7.png", "00004-8.png",
                     "00005-9-before-highres-fix.png", "00006-10-before-highres-fix.png", "00007-9.png", "00008-10.png"]
    assert Image.open(paths[5]).size == (4, 4) and Image.open(paths[5]).info["parameters"] == "info 2"


def test_txt2img_hires_saves_the_first_pass(client, tmp_path):
    payload = webuiapi_txt2img(seed=5, save_images=True, enable_hr=True, hr_scale=1.5, steps=2, hr_second_pass_steps=1,
                               denoising_strength=0.5, override_settings={"save_images_before_highres_fix": True})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    saved = sorted((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))
    assert [path.name for path in saved] == ["00000-5-before-highres-fix.png", "00001-5.png"]
    assert Image.open(saved[0]).size == (64, 64) and Image.open(saved[1]).size == (96, 96)
    plain = webuiapi_txt2img(seed=6, save_images=True, enable_hr=True, hr_scale=1.5, steps=2, hr_second_pass_steps=1)
    assert client.post("/sdapi/v1/txt2img", json=plain).status_code == 200
    assert len(list((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))) == 3
