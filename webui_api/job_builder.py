"""Turn a validated txt2img request plus the options into a frozen `GenerationJob`.

Every A1111 default and quirk that can be settled before the worker runs is settled here,
once: random seeds, sampler/scheduler names (legacy "DPM++ 2M Karras" split), per-job
option overrides, options that beat request fields (s_churn & co.), script checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from .errors import BadRequest, NotImplementedFeature, ValidationFailed
from .jobs import GenerationJob, SamplingParams, SeedParams
from .schemas.generation import GenerationRequest, Txt2ImgRequest

MAX_SEED = 4294967294  # A1111 draws random seeds with randrange(4294967294)
KNOWN_ALWAYSON_SCRIPTS: frozenset[str] = frozenset()  # lower-cased titles; extensions add theirs later
KNOWN_SELECTABLE_SCRIPTS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ResolvedSampler:
    """The sampler and scheduler a job runs with, and how the infotext names them."""

    sampler_name: str
    scheduler_name: str
    scheduler_label: str


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


def resolve_sampler(request: GenerationRequest) -> ResolvedSampler:
    """Resolve names like A1111's API does, but answer unknown names with a 422."""
    from samplers import registry

    name = request.sampler_name or request.sampler_index or "Euler"
    try:
        sampler, split_scheduler = registry.resolve_sampler_and_scheduler(name, request.scheduler)
    except (registry.UnknownSamplerError, registry.UnknownSchedulerError) as exc:
        raise ValidationFailed(str(exc)) from exc
    if sampler.function is None:
        available = ", ".join(s.name for s in registry.implemented_samplers())
        raise ValidationFailed(f"Sampler {sampler.name!r} is not implemented yet; available: {available}")
    scheduler = registry.find_scheduler(request.scheduler) if request.scheduler else split_scheduler
    return ResolvedSampler(sampler.name, scheduler.name, scheduler.label)


def check_scripts(request: GenerationRequest) -> None:
    """A1111's script checks: unknown selectable script or always-on script -> 422.

    Clients send `{"args": []}` or `{"args": [false]}` for an extension they want off;
    such an entry is a no-op rather than an error, whatever its name.
    """
    if request.script_name and request.script_name.lower() not in KNOWN_SELECTABLE_SCRIPTS:
        raise ValidationFailed(f"Script '{request.script_name}' not found")
    for name, entry in (request.alwayson_scripts or {}).items():
        if _is_disabled_entry(entry):
            continue
        if name.lower() not in KNOWN_ALWAYSON_SCRIPTS:
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


def job_timestamp(now: Optional[datetime] = None) -> str:
    return (now or datetime.now()).strftime("%Y%m%d%H%M%S")


def refuse_unimplemented(request: Txt2ImgRequest) -> None:
    """Features that land in later issues: say so clearly instead of ignoring them."""
    if request.enable_hr:
        raise NotImplementedFeature("enable_hr (hires fix) is not implemented yet in this server")
    if request.restore_faces:
        raise NotImplementedFeature("restore_faces is not implemented yet in this server")
    if request.tiling:
        raise NotImplementedFeature("tiling is not implemented yet in this server")
    if request.refiner_checkpoint and request.refiner_checkpoint.lower() not in ("", "none"):
        raise NotImplementedFeature("refiner_checkpoint is not implemented yet in this server")


def build_txt2img(request: Txt2ImgRequest, options: Mapping[str, Any], rng: Optional[random.Random] = None) -> GenerationJob:
    """Step 2 of a request's journey: everything resolved, nothing left for the worker to guess."""
    rng = rng or random.Random()
    check_scripts(request)
    refuse_unimplemented(request)
    count = request.batch_size * request.n_iter
    sampler = resolve_sampler(request)
    return GenerationJob(
        kind="txt2img",
        prompts=expand_prompts(request.prompt, count, "prompt"),
        negative_prompts=expand_prompts(request.negative_prompt, count, "negative_prompt"),
        width=request.width,
        height=request.height,
        batch_size=request.batch_size,
        n_iter=request.n_iter,
        sampling=_sampling_params(request, sampler, options),
        seeds=_seed_params(request, options, count, rng),
        clip_skip=int(options.get("CLIP_stop_at_last_layers", 1) or 1),
        model_title=options.get("sd_model_checkpoint"),
        preview_every_n_steps=_preview_every(options),
        job_timestamp=job_timestamp(),
        options=dict(options),
    )


def resolve_eta(request: GenerationRequest, sampler_name: str, options: Mapping[str, Any]) -> float | None:
    """The request's eta, else A1111's option fallback (eta_ancestral for k-diffusion
    samplers, eta_ddim for the DDIM family); None for samplers that take no eta."""
    from samplers import registry

    sampler = registry.find_sampler(sampler_name)
    if not sampler.takes_eta:
        return None
    if request.eta is not None:
        return float(request.eta)
    option = "eta_ddim" if sampler.default_eta == 0.0 else "eta_ancestral"
    return float(options.get(option, sampler.default_eta))


def _sampling_params(request: GenerationRequest, sampler: ResolvedSampler, options: Mapping[str, Any]) -> SamplingParams:
    s_min_uncond = request.s_min_uncond if request.s_min_uncond is not None else options.get("s_min_uncond", 0.0)
    return SamplingParams(
        sampler_name=sampler.sampler_name,
        scheduler=sampler.scheduler_name,
        steps=request.steps,
        cfg_scale=float(request.cfg_scale if request.cfg_scale is not None else 7.0),
        eta=resolve_eta(request, sampler.sampler_name, options),
        s_min_uncond=float(s_min_uncond or 0.0),
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

