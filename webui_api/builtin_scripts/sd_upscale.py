"""A1111's "SD upscale" (img2img only): upscale, then redraw the image tile by tile.

script_args: [info (ignored), overlap, upscaler (index into /sdapi/v1/upscalers, or its
name), scale_factor]. The first init image is upscaled by `scale_factor` with the chosen
upscaler ("None" keeps it as is), cut into overlapping tiles of the request's width x height,
every tile goes through img2img (batch_size tiles per batch, seeds seed+i per batch as A1111
moves them), and the tiles are blended back. n_iter repeats the whole pass with seed + n;
each pass gives one image. The stitched images carry no PNG text (A1111's neither); their
infotext in `info` is the first tile's, with "SD upscale overlap" / "SD upscale upscaler".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ValidationFailed
from ..jobs import GenerationJob
from . import tiles as tiling
from .args import ArgSpec, bind, read_float, read_int, read_int_or_str
from .base import (
    JobOutcome,
    OutputImage,
    ScriptContext,
    ScriptOutput,
    ScriptRun,
    ScriptWorker,
    base_info,
    build_job,
    with_extra_params,
)

TITLE = "sd upscale"
INFO_HTML = (
    '<p style="margin-bottom:0.75em">Will upscale the image by the selected scale factor; '
    "use width and height sliders to set tile size</p>"
)
MAX_SCALE = 16.0


def arg_specs(ctx: ScriptContext | None = None) -> list[ArgSpec]:
    names = tuple(ctx.upscaler_names) if ctx is not None else ("None", "Lanczos", "Nearest")
    return [
        ArgSpec("", INFO_HTML, lambda value: value),
        ArgSpec("Tile overlap", 64, read_int, minimum=0, maximum=256, step=16),
        ArgSpec("Upscaler", names[0], read_int_or_str, choices=names),
        ArgSpec("Scale Factor", 2.0, read_float, minimum=1.0, maximum=4.0, step=0.05),
    ]


@dataclass(frozen=True)
class Settings:
    overlap: int
    upscaler: str
    scale: float


def read_settings(request: Any, ctx: ScriptContext) -> Settings:
    """The bound args, checked: an upscaler that exists, an overlap smaller than the tile,
    a positive scale (A1111 answers these with a 500 halfway through)."""
    _, overlap, upscaler, scale = bind(TITLE, arg_specs(ctx), request.script_args)
    if not 0 <= overlap < min(request.width, request.height):
        raise ValidationFailed(
            f"{TITLE}: tile overlap must be at least 0 and smaller than the tile "
            f"({request.width}x{request.height}, the request's width x height); received {overlap}"
        )
    if not 0 < scale <= MAX_SCALE:
        raise ValidationFailed(f"{TITLE}: scale factor must be above 0 and at most {MAX_SCALE}; received {scale}")
    return Settings(overlap, upscaler_name(upscaler, ctx.upscaler_names), scale)


def upscaler_name(choice: int | str, names: Sequence[str]) -> str:
    """An index into the upscaler list, or a name matched case-insensitively (as A1111 does)."""
    if isinstance(choice, int):
        if not 0 <= choice < len(names):
            raise ValidationFailed(
                f"{TITLE}: upscaler index {choice} is out of range; there are {len(names)}: {list(names)}"
            )
        return names[choice]
    for name in names:
        if name.lower() == choice.lower():
            return name
    raise ValidationFailed(f"{TITLE}: unknown upscaler {choice!r}; known: {list(names)}")


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    settings: Settings
    source: Any  # the flattened first init image (PIL), before upscaling
    base: GenerationJob  # the request's img2img job: prompts, sampler, seeds, options
    batch_size: int
    n_iter: int


def plan(request: Any, ctx: ScriptContext) -> ScriptRun:
    if ctx.tab != "img2img":
        raise ValidationFailed(f"Script '{request.script_name}' not found")
    if request.mask:
        raise ValidationFailed(f"{TITLE} redraws the whole image tile by tile; it does not take a mask")
    settings = read_settings(request, ctx)
    request = request.model_copy(update={"init_images": list(request.init_images or [])[:1]})
    base = build_job("img2img", request, ctx.options, ctx.styles, ctx.rng, guard=ctx.check_job)
    work = Plan(settings, _source_image(request, ctx), base, request.batch_size, request.n_iter)
    tile_count = _tile_count(work)
    ctx.charge(tile_work(base, tile_count * work.n_iter))  # the tiles are the jobs that run, not `base`
    batches = math.ceil(tile_count / work.batch_size)
    return ScriptRun(
        job_count=batches * work.n_iter, execute=lambda worker: _execute(worker, work, request), first_job=base
    )


def tile_work(base: GenerationJob, tiles: int) -> Any:
    """The whole-script budget's share of `tiles` redrawn tiles (one image each, at the job's size)."""
    from ..serving.script_budget import JobWork

    return JobWork(tiles, tiles * base.sampling.steps * base.width * base.height / 1_000_000)


def _source_image(request: Any, ctx: ScriptContext) -> Any:
    """The first init image as sent (not resized to the job size), flattened like A1111's."""
    from ..engine.image_prep import check_pixels, flatten
    from ..postprocess.encode import decode_image_base64

    image = decode_image_base64(request.init_images[0])
    check_pixels(image, "init image")
    return flatten(image, str(ctx.options.get("img2img_background_color") or "#ffffff"))


