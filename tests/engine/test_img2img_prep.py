"""img2img pieces without the HTTP layer: A1111's resize modes, count rules, step rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui_api.engine.image_prep import (
    MAX_INIT_PIXELS,
    TargetSize,
    batch_init_images,
    check_pixels,
    flatten,
    prepare_init_image,
    resize_image,
)
from webui_api.errors import BadRequest


def stripes(width: int, height: int) -> Image.Image:
    """Red top row, blue bottom row, green elsewhere: shows where edge rows are stretched."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 1] = 255
    pixels[0] = (255, 0, 0)
    pixels[-1] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_every_mode_gives_the_target_size(mode):
    assert resize_image(mode, stripes(100, 40), TargetSize(64, 48)).size == (64, 48)


def test_latent_upscale_mode_keeps_the_pixels():
    image = prepare_init_image(stripes(100, 40), 3, TargetSize(64, 48), "#ffffff")
    assert image.size == (100, 40)


def test_crop_and_resize_crops_the_wide_source_sides():
    source = np.zeros((40, 100, 3), np.uint8)
    source[:, :10] = 255  # a white band on the far left is cropped away
    out = np.asarray(resize_image(1, Image.fromarray(source), TargetSize(64, 64)))
    assert out[:, :4].max() == 0


def test_resize_and_fill_stretches_edge_rows_into_the_bars():
    out = np.asarray(resize_image(2, stripes(100, 40), TargetSize(64, 64)))
    # the wide source fits 64x25 in the middle; the bars above and below copy its edge rows
    assert out[0, 32, 0] > 150 and out[0, 32, 1] < 100  # red-ish top bar
    assert out[-1, 32, 2] > 150 and out[-1, 32, 1] < 100  # blue-ish bottom bar


def test_flatten_composites_transparency_over_the_background():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert flatten(clear, "#ff0000").getpixel((1, 1)) == (255, 0, 0)
    with pytest.raises(BadRequest, match="not a colour"):
        flatten(clear, "nonsense")


def test_count_rules():
    one, two = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (1, 1, 1))
    assert batch_init_images([one], 3) == ([one, one, one], 3)
    assert batch_init_images([one, two], 4) == ([one, two], 2)
    with pytest.raises(BadRequest, match="bad number of images"):
        batch_init_images([one, two, one], 2)
    with pytest.raises(BadRequest, match="empty"):
        batch_init_images([], 1)


def test_images_over_the_pixel_limit_are_refused():
    side = int(MAX_INIT_PIXELS**0.5)
    with pytest.raises(BadRequest, match="pixels"):
        check_pixels(Image.new("1", (side + 1, side)), "init image")


def test_img2img_steps_follow_a1111():
    from webui_api.engine.img2img import img2img_steps

    default = img2img_steps(20, 0.75, fix_steps=False)
    assert (default.steps, default.t_enc, default.start_index) == (20, 15, 4)
    full = img2img_steps(20, 1.0, fix_steps=False)
    assert (full.t_enc, full.start_index) == (19, 0)
    zero = img2img_steps(20, 0.0, fix_steps=False)
    assert (zero.t_enc, zero.start_index) == (0, 19)
    fixed = img2img_steps(20, 0.5, fix_steps=True)
    assert (fixed.steps, fixed.t_enc, fixed.start_index) == (40, 19, 20)
    hires = img2img_steps(20, 0.7, fix_steps=True)
    assert (hires.steps, hires.start_index) == (28, 8)  # internals' example
    assert img2img_steps(20, 0.0, fix_steps=True).steps == 0  # nothing to sample


def img2img_job(strength: float, steps: int = 8, **kwargs):
    from dataclasses import replace

    from tests.engine.helpers import make_job
    from webui_api.jobs import Img2ImgParams

    x = np.linspace(0, 255, 64, dtype=np.uint8)
    image = Image.fromarray(
        np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], 2)
    )
    params = Img2ImgParams(init_images=(image,), denoising_strength=strength, **kwargs)
    return replace(make_job(steps=steps), kind="img2img", img2img=params)


def run_img2img_job(model, job):
    from tests.engine.helpers import RecordingObserver
    from webui_api.engine.img2img import run_img2img
    from webui_api.progress import CancelToken

    observer = RecordingObserver()
    return run_img2img(model, job, observer, CancelToken()), observer


def test_sampler_runs_t_enc_plus_one_steps(tiny_model):
    for strength, expected in ((0.75, 7), (1.0, 8), (0.0, 1)):
        _, observer = run_img2img_job(tiny_model, img2img_job(strength))
        assert len([e for e in observer.events if e[0] == "step"]) == expected, strength


def test_strength_zero_stays_closer_to_the_encoded_init_image(tiny_model):
    """Strength 0 still runs one step at the lowest sigma, as A1111 does; on the random tiny
    model that step is not negligible, so only "closer than strength 1" is asserted."""
    import torch

    from webui_api.engine.img2img import init_latents
    from webui_api.engine.latents import decode_latents

    job = img2img_job(0.0)
    result, _ = run_img2img_job(tiny_model, job)
    with torch.inference_mode():
        reference = decode_latents(tiny_model, init_latents(tiny_model, job, job.img2img))[0]
    got, want = np.asarray(result.images[0].image, np.float32), np.asarray(reference, np.float32)
    strong = np.asarray(run_img2img_job(tiny_model, img2img_job(1.0))[0].images[0].image, np.float32)
    assert np.abs(got - want).mean() < 0.75 * np.abs(strong - want).mean()


def test_noise_multiplier_changes_the_image_and_the_infotext(tiny_model):
    plain, _ = run_img2img_job(tiny_model, img2img_job(0.5))
    damped, _ = run_img2img_job(tiny_model, img2img_job(0.5, initial_noise_multiplier=0.5))
    assert not np.array_equal(np.asarray(plain.images[0].image), np.asarray(damped.images[0].image))
    assert damped.extra_generation_params == {"Denoising strength": 0.5, "Noise multiplier": 0.5}


def test_txt2img_job_is_refused_by_run_img2img(tiny_model):
    from tests.engine.helpers import make_job

    with pytest.raises(BadRequest, match="img2img job"):
        run_img2img_job(tiny_model, make_job())
