"""Turn a validated txt2img request plus the options into a frozen `GenerationJob`.

Every A1111 default and quirk that can be settled before the worker runs is settled here,
once: the `infotext` field (fields not sent are filled from it), styles merged into the
prompts, random seeds, sampler/scheduler names (legacy "DPM++ 2M Karras" split), per-job
option overrides, options that beat request fields (s_churn & co.), script checks, and the
prompt checks that are cheap enough for the event loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from .controlnet.units import controlnet_units
from .engine_options import EngineOptions
from .errors import BadRequest, NotImplementedFeature, ValidationFailed
from .jobs import GenerationJob, HiresParams, Img2ImgParams, RefinerParams, SamplingParams, SeedParams
from .schemas.generation import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from .styles import PromptStyle, apply_styles, read_styles

if TYPE_CHECKING:  # the sampler registry imports torch: looked up only when a job is built
    from samplers.registry import SamplerInfo, SchedulerInfo

log = logging.getLogger(__name__)

MAX_SEED = 4294967294  # A1111 draws random seeds with randrange(4294967294)


@dataclass(frozen=True)
class ResolvedSampler:
    """The registry entries of the sampler and scheduler a job runs with (see SamplingParams)."""

    sampler: SamplerInfo
    schedule: SchedulerInfo


_Value = TypeVar("_Value")


def given(value: _Value | None, field: str) -> _Value:
    """A request field A1111's schema marks Optional but that means nothing as null (a size, a
    count, steps): a 400 naming it instead of a TypeError deep in the build."""
    if value is None:
        raise BadRequest(f"{field} must not be null")
    return value


def resolve_seed(value: Any, rng: random.Random) -> int:
    """A1111's get_fixed_seed: None, "" and -1 mean random; strings are parsed."""
    if value is None or value == "":
        value = -1
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = -1
    if value == -1:
        return rng.randrange(MAX_SEED)
    return int(value)


A1111_DEFAULT_SAMPLER = "DPM++ 2M"  # A1111's samplers[0]: what an unknown sampler name becomes


def resolve_sampler(request: GenerationRequest) -> ResolvedSampler:
    """Resolve names like A1111's API does: an unknown sampler becomes DPM++ 2M and an unknown
    scheduler Automatic (A1111's get_sampler_and_scheduler fallbacks, logged as a warning)."""
    from samplers import registry

    name = request.sampler_name or request.sampler_index or "Euler"
    scheduler_name = _known_scheduler_or_none(request.scheduler)
    try:
        try:
            sampler, split_scheduler = registry.resolve_sampler_and_scheduler(name, scheduler_name)
        except registry.UnknownSamplerError:
            log.warning("Sampler %r not found; using %s (as A1111)", name, A1111_DEFAULT_SAMPLER)
            sampler, split_scheduler = registry.resolve_sampler_and_scheduler(A1111_DEFAULT_SAMPLER, scheduler_name)
    except registry.UnknownSchedulerError as exc:
        raise ValidationFailed(str(exc)) from exc
    if sampler.function is None:
        available = ", ".join(s.name for s in registry.implemented_samplers())
        raise ValidationFailed(f"Sampler {sampler.name!r} is not implemented yet; available: {available}")
    explicit = registry.find_scheduler(scheduler_name) if scheduler_name else None  # as sent, even the default
    return ResolvedSampler(sampler, explicit or split_scheduler)


def _known_scheduler_or_none(name: Any) -> Any:
    """A string naming no scheduler means Automatic in A1111 (None here); other types stay, to be refused."""
    from samplers import registry

    if isinstance(name, str) and name.strip() and registry.find_scheduler(name.strip()) is None:
        log.warning("Scheduler %r not found; using Automatic (as A1111)", name)
        return None
    return name


