"""A finished job's files and answer: save_images' samples and grid, and A1111's response body.

Both run off the event loop and off the worker (the device moves on to the next job while
this one's PNGs are written, and /progress polls stay instant). The model facts of the
infotext come from the result itself (`JobResult.model_info`), the model the job ran on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..jobs import GenerationJob, JobResult
from ..results import build_info, build_infotexts, encode_images
from ..runtime import Runtime


def save_outputs(
    runtime: Runtime, job: GenerationJob, result: JobResult, request: Any = None, restorer: Any = None,
    first_pass: list[Any] | None = None,
) -> Any:
    """save_images: true writes samples (and the grid) under the data dir as A1111 does, in the
    txt2img or img2img folders; returns the grid when A1111 would return it first
    (return_grid), else None."""
    from ..postprocess import saving
    from ..postprocess.grid import grid_shape, image_grid, wants_grid

    infotexts = build_infotexts(job, result, result.ran_on)
    options, data_dir = job.options, runtime.settings.data_dir
    img2img = job.kind == "img2img"
    facts = saving.job_name_facts(job, result.ran_on, result, tuple(getattr(request, "styles", None) or ()))
    samples, grids = (
        (saving.IMG2IMG_SAMPLES, saving.IMG2IMG_GRIDS) if img2img else (saving.TXT2IMG_SAMPLES, saving.TXT2IMG_GRIDS)
    )
    before = tuple(getattr(restorer, "originals", ()))  # save_images_before_face_restoration
    saving.save_samples(result, infotexts, options, data_dir, samples, job=facts, before_restoration=before,
                        before_hires=tuple(first_pass or ()))
    if not result.images or not wants_grid(len(result.images), options):
        return None
    grid = image_grid([g.image for g in result.images], grid_shape(len(result.images), job.batch_size, options))
    if options.get("grid_save", True):
        saving.save_grid(grid, result, infotexts[0], options, data_dir, grids, job=facts)
    return grid if options.get("return_grid", True) else None


def build_response(request: Any, job: GenerationJob, result: JobResult, grid: Any = None) -> dict[str, Any]:
    """A1111's {images, parameters, info}. A grid goes first, with the first image's infotext,
    as A1111's index_of_first_image = 1 says. `request` is the echo (parameters) as sent back."""
    infotexts = build_infotexts(job, result, result.ran_on)
    images = encode_images(result, infotexts, job.options) if request.send_images else []
    if grid is not None:
        infotexts = [infotexts[0], *infotexts]
        images = [encode_grid(grid, job.options), *images] if request.send_images else images
    first = 1 if grid is not None else 0
    return {
        "images": images,
        "parameters": request.model_dump(),
        "info": build_info(job, result, result.ran_on, infotexts, request, index_of_first_image=first),
    }


def encode_grid(grid: Any, options: Mapping[str, Any]) -> str:
    """A1111 returns the grid without text chunks (its PIL info is empty), in samples_format."""
    from ..postprocess.encode import encode_image_base64, encoding_options

    return encode_image_base64(grid, str(options.get("samples_format", "png")).lower(), **encoding_options(options))


def img2img_echo(request: Any) -> Any:
    """img2img's `parameters`: without the init images and mask unless include_init_images."""
    return request if request.include_init_images else request.model_copy(update={"init_images": None, "mask": None})
