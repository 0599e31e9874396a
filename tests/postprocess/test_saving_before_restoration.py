"""Option save_images_before_face_restoration: with save_images, each decoded image is also
saved before restoration with A1111's "-before-face-restoration" suffix, numbered just
before its restored image (A1111 saves in that order)."""

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
    result = JobResult(images=[GeneratedImage(image=image, seed=7 + i, subseed=0, prompt="a cat", negative_prompt="") for i, image in enumerate(images)])
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
    payload = webuiapi_txt2img(seed=5, restore_faces=True, save_images=True, override_settings={"face_restoration_model": "GFPGAN"})
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    unrestored = webuiapi_txt2img(seed=6, save_images=True, override_settings={"save_images_before_face_restoration": True})
    assert client.post("/sdapi/v1/txt2img", json=unrestored).status_code == 200
    assert _saved(tmp_path) == ["00000-5.png", "00001-6.png"]