def check_scripts(request: GenerationRequest, tab: str | None = None) -> None:
    """A1111's script checks: unknown selectable script or always-on script -> 422.

    Known names are the script catalog's entries for the tab. Clients send `{"args": []}`
    or `{"args": [false]}` for an extension they want off; such an entry is a no-op rather
    than an error, whatever its name.
    """
    from .script_catalog import is_known

    tab = tab or ("img2img" if isinstance(request, Img2ImgRequest) else "txt2img")
    if request.script_name and not is_known(request.script_name, tab, selectable=True):
        raise ValidationFailed(f"Script '{request.script_name}' not found")
    for name, entry in (request.alwayson_scripts or {}).items():
        if _is_disabled_entry(entry):
            continue
        if is_known(name, tab, selectable=True):
            raise ValidationFailed("Cannot have a selectable script in the always on scripts params")
        if not is_known(name, tab, selectable=False):
            raise ValidationFailed(f"always on script {name} not found")


def _is_disabled_entry(entry: Any) -> bool:
    args = entry.get("args") if isinstance(entry, Mapping) else entry
    return not args or list(args) == [False]


def expand_prompts(value: str | list[str] | None, count: int, field: str) -> tuple[str, ...]:
    """A string is repeated for every image; a list must name one prompt per image."""
    if value is None:
        value = ""
    if isinstance(value, str):
        return (value,) * count
    if len(value) != count:
        raise BadRequest(f"{field} has {len(value)} entries but the job makes {count} images (batch_size x n_iter)")
    return tuple(value)


def _option_wins(option_value: float, sampler_default: float) -> bool:
    return option_value != sampler_default


def resolve_churn(request: GenerationRequest, options: Mapping[str, Any]) -> dict[str, float]:
    """s_churn/s_tmin/s_tmax/s_noise: request (or option when null), then a non-default option wins."""
    inf = float("inf")
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": inf, "s_noise": 1.0}
    resolved = {}
    for key, default in defaults.items():
        requested = getattr(request, key)
        value = float(options.get(key, 0.0) if requested is None else requested)
        option_value = float(options.get(key, default if key != "s_tmax" else 0.0))
        if key == "s_tmax":
            value = inf if value == 0 else value
            option_value = inf if option_value == 0 else option_value
        resolved[key] = option_value if _option_wins(option_value, default) else value
    return resolved


def job_timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now()).strftime("%Y%m%d%H%M%S")


def refiner_params(request: GenerationRequest) -> RefinerParams | None:
    """A1111's refiner fields: no checkpoint, "" or "None" means no refiner; a null
    refiner_switch_at switches at the very first model call, as A1111's check is skipped
    then. The name is resolved against the catalog by the engine (unknown names: 404)."""
    name = request.refiner_checkpoint
    if name is None or name.strip() in ("", "None", "none"):
        return None
    switch_at = 0.0 if request.refiner_switch_at is None else float(request.refiner_switch_at)
    return RefinerParams(checkpoint_title=name, switch_at=switch_at)


def build_txt2img(
    request: Txt2ImgRequest,
    options: Mapping[str, Any],
    rng: random.Random | None = None,
    styles: Sequence[PromptStyle] = (),
) -> GenerationJob:
    """Step 2 of a request's journey: everything resolved, nothing left for the worker to guess.

    `styles` are the server's styles.csv entries (the request's `styles` name them)."""
    rng = rng or random.Random()
    check_scripts(request)
    first_pass = first_pass_request(request)
    job = replace(build_txt2img_like(first_pass, options, rng, styles), refiner=refiner_params(request))
    if not request.enable_hr:
        return job
    return replace(job, hires=hires_params(first_pass, job, options, styles))


# ---------------------------------------------------------------------------
# Hires fix
# ---------------------------------------------------------------------------

# hr_upscaler names that upscale in latent space: (torch interpolate mode, antialias)
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")


def first_pass_request(request: Txt2ImgRequest) -> Txt2ImgRequest:
    """Legacy firstphase_width/height: the first pass runs at that size and width x height
    becomes the hires target (as hr_resize_x/y)."""
    if not request.enable_hr or not (request.firstphase_width or request.firstphase_height):
        return request
    return request.model_copy(update={
        "width": request.firstphase_width or request.width, "height": request.firstphase_height or request.height,
        "hr_resize_x": request.width, "hr_resize_y": request.height,
    })


@dataclass(frozen=True)
class HiresTarget:
    """A1111's calculate_target_resolution: the upscale size and the latent crop."""

    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0


