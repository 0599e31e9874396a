"""First-use fetching for requests: which pinned files a job needs, fetched before it is queued.

A1111 downloads a missing upscaler or face restorer inside the job. Here the route (or the
generation layer) awaits the download before queueing, in a thread, so the worker keeps
running other jobs and a refusal (offline, unverified, a bad mirror) is a clear 4xx before
any work. Face restoration's parser is optional (without it the paste uses a soft mask):
it is fetched when downloads are allowed and silently skipped otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webui_api.errors import ApiError
from webui_api.weights.fetcher import WeightsFetcher

log = logging.getLogger(__name__)
PARSER_WEIGHTS = "facexlib parsing"
DETECTOR_WEIGHTS = "facexlib detection"


@dataclass(frozen=True)
class NeededWeights:
    """Registry names a request needs (`required`) and would like (`optional`)."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def __add__(self, other: NeededWeights) -> NeededWeights:
        return NeededWeights(tuple(dict.fromkeys(self.required + other.required)),
                             tuple(dict.fromkeys(self.optional + other.optional)))


def upscaler_weights(settings: Any, options: Mapping[str, Any] | None, names: Iterable[str | None]) -> NeededWeights:
    """The built-in upscaler files `names` need and lack ("None"/PIL names need nothing; an
    unknown name is the catalog's usual 400)."""
    from webui_api.postprocess.upscale import UpscalerCatalog

    wanted = [name for name in names if name not in (None, "", "None")]
    if not wanted:
        return NeededWeights()
    return NeededWeights(tuple(UpscalerCatalog.from_settings(settings, options=options).weights_needed(wanted)))


def face_weights(settings: Any, model: str | None) -> NeededWeights:
    """The files face restoration with `model` ("CodeFormer" / "GFPGAN") needs and lacks: the
    restorer, facexlib's detector, and (optionally) facexlib's parser. A user file that A1111
    would use (any *GFPGAN*.pth, a .safetensors, the MobileNet detector) counts as present."""
    from webui_api.postprocess.face_restore.restorers import FaceRestoreFolders, FaceRestorerUnavailable, find_kind

    kind = find_kind(model)
    folders = FaceRestoreFolders.from_settings(settings)
    required = []
    for name, lookup in ((kind.name, folders.model_file), (DETECTOR_WEIGHTS, folders.detector_file)):
        try:
            lookup(kind)
        except FaceRestorerUnavailable:
            required.append(name)
    optional = () if folders.parser_file(kind) is not None else (PARSER_WEIGHTS,)
    return NeededWeights(tuple(required), optional)


def job_weights(settings: Any, job: Any) -> NeededWeights:
    """What a GenerationJob needs: its hires pixel upscaler and, with restore_faces, the
    face restoration files of its face_restoration_model."""
    needed = NeededWeights()
    hires = getattr(job, "hires", None)
    if hires is not None and getattr(hires, "latent_mode", None) is None:
        needed += upscaler_weights(settings, job.options, [hires.upscaler])
    if getattr(job, "restore_faces", False):
        needed += face_weights(settings, str(job.options.get("face_restoration_model") or "CodeFormer"))
    if getattr(job, "preview_every_n_steps", 1) > 0:
        needed += preview_weights(settings, str(job.options.get("show_progress_type") or DEFAULT_PREVIEW_TYPE))
    return needed


DEFAULT_PREVIEW_TYPE = "Approx NN"  # A1111's default show_progress_type
# Registry name -> (folder, file) per preview kind, SD1/SD2 and SDXL latent spaces.
PREVIEW_WEIGHTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "TAESD": (("taesd_decoder", "VAE-taesd", "taesd_decoder.pth"),
              ("taesdxl_decoder", "VAE-taesd", "taesdxl_decoder.pth")),
    "Approx NN": (("vaeapprox-sd1", "VAE-approx", "model.pt"),
                  ("vaeapprox-sdxl", "VAE-approx", "vaeapprox-sdxl.pt")),
}


def preview_weights(settings: Any, preview_type: str = "TAESD") -> NeededWeights:
    """Live previews of `preview_type` ("TAESD", "Approx NN"): the decoders missing from their
    folder, optional (without them the preview is "Approx cheap", never an error)."""
    wanted = PREVIEW_WEIGHTS.get(preview_type, ())
    return NeededWeights(optional=tuple(name for name, folder, filename in wanted
                                        if not (settings.models_dir / folder / filename).is_file()))


def extras_weights(settings: Any, options: Mapping[str, Any] | None, params: Any) -> NeededWeights:
    """What an extras request (postprocess.extras.ExtrasParams) needs: its upscalers (the
    second only when it is blended in) and the face restorers it gives a visibility."""
    upscalers = [params.upscaler_1]
    if params.extras_upscaler_2_visibility > 0:
        upscalers.append(params.upscaler_2)
    needed = upscaler_weights(settings, options, upscalers)
    for model, visibility in (("GFPGAN", params.gfpgan_visibility), ("CodeFormer", params.codeformer_visibility)):
        if visibility > 0:
            needed += face_weights(settings, model)
    return needed


async def prefetch(fetcher: WeightsFetcher | None, needed: NeededWeights) -> None:
    """Fetch what is needed, off the event loop; a refusal or failed download of a required
    file is raised (a 4xx/502 naming the file, folder and fetch command), an optional one is
    skipped (refused) or logged (failed): the job runs without it."""
    if fetcher is None or not (needed.required or needed.optional):
        return
    optional = [name for name in needed.optional if _fetchable(fetcher, name)]
    await asyncio.gather(*(fetcher.ensure_async(name) for name in needed.required),
                         *(_fetch_optional(fetcher, name) for name in optional))


async def _fetch_optional(fetcher: WeightsFetcher, name: str) -> None:
    """Fetch an optional file; a failure is logged and remembered, so later jobs do not retry it."""
    try:
        await fetcher.ensure_async(name)
    except ApiError as err:
        fetcher.give_up(name)
        log.warning("optional weights %s not fetched, running without them (not retried until restart; "
                    "`webui-api models fetch` fetches it): %s", name, err.detail)


def check_fetchable(fetcher: WeightsFetcher | None, needed: NeededWeights) -> None:
    """Raise the 4xx `prefetch` would raise for a required file, without downloading anything:
    what an async task checks when it is submitted (a task is accepted only when its files are
    present or may be fetched when it runs, e.g. never while --offline and a file is missing)."""
    if fetcher is None:
        return
    for name in needed.required:
        fetcher.check_fetchable(name)


def _fetchable(fetcher: WeightsFetcher, name: str) -> bool:
    if fetcher.gave_up(name):
        return False
    try:
        fetcher.check_fetchable(name)
    except ApiError:
        return False
    return True