def upscaled_size(work: Plan) -> tuple[int, int]:
    """A1111's Upscaler.upscale target: size * scale rounded down to a multiple of 8 ("None"
    leaves the image untouched)."""
    width, height = work.source.size
    if work.settings.upscaler == "None":
        return width, height
    return int(width * work.settings.scale // 8 * 8), int(height * work.settings.scale // 8 * 8)


def _tile_count(work: Plan) -> int:
    from ..pixel_budget import check_image_pixels

    width, height = upscaled_size(work)
    check_image_pixels(f"{TITLE}: the upscaled image", width, height)  # the one image pixel budget
    if width < 1 or height < 1:
        raise ValidationFailed(f"{TITLE}: the upscaled image would be {width}x{height}")
    overlap, job = work.settings.overlap, work.base
    return len(tiling.origins(width, job.width, overlap)) * len(tiling.origins(height, job.height, overlap))


# --------------------------------------------------------------------------- running


def _execute(worker: ScriptWorker, work: Plan, request: Any) -> ScriptOutput:
    image = work.source
    if work.settings.upscaler != "None":
        image = worker.upscale(image, work.settings.upscaler, work.settings.scale)
    grid = tiling.split(image, work.base.width, work.base.height, work.settings.overlap)
    sources = grid.tiles  # every pass redraws the upscaled tiles, not the previous pass's
    outputs, first = [], None
    for n in range(work.n_iter):
        results, first_of_pass = _redraw(worker, work, sources, work.base.seeds.seeds[0] + n)
        first = first or first_of_pass
        grid.replace_tiles(results)
        outputs.append(tiling.combine(grid))
        if worker.interrupted:
            break
    assert first is not None  # n_iter >= 1: at least one pass ran
    return _output(work, first, outputs, request)


def _redraw(worker: ScriptWorker, work: Plan, tiles: list[Any], seed: int) -> tuple[list[Any], JobOutcome]:
    """img2img over every tile, batch_size at a time; A1111 starts batch i at seed + i."""
    results: list[Any] = []
    first = None
    for i, start in enumerate(range(0, len(tiles), work.batch_size)):
        outcome = worker.run(tile_job(work.base, tiles[start:start + work.batch_size], seed + i))
        first = first or outcome
        results += [done.image for done in outcome.result.images]
        if worker.interrupted:
            break
    assert first is not None  # there is always at least one tile
    return results, first


def tile_job(base: GenerationJob, batch: list[Any], seed: int) -> GenerationJob:
    """The base img2img job over one batch of tiles (already the job size)."""
    if base.img2img is None:
        raise ValueError("sd upscale redraws tiles with an img2img job")
    count = len(batch)
    seeds = base.seeds
    same = seeds.subseed_strength != 0  # variation seeds keep one seed for the whole batch
    return replace(
        base,
        prompts=(base.prompts[0],) * count,
        negative_prompts=(base.negative_prompts[0],) * count,
        batch_size=count,
        n_iter=1,
        seeds=replace(
            seeds,
            seeds=tuple(seed + (0 if same else k) for k in range(count)),
            subseeds=tuple(seeds.subseeds[0] + k for k in range(count)),
        ),
        img2img=replace(base.img2img, init_images=tuple(batch)),
    )


def _output(work: Plan, first: JobOutcome, images: list[Any], request: Any) -> ScriptOutput:
    """One image per pass, all with the first tile's infotext plus the script's keys."""
    keys = {"SD upscale overlap": work.settings.overlap, "SD upscale upscaler": work.settings.upscaler}
    first = with_extra_params(first, keys, first=True)
    infotext = first.infotexts()[0]
    infotexts = [infotext] * len(images)
    info = base_info(first, request, infotexts)
    info["seed"] = work.base.seeds.seeds[0]
    seed, prompt = work.base.seeds.seeds[0], work.base.prompts[0]
    outputs = [
        OutputImage(image, infotext, embed=False, seed=seed + n, prompt=prompt) for n, image in enumerate(images)
    ]
    return ScriptOutput(outputs, info)