def hires_target(request: Txt2ImgRequest) -> HiresTarget:
    width, height = given(request.width, "width"), given(request.height, "height")
    rx, ry = int(request.hr_resize_x or 0), int(request.hr_resize_y or 0)
    if rx == 0 and ry == 0:
        scale = float(request.hr_scale if request.hr_scale is not None else 2.0)
        return HiresTarget(int(width * scale), int(height * scale))
    if ry == 0:
        return HiresTarget(rx, rx * height // width)
    if rx == 0:
        return HiresTarget(ry * width // height, ry)
    cover = HiresTarget(rx, rx * height // width) if width / height < rx / ry else HiresTarget(ry * width // height, ry)
    return replace(cover, truncate_x=(cover.width - rx) // 8, truncate_y=(cover.height - ry) // 8)


def hires_upscaler(request: Txt2ImgRequest) -> tuple[str, tuple[str, bool] | None]:
    """The upscaler's name and its latent mode (None for a pixel upscaler). Pixel upscalers
    other than the built-ins are model files (ESRGAN & co.) the engine finds in its upscaler
    catalog; a name it does not have is a 400 listing what it has, before any sampling."""
    name = request.hr_upscaler if request.hr_upscaler is not None else "Latent"
    if name in LATENT_UPSCALE_MODES:
        return name, LATENT_UPSCALE_MODES[name]
    if not name.strip():
        known = ", ".join((*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS))
        raise BadRequest(f"hr_upscaler must name an upscaler, received {name!r}; built-in ones: {known}")
    return name, None


def hires_request(request: Txt2ImgRequest) -> Txt2ImgRequest:
    """The request as the second pass sees it: hires sampler/scheduler, steps and prompts."""
    sampler = request.hr_sampler_name
    if sampler in (None, "", "Use same sampler"):
        sampler = request.sampler_name or request.sampler_index
    scheduler = request.hr_scheduler
    if scheduler in (None, "", "Use same scheduler"):
        scheduler = request.scheduler
    return request.model_copy(update={
        "sampler_name": sampler, "sampler_index": sampler, "scheduler": scheduler,
        "steps": int(request.hr_second_pass_steps or 0) or request.steps,
        "prompt": request.hr_prompt or request.prompt,
        "negative_prompt": request.hr_negative_prompt or request.negative_prompt,
        "distilled_cfg_scale": request.hr_distilled_cfg if request.hr_distilled_cfg is not None else 3.5,
        "cfg_scale": request.hr_cfg if request.hr_cfg is not None else request.cfg_scale,
    })


USE_SAME_MODULES = "Use same choices"  # Forge's hr_additional_modules entry (its UI default)


def hires_module_infotext(request: Txt2ImgRequest, job: GenerationJob) -> tuple[tuple[str, Any], ...]:
    """Forge's "Hires Module N" keys for `hr_additional_modules`, checked against the job.

    Forge (processing.py init) writes them whenever the field is a list: [] as "Hires Module 1:
    Built-in", a list holding "Use same choices" as that phrase, else each entry's file name
    without extension; and it reloads the model with that module set for the second pass. We
    run the second pass on the first pass's modules, so a list naming another set than the job's
    forge_additional_modules is a 400 naming the field rather than an image made otherwise."""
    modules = request.hr_additional_modules
    if modules is None:
        return ()
    if USE_SAME_MODULES in modules:
        return (("Hires Module 1", USE_SAME_MODULES),)
    stems = [_module_stem(name) for name in modules]
    current = [_module_stem(name) for name in job.engine_options.forge_additional_modules]
    if sorted(stems) != sorted(current):
        raise BadRequest(
            f"hr_additional_modules {list(modules)!r} differs from the job's forge_additional_modules "
            f"{list(job.engine_options.forge_additional_modules)!r}: a different VAE / text encoder set for the "
            f"hires pass is not supported; send [{USE_SAME_MODULES!r}] or the same modules"
        )
    if not stems:
        return (("Hires Module 1", "Built-in"),)
    return tuple((f"Hires Module {index}", stem) for index, stem in enumerate(stems, start=1))


def _module_stem(name: str) -> str:
    """Forge's os.path.splitext(os.path.basename(name))[0], for either path separator."""
    return PurePath(str(name).replace("\\", "/")).stem


def hires_params(
    request: Txt2ImgRequest, job: GenerationJob, options: Mapping[str, Any], styles: Sequence[PromptStyle]
) -> HiresParams:
    """Everything the hires pass needs; denoising_strength null means A1111's 0.75."""
    target = hires_target(request)
    if target.width < 8 or target.height < 8:
        raise BadRequest(f"hires target {target.width}x{target.height} is too small (hr_scale / hr_resize_x/y)")
    name, latent = hires_upscaler(request)
    second = hires_request(request)
    prompts, negatives = styled_prompts(second, job.image_count, styles)
    check_prompts(prompts, negatives, options)
    strength = 0.75 if request.denoising_strength is None else float(request.denoising_strength)
    sampling = _sampling_params(second, resolve_sampler(second), options)
    return HiresParams(
        upscale_width=target.width, upscale_height=target.height, upscaler=name,
        latent_mode=latent[0] if latent else None, latent_antialias=bool(latent and latent[1]),
        steps=given(second.steps, "steps"), denoising_strength=strength, sampling=sampling, prompts=prompts,
        negative_prompts=negatives, truncate_x=target.truncate_x, truncate_y=target.truncate_y,
        infotext=hires_infotext(request, job, sampling, prompts, negatives),
        checkpoint_title=hires_checkpoint(request),
    )


def hires_checkpoint(request: Txt2ImgRequest) -> str | None:
    """hr_checkpoint_name: None, "" and "Use same checkpoint" keep the main checkpoint."""
    name = request.hr_checkpoint_name
    return None if name is None or name.strip() in ("", "Use same checkpoint") else name


def hires_infotext(
    request: Txt2ImgRequest,
    job: GenerationJob,
    sampling: SamplingParams,
    prompts: Sequence[str],
    negatives: Sequence[str],
) -> tuple[tuple[str, Any], ...]:
    """A1111's hires infotext keys in its order (hires prompts only when they differ), with
    Forge's "Hires Module N" first and "Hires CFG Scale" after the hires prompts (processing.py
    init), both only when the request sent their fields."""
    keys: list[tuple[str, Any]] = list(hires_module_infotext(request, job))
    if request.hr_sampler_name not in (None, "", "Use same sampler") and sampling.sampler != job.sampling.sampler:
        keys.append(("Hires sampler", sampling.sampler_name))
    if prompts[0] != job.prompts[0]:
        keys.append(("Hires prompt", prompts[0]))
    if negatives[0] != job.negative_prompts[0]:
        keys.append(("Hires negative prompt", negatives[0]))
    if request.hr_cfg is not None:
        keys.append(("Hires CFG Scale", float(request.hr_cfg)))  # Forge writes its own default, 1.0, always
    schedule_type = hires_schedule_type(job.sampling, sampling)
    if schedule_type is not None:
        keys.append(("Hires schedule type", schedule_type))
    if not (request.hr_resize_x or request.hr_resize_y):
        keys.append(("Hires upscale", float(request.hr_scale if request.hr_scale is not None else 2.0)))
    else:
        keys.append(("Hires resize", f"{request.hr_resize_x}x{request.hr_resize_y}"))
    if request.hr_second_pass_steps:
        keys.append(("Hires steps", int(request.hr_second_pass_steps)))
    if request.hr_upscaler is not None:
        keys.append(("Hires upscaler", request.hr_upscaler))
    return tuple(keys)


def hires_schedule_type(first: SamplingParams, second: SamplingParams) -> str | None:
    """A1111 writes "Hires schedule type" when the second pass's effective scheduler (Automatic
    resolved to the sampler's own) has a label other than the first pass's recorded "Schedule
    type" (recorded only when not Automatic); timestep samplers and the model's own schedule
    write nothing."""
    second_scheduler = _effective_scheduler(second)
    if second_scheduler is None:
        return None
    first_scheduler = _effective_scheduler(first)
    first_label = (
        first_scheduler.label if first_scheduler is not None and first_scheduler.label != "Automatic" else None
    )
    return second_scheduler.label if second_scheduler.label != first_label else None


def _effective_scheduler(sampling: SamplingParams) -> SchedulerInfo | None:
    from samplers import registry

    if sampling.sampler.kind == registry.KIND_TIMESTEPS:
        return None
    return registry.effective_scheduler(sampling.sampler, sampling.schedule)


@dataclass(frozen=True)
class PreparedInit:
    """Init images at the job size, plus what inpainting adds (None/empty without a mask)."""

    images: list[Any]
    mask: Any = None


def mask_settings(request: Img2ImgRequest) -> Any:
    """The request's mask fields; `mask_blur`, when sent, sets both directions (A1111)."""
    from .engine.masks import MaskSettings

    blur_x, blur_y = request.mask_blur_x, request.mask_blur_y
    if request.mask_blur is not None:
        blur_x = blur_y = request.mask_blur
    fill = int(request.inpainting_fill or 0)
    if fill not in (0, 1, 2, 3):
        raise BadRequest(
            f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing); received {fill}"
        )
    return MaskSettings(
        invert=bool(request.inpainting_mask_invert),
        blur_x=max(int(blur_x or 0), 0),
        blur_y=max(int(blur_y or 0), 0),
        round=bool(request.mask_round if request.mask_round is not None else True),
        fill=fill,
        full_res=bool(request.inpaint_full_res),
        full_res_padding=max(int(request.inpaint_full_res_padding or 0), 0),
    )


def prepare_init(request: Img2ImgRequest, options: Mapping[str, Any]) -> PreparedInit:
    """Decode, flatten and resize every init image (A1111's img2img init, pixel side), and
    prepare the mask when there is one."""
    from .engine.image_prep import TargetSize, check_pixels, flatten, resize_image
    from .engine.masks import prepare_mask
    from .postprocess.encode import decode_image_base64

    size = TargetSize(given(request.width, "width"), given(request.height, "height"))
    background = str(options.get("img2img_background_color") or "#ffffff")
    mode = int(request.resize_mode or 0)
    flats = []
    for data in request.init_images or []:
        image = decode_image_base64(data)
        check_pixels(image, "init image")
        flats.append(flatten(image, background))
    if request.mask:
        prepared = prepare_mask(decode_image_base64(request.mask), flats, mask_settings(request), mode, size)
        return PreparedInit(images=list(prepared.images), mask=prepared)
    return PreparedInit(images=[image if mode == 3 else resize_image(mode, image, size) for image in flats])


def img2img_params(
    request: Img2ImgRequest, options: Mapping[str, Any], images: list[Any], prepared: PreparedInit
) -> Img2ImgParams:
    """The img2img fields, with the option fallbacks A1111 uses."""
    strength = 0.75 if request.denoising_strength is None else float(request.denoising_strength)
    if not 0.0 <= strength <= 1.0:
        raise BadRequest(f"denoising_strength must be between 0 and 1, received {strength}")
    multiplier = request.initial_noise_multiplier
    if multiplier is None:
        multiplier = options.get("initial_noise_multiplier", 1.0)
    mask = prepared.mask if prepared.mask is not None and prepared.mask.mask is not None else None
    return Img2ImgParams(
        init_images=tuple(images),
        denoising_strength=strength,
        resize_mode=int(request.resize_mode or 0),
        initial_noise_multiplier=float(1.0 if multiplier is None else multiplier),
        extra_noise=float(options.get("img2img_extra_noise", 0.0) or 0.0),
        fix_steps=bool(options.get("img2img_fix_steps", False)),
        mask=None if mask is None else mask.mask,
        overlays=() if mask is None else _per_image(list(mask.overlays), len(images)),
        inpainting_fill=int(request.inpainting_fill or 0),
        mask_round=bool(request.mask_round if request.mask_round is not None else True),
        inpainting_mask_weight=float(options.get("inpainting_mask_weight", 1.0)),
        paste_to=None if mask is None else mask.paste_to,
        mask_infotext=() if prepared.mask is None else prepared.mask.infotext,
        image_cfg_scale=None if request.image_cfg_scale is None else float(request.image_cfg_scale),
    )


def _per_image(items: list[Any], count: int) -> tuple[Any, ...]:
    """A single item repeated for every image of the batch (A1111's overlay_images rule)."""
    return tuple(items * count if len(items) == 1 else items)


def build_img2img(
    request: Img2ImgRequest,
    options: Mapping[str, Any],
    rng: random.Random | None = None,
    styles: Sequence[PromptStyle] = (),
) -> GenerationJob:
    """An img2img job: the txt2img resolution plus decoded, resized init images (and the
    prepared mask). Decoding happens here, so a broken image is a 400 before anything is queued."""
    from .engine.image_prep import batch_init_images

    check_scripts(request, "img2img")
    prepared = prepare_init(request, options)
    images, batch_size = batch_init_images(prepared.images, given(request.batch_size, "batch_size"))
    request = request.model_copy(update={"batch_size": batch_size})
    job = build_txt2img_like(request, options, rng or random.Random(), styles)
    params = img2img_params(request, options, images, prepared)
    return replace(job, kind="img2img", img2img=params, refiner=refiner_params(request))


def job_engine_options(request: GenerationRequest, options: Mapping[str, Any]) -> EngineOptions:
    """The typed options the engine reads, plus the request's `disable_extra_networks` and the
    option names its override_settings set; an option with a value of the wrong type is a 400
    before anything is queued."""
    try:
        return EngineOptions.from_options(
            options,
            disable_extra_networks=bool(request.disable_extra_networks),
            overridden=tuple(request.override_settings or ()),
        )
    except ValueError as err:
        raise BadRequest(str(err)) from err


def build_txt2img_like(
    request: GenerationRequest, options: Mapping[str, Any], rng: random.Random, styles: Sequence[PromptStyle]
) -> GenerationJob:
    """The fields txt2img and img2img jobs share."""
    batch_size, n_iter = given(request.batch_size, "batch_size"), given(request.n_iter, "n_iter")
    count = batch_size * n_iter
    sampler = resolve_sampler(request)
    prompts, negative_prompts = styled_prompts(request, count, styles)
    check_prompts(prompts, negative_prompts, options)
    return GenerationJob(
        kind="txt2img",
        prompts=prompts,
        negative_prompts=negative_prompts,
        width=given(request.width, "width"),
        height=given(request.height, "height"),
        batch_size=batch_size,
        n_iter=n_iter,
        sampling=_sampling_params(request, sampler, options),
        seeds=_seed_params(request, options, count, rng),
        clip_skip=int(options.get("CLIP_stop_at_last_layers", 1) or 1),
        model_title=options.get("sd_model_checkpoint"),
        preview_every_n_steps=_preview_every(options),
        job_timestamp=job_timestamp(),
        options=dict(options),
        engine_options=job_engine_options(request, options),
        tiling=bool(request.tiling if request.tiling is not None else options.get("tiling", False)),
        controlnet_units=controlnet_units(request),
        restore_faces=bool(
            request.restore_faces if request.restore_faces is not None else options.get("face_restoration", False)
        ),
    )


def resolve_eta(request: GenerationRequest, sampler: SamplerInfo, options: Mapping[str, Any]) -> float | None:
    """The request's eta, else A1111's option fallback (eta_ancestral for k-diffusion
    samplers, eta_ddim for the DDIM family); None for samplers that take no eta."""
    option = sampler.eta_option  # None exactly when the sampler takes no eta
    if option is None:
        return None
    if request.eta is not None:
        return float(request.eta)
    return float(options.get(option, sampler.default_eta))


def _sampling_params(
    request: GenerationRequest, sampler: ResolvedSampler, options: Mapping[str, Any]
) -> SamplingParams:
    s_min_uncond = request.s_min_uncond if request.s_min_uncond is not None else options.get("s_min_uncond", 0.0)
    return SamplingParams(
        sampler=sampler.sampler,
        schedule=sampler.schedule,
        steps=given(request.steps, "steps"),
        cfg_scale=float(request.cfg_scale if request.cfg_scale is not None else 7.0),
        eta=resolve_eta(request, sampler.sampler, options),
        s_min_uncond=float(s_min_uncond or 0.0),
        distilled_cfg_scale=float(request.distilled_cfg_scale if request.distilled_cfg_scale is not None else 3.5),
        **resolve_churn(request, options),
    )


def _seed_params(request: GenerationRequest, options: Mapping[str, Any], count: int, rng: random.Random) -> SeedParams:
    seed = resolve_seed(request.seed, rng)
    subseed = resolve_seed(request.subseed, rng)
    strength = float(request.subseed_strength or 0.0)
    seeds = tuple(seed + (i if strength == 0 else 0) for i in range(count))
    return SeedParams(
        seeds=seeds,
        subseeds=tuple(subseed + i for i in range(count)),
        subseed_strength=strength,
        seed_resize_from_w=max(int(request.seed_resize_from_w or 0), 0),
        seed_resize_from_h=max(int(request.seed_resize_from_h or 0), 0),
        eta_noise_seed_delta=int(options.get("eta_noise_seed_delta", 0) or 0),
        randn_source=str(options.get("randn_source", "GPU")),
    )


def _preview_every(options: Mapping[str, Any]) -> int:
    if not options.get("live_previews_enable", True):
        return 0
    return int(options.get("show_progress_every_n_steps", 10) or 0)



# ---------------------------------------------------------------------------
# Prompts: styles and cheap checks
# ---------------------------------------------------------------------------


def styled_prompts(
    request: GenerationRequest, count: int, styles: Sequence[PromptStyle]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One prompt and negative prompt per image, with the request's styles merged in
    (A1111's setup_prompts)."""
    prompts = expand_prompts(request.prompt, count, "prompt")
    negatives = expand_prompts(request.negative_prompt, count, "negative_prompt")
    names = list(request.styles or [])
    return (
        tuple(apply_styles(p, names, styles) for p in prompts),
        tuple(apply_styles(n, names, styles, negative=True) for n in negatives),
    )


def check_prompts(prompts: Sequence[str], negative_prompts: Sequence[str], options: Mapping[str, Any]) -> None:
    """Refuse, before queueing, what A1111 would fail on while encoding: an unknown emphasis
    mode, the old emphasis implementation (not supported here), emphasis weights that are not
    numbers, absurd bracket nesting. Prompts with prompt-editing syntax ("[") are checked
    again variant by variant in the engine (parsing them can take long, so not here)."""
    from .engine import prompts as syntax

    emphasis = options.get("emphasis") or "Original"
    if emphasis not in syntax.EMPHASIS_MODES:
        raise BadRequest(f"option 'emphasis' must be one of {syntax.EMPHASIS_MODES}; received {emphasis!r}")
    if options.get("use_old_emphasis_implementation"):
        raise NotImplementedFeature("option 'use_old_emphasis_implementation' (pre-2023 emphasis) is not supported")
    for text in dict.fromkeys(prompts):
        for part in syntax.split_subprompts(text):
            _check_prompt_text(part.text, emphasis)
    for text in dict.fromkeys(negative_prompts):
        _check_prompt_text(text, emphasis)


def _check_prompt_text(text: str, emphasis: str) -> None:
    from .engine import prompts as syntax

    syntax.check_bracket_depth(text)
    if emphasis != "None" and "[" not in text:
        syntax.parse_attention(text)


# ---------------------------------------------------------------------------
# The `infotext` request field
# ---------------------------------------------------------------------------


def request_styles(request: GenerationRequest, paths: Sequence[Any]) -> list[PromptStyle]:
    """The styles a request needs (read only when it names styles or sends an infotext)."""
    if not request.styles and not request.infotext:
        return []
    return read_styles(paths)


def apply_infotext(
    request: GenerationRequest, options: Mapping[str, Any], styles: Sequence[PromptStyle] = ()
) -> GenerationRequest:
    """A1111's apply_infotext: parse the `infotext` field, fill every txt2img field the client
    did not send (pydantic's fields_set: a field sent as null counts as sent) and add the
    option overrides it implies unless override_settings names them already.

    `options` is the store's current snapshot (A1111 parses with its global options).
    """
    if not request.infotext:
        return request
    from .postprocess.infotext import override_settings_from_infotext, parse_infotext

    params = parse_infotext(
        request.infotext,
        tuple(options.get("infotext_skip_pasting") or ()),
        styles=styles,
        infotext_styles=str(options.get("infotext_styles") or "Apply if any"),
        current_modules=tuple(options.get("forge_additional_modules") or ()),
    )
    updates = {k: v for k, v in infotext_fields(params).items() if k not in request.model_fields_set}
    overrides = {**override_settings_from_infotext(params, options), **(request.override_settings or {})}
    return request.model_copy(update={**updates, "override_settings": overrides})


# (infotext key, request field, type) for the txt2img paste fields that are plain values.
# "Seed resize from-1" (the width) goes to seed_resize_from_h and -2 to _w: A1111 swaps them.
INFOTEXT_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("CFG scale", "cfg_scale", float),
    ("Distilled CFG Scale", "distilled_cfg_scale", float),
    ("Size-1", "width", int),
    ("Size-2", "height", int),
    ("Batch size", "batch_size", int),
    ("Denoising strength", "denoising_strength", float),
    ("Hires upscale", "hr_scale", float),
    ("Hires upscaler", "hr_upscaler", str),
    ("Hires steps", "hr_second_pass_steps", int),
    ("Hires resize-1", "hr_resize_x", int),
    ("Hires resize-2", "hr_resize_y", int),
    ("Hires checkpoint", "hr_checkpoint_name", str),
    ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Hires Distilled CFG Scale", "hr_distilled_cfg", float),  # Forge's paste field (ui.py)
    ("Hires CFG Scale", "hr_cfg", float),  # Forge's paste field (ui.py)
    ("Steps", "steps", int),
    ("Seed", "seed", int),
    ("Variation seed", "subseed", int),
    ("Variation seed strength", "subseed_strength", float),
    ("Seed resize from-1", "seed_resize_from_h", int),
    ("Seed resize from-2", "seed_resize_from_w", int),
    ("Refiner switch at", "refiner_switch_at", float),
)


def infotext_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Request fields as A1111's paste fields compute them from parsed infotext params."""
    fields = {
        name: _cast_field(key, params[key], kind) for key, name, kind in INFOTEXT_FIELDS if params.get(key) is not None
    }
    fields["enable_hr"] = "Denoising strength" in params and any(
        k in params for k in ("Hires upscale", "Hires upscaler", "Hires resize-1")
    )
    fields.update(_sampler_fields(params))
    fields.update(_hires_sampler_fields(params))
    if params.get("Refiner"):
        fields["refiner_checkpoint"] = str(params["Refiner"])
    if isinstance(params.get("Styles array"), list):
        fields["styles"] = list(params["Styles array"])
    if isinstance(params.get("Hires VAE/TE"), list):
        fields["hr_additional_modules"] = [str(name) for name in params["Hires VAE/TE"]]
    return {k: v for k, v in fields.items() if v is not None}


def _sampler_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampler and scheduler label as A1111 resolves "Sampler" + "Schedule type" (a legacy
    "DPM++ 2M Karras" is split; no "Sampler" means A1111's default, DPM++ 2M). Names we do
    not know are passed on as written, so the request fails with the usual 422."""
    from samplers import registry

    sampler, scheduler = params.get("Sampler") or "DPM++ 2M", params.get("Schedule type")
    try:
        found, found_scheduler = registry.resolve_sampler_and_scheduler(sampler, scheduler)
    except (registry.UnknownSamplerError, registry.UnknownSchedulerError):
        return {"sampler_name": sampler, "scheduler": scheduler}
    return {"sampler_name": found.name, "scheduler": found_scheduler.label}


def _hires_sampler_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hires sampler/scheduler: "Use same ..." unless the infotext names different ones."""
    same_sampler, same_scheduler = "Use same sampler", "Use same scheduler"
    sampler = params.get("Hires sampler", same_sampler)
    scheduler = params.get("Hires schedule type", same_scheduler)
    return {
        "hr_sampler_name": same_sampler if sampler in (same_sampler, params.get("Sampler")) else sampler,
        "hr_scheduler": same_scheduler if scheduler in (same_scheduler, params.get("Schedule type")) else scheduler,
    }


def _cast_field(key: str, value: Any, kind: type) -> Any:
    """Convert a parsed infotext value to the field's type; A1111 fails with a 500 on values
    like "Steps: 20.5", this is a 400 naming the key."""
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise BadRequest(
            f"infotext value {value!r} for {key!r} is not a valid {kind.__name__}", errors=str(exc)
        ) from exc
