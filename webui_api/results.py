"""Build A1111's txt2img response from a finished job: infotexts, the info JSON, images.

The info string and the PNG `parameters` chunk are what clients parse (bots re-read
infotexts line by line), so key order and value formatting follow A1111's
`create_infotext` and `Processed.js` exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .engine.protocols import ModelFacts
from .jobs import GeneratedImage, GenerationJob, JobResult

A1111_COMPAT_VERSION = "v1.10.1"  # the A1111 release whose behaviour we reproduce; infotext parsers key on it
CHURN_INFOTEXT_KEYS = {
    "s_churn": "Sigma churn",
    "s_tmin": "Sigma tmin",
    "s_tmax": "Sigma tmax",
    "s_noise": "Sigma noise",
}


FORGE_DISTILLED_CFG = "Distilled CFG Scale"
FORGE_MODULE_PREFIX = "Module "  # "Module 1".. "Module n": the module files' names without extension


def is_infotext_only(key: str) -> bool:
    """Keys Forge's create_infotext adds to the parameter line but never to
    `p.extra_generation_params`, so its `info` JSON does not carry them."""
    return key == FORGE_DISTILLED_CFG or key.startswith(FORGE_MODULE_PREFIX)


def extra_generation_params(job: GenerationJob) -> dict[str, Any]:
    """The sampler-dependent infotext extras A1111 adds (Eta, Sigma * from options, the Beta
    schedule's alpha and beta when that schedule runs)."""
    sampler = job.sampling.sampler
    extras: dict[str, Any] = {}
    if sampler.takes_eta and job.sampling.eta is not None and job.sampling.eta != sampler.default_eta:
        extras["Eta DDIM" if sampler.default_eta == 0.0 else "Eta"] = job.sampling.eta
    extras.update(_churn_from_options(job, sampler.extra_params))
    if job.sampling.schedule.label == "Beta":
        extras["Beta schedule alpha"] = job.engine_options.beta_dist_alpha
        extras["Beta schedule beta"] = job.engine_options.beta_dist_beta
    return extras


def _churn_from_options(job: GenerationJob, accepted: tuple[str, ...]) -> dict[str, Any]:
    defaults = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}
    extras = {}
    for key in accepted:
        option_value = float(job.options.get(key, defaults[key]))
        if option_value != defaults[key]:
            extras[CHURN_INFOTEXT_KEYS[key]] = option_value
    return extras


