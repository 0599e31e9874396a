"""The engine's face restoration step: after decoding, before the inpainting overlay."""

from __future__ import annotations

from PIL import Image, ImageOps

from tests.engine.helpers import sampling_params
from webui_api.jobs import GeneratedImage, GenerationJob, Img2ImgParams, JobResult, SeedParams


def _job(overlays=()) -> GenerationJob:
    params = Img2ImgParams(init_images=(Image.new("RGB", (8, 8)),), denoising_strength=0.5, overlays=overlays)
    return GenerationJob(
        kind="img2img", prompts=("p",), negative_prompts=("",), width=8, height=8, batch_size=1, n_iter=1,
        sampling=sampling_params("Euler", "automatic", steps=2, cfg_scale=7.0), seeds=SeedParams((1,), (2,)),
        img2img=params, restore_faces=True,
    )


def test_restoration_runs_before_the_overlay():
    from webui_api.engine.facade import restore_result_faces, without_overlays

    overlay = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    overlay.paste(Image.new("RGBA", (4, 8), (10, 20, 30, 255)), (0, 0))  # left half kept from the original
    job = _job((overlay,))
    assert without_overlays(job).img2img.overlays == () and job.img2img.overlays == (overlay,)
    result = JobResult([GeneratedImage(Image.new("RGB", (8, 8), (100, 100, 100)), 1, 2, "p", "")])
    restore_result_faces(result, job, ImageOps.invert)
    image = result.images[0].image.convert("RGB")
    assert image.getpixel((1, 1)) == (10, 20, 30)  # the overlay wins where it is opaque
    assert image.getpixel((6, 1)) == (155, 155, 155)  # restored (inverted) elsewhere


def test_without_overlays_keeps_plain_jobs():
    from webui_api.engine.facade import without_overlays

    job = _job()
    assert without_overlays(job) is job