def infotext_params(
    job: GenerationJob,
    image: GeneratedImage,
    model: ModelFacts,
    extras: Mapping[str, Any],
    vae: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """The ordered parameter line of one image, None meaning "leave out". `vae` is the
    (file name, short hash) of a separate VAE, written right after the model as A1111 does.

    Forge's additions sit where Forge's create_infotext puts them: "Distilled CFG Scale" right
    after "CFG scale"; "Diffusion in Low Bits" and "Module 1..n" after "Version", last."""
    opts = job.options
    modules = {key: value for key, value in extras.items() if key.startswith(FORGE_MODULE_PREFIX)}
    extras = {key: value for key, value in extras.items() if key not in modules}
    vae_name, vae_hash = vae
    seeds = job.seeds
    uses_ensd = seeds.eta_noise_seed_delta != 0 and _sampler_uses_ensd(job)
    return {
        "Steps": job.sampling.steps,
        "Sampler": job.sampling.sampler_name,
        "Schedule type": _scheduler_label(job),
        "CFG scale": job.sampling.cfg_scale,
        FORGE_DISTILLED_CFG: extras.get(FORGE_DISTILLED_CFG),
        "Image CFG scale": extras.get("Image CFG scale"),  # instruct-pix2pix img2img (set by the engine)
        "Seed": image.seed,
        "Face restoration": _face_restoration_model(job),
        "Size": f"{job.width}x{job.height}",
        "Model hash": model.hash if opts.get("add_model_hash_to_info", True) else None,
        "Model": model.model_name if opts.get("add_model_name_to_info", True) else None,
        "VAE hash": vae_hash if opts.get("add_vae_hash_to_info", True) else None,
        "VAE": vae_name if opts.get("add_vae_name_to_info", True) else None,
        "Variation seed": image.subseed if seeds.subseed_strength != 0 else None,
        "Variation seed strength": seeds.subseed_strength if seeds.subseed_strength != 0 else None,
        "Seed resize from": _seed_resize(job),
        "Denoising strength": extras.get("Denoising strength"),  # placed here by A1111; set by img2img/hires
        "Clip skip": job.clip_skip if job.clip_skip > 1 else None,
        "ENSD": seeds.eta_noise_seed_delta if uses_ensd else None,
        **token_merging_infotext(job),
        "RNG": seeds.randn_source if seeds.randn_source != "GPU" else None,
        "Tiling": "True" if job.tiling else None,
        **extras,
        "Version": A1111_COMPAT_VERSION if opts.get("add_version_to_infotext", True) else None,
        "Diffusion in Low Bits": _low_bits(job),
        **modules,
    }


def _low_bits(job: GenerationJob) -> str | None:
    """Forge names forge_unet_storage_dtype in the infotext whenever it is not Automatic."""
    storage = job.engine_options.forge_unet_storage_dtype
    return storage if storage and storage != "Automatic" else None


def token_merging_infotext(job: GenerationJob) -> dict[str, float | None]:
    """A1111's "Token merging ratio" (the first pass's ratio) and, for a hires job, "Token
    merging ratio hr" (the second pass's), each only when non-zero."""
    first = job.engine_options.token_merging_for(job.kind)
    hires = job.engine_options.token_merging_for(job.kind, hires_pass=True) if job.hires is not None else 0.0
    return {
        "Token merging ratio": first if first != 0 else None,
        "Token merging ratio hr": hires if hires != 0 else None,
    }


def _face_restoration_model(job: GenerationJob) -> str | None:
    """A1111 names the face_restoration_model option when the job restored faces."""
    return str(job.options.get("face_restoration_model") or "CodeFormer") if job.restore_faces else None


def _scheduler_label(job: GenerationJob) -> str:
    return job.sampling.schedule.label


def _sampler_uses_ensd(job: GenerationJob) -> bool:
    return job.sampling.sampler.uses_ensd


def _seed_resize(job: GenerationJob) -> str | None:
    w, h = job.seeds.seed_resize_from_w, job.seeds.seed_resize_from_h
    return f"{w}x{h}" if w > 0 and h > 0 else None


def _total_steps(job: GenerationJob) -> int:
    return job.sampling.sampler.total_steps(job.sampling.steps)


def prompt_extras(job: GenerationJob, prompts: Sequence[str], negative_prompts: Sequence[str]) -> dict[str, Any]:
    """The infotext keys A1111 adds while encoding one batch's prompts:

    - "Old prompt editing timelines": the option is on and it changes some prompt's schedule;
    - "Emphasis": the option is not "Original" and some encoded text (a schedule variant of
      an AND part or of a negative prompt) contains "(" or "[".

    Nothing is parsed while both options are at their defaults.
    """
    from .engine.prompts import parse_prompt, split_subprompts

    extras: dict[str, Any] = {}
    steps, old = _total_steps(job), job.engine_options.use_old_scheduling
    texts = list(dict.fromkeys([*prompts, *negative_prompts]))
    if old and any(parse_prompt(text).differs_with_old_timelines(steps) for text in texts):
        extras["Old prompt editing timelines"] = True
    emphasis = job.engine_options.emphasis or "Original"
    if emphasis != "Original":
        parts = [part.text for prompt in dict.fromkeys(prompts) for part in split_subprompts(prompt)]
        texts = list(dict.fromkeys([*parts, *negative_prompts]))
        encoded = [entry.text for text in texts for entry in parse_prompt(text).schedule(steps, None, old)]
        if any("(" in text or "[" in text for text in encoded):
            extras["Emphasis"] = emphasis
    return extras


def prompt_extras_per_image(job: GenerationJob, image_count: int) -> list[dict[str, Any]]:
    """A1111 keeps these keys once set, so an image's infotext has those of its own batch and
    of every batch before it."""
    per_image: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    for n in range(job.n_iter):
        part = job.batch_slice(n)
        seen = {**seen, **prompt_extras(job, job.prompts[part], job.negative_prompts[part])}
        per_image += [seen] * job.batch_size
    return per_image[:image_count]


def build_infotexts(job: GenerationJob, result: JobResult, model: ModelFacts) -> list[str]:
    from .postprocess.infotext import create_infotext

    extras = {**extra_generation_params(job), **result.extra_generation_params, **result.cond_padding}
    prompt_keys = prompt_extras_per_image(job, len(result.images))
    return [
        create_infotext(
            image.prompt,
            image.negative_prompt,
            infotext_params(job, image, model, {**keys, **extras}, (result.vae_name, result.vae_hash)),
        )
        for image, keys in zip(result.images, prompt_keys, strict=True)
    ]


def build_info(
    job: GenerationJob,
    result: JobResult,
    model: ModelFacts,
    infotexts: list[str],
    request: Any,
    index_of_first_image: int = 0,
) -> str:
    """`Processed.js()`: the info JSON string, keys in A1111's order (index_of_first_image is 1
    when a grid leads the images, with its infotext first in `infotexts`)."""
    seeds = job.seeds
    first = result.images[0] if result.images else None
    info = {
        "prompt": job.prompts[0],
        "all_prompts": list(job.prompts),
        "negative_prompt": job.negative_prompts[0],
        "all_negative_prompts": list(job.negative_prompts),
        "seed": first.seed if first else seeds.seeds[0],
        "all_seeds": list(seeds.seeds),
        "subseed": first.subseed if first else seeds.subseeds[0],
        "all_subseeds": list(seeds.subseeds),
        "subseed_strength": seeds.subseed_strength,
        "width": job.width,
        "height": job.height,
        "sampler_name": job.sampling.sampler_name,
        "cfg_scale": job.sampling.cfg_scale,
        "steps": job.sampling.steps,
        "batch_size": job.batch_size,
        "restore_faces": job.restore_faces,
        "face_restoration_model": _face_restoration_model(job),
        "sd_model_name": model.model_name,
        "sd_model_hash": model.hash,
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {
            **(prompt_extras_per_image(job, len(result.images)) or [{}])[-1],
            **extra_generation_params(job),
            **{k: v for k, v in result.extra_generation_params.items() if not is_infotext_only(k)},
            **result.cond_padding,
        },
        "index_of_first_image": index_of_first_image,
        "infotexts": infotexts,
        "styles": list(request.styles or []),
        "job_timestamp": job.job_timestamp,
        "clip_skip": job.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": A1111_COMPAT_VERSION,
    }
    return json.dumps(info, default=lambda _: None)


def encode_images(result: JobResult, infotexts: list[str], options: Mapping[str, Any]) -> list[str]:
    """Raw base64 in `samples_format`, each carrying its infotext when enable_pnginfo is on."""
    from .postprocess.encode import encode_image_base64, encoding_options

    fmt = str(options.get("samples_format", "png")).lower()
    encoding = encoding_options(options)
    with_info = options.get("enable_pnginfo", True)
    images = [
        encode_image_base64(image.image, fmt, infotext=text if with_info else None, **encoding)
        for image, text in zip(result.images, infotexts, strict=True)
    ]
    return images + [encode_image_base64(extra, fmt, **encoding) for extra in result.extra_images]
