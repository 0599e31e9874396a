"""Frozen generation jobs: every default of a request is resolved here, once.

The engine never sees an HTTP request object; it receives a `GenerationJob` whose every
field is a concrete value (no nulls, no "-1 means random", no "0 means same as steps").
This module imports neither torch nor fastapi.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine_options import EngineOptions

if TYPE_CHECKING:  # engine.protocols imports this module; the sampler registry imports torch
    from samplers.registry import SamplerInfo, SchedulerInfo

    from .engine.protocols import ModelFacts


@dataclass(frozen=True)
class SamplingParams:
    """Sampler choice and tuning, already resolved against the options store.

    `sampler` and `schedule` are the registry entries the job builder resolved the request's
    names to, once: the engine, the infotext and file names read their facts from here and
    never look a name up again."""

    sampler: SamplerInfo  # e.g. the "Euler a" entry
    schedule: SchedulerInfo  # e.g. the "automatic" or "karras" entry
    steps: int
    cfg_scale: float
    eta: float | None  # None: the sampler's own default (A1111's eta_ancestral / eta_ddim)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    distilled_cfg_scale: float = 3.5  # Forge's field: Flux-dev's guidance embedding; other families ignore it

    @property
    def sampler_name(self) -> str:
        """The canonical A1111 sampler name (infotext "Sampler", info JSON `sampler_name`)."""
        return self.sampler.name

    @property
    def scheduler(self) -> str:
        """The canonical scheduler name, e.g. "automatic", "karras"."""
        return self.schedule.name


@dataclass(frozen=True)
class SeedParams:
    """Per-image seeds for the whole job (length batch_size * n_iter)."""

    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    eta_noise_seed_delta: int = 0
    randn_source: str = "GPU"  # "GPU" | "CPU" | "NV" (A1111's option)


@dataclass(frozen=True)
class Img2ImgParams:
    """What an img2img job adds to a txt2img one, resolved before the worker runs.

    `init_images` are RGB PIL images already flattened and resized to the job size (for
    resize_mode 3 they keep their own size: the latents are resized instead). There is one
    per image of a batch (a single init image is repeated batch_size times)."""

    init_images: tuple[Any, ...]
    denoising_strength: float
    resize_mode: int = 0
    initial_noise_multiplier: float = 1.0
    extra_noise: float = 0.0  # A1111 option img2img_extra_noise
    fix_steps: bool = False  # A1111 option img2img_fix_steps
    # Inpainting (all unset for plain img2img): the processed mask (PIL "L", job size, white =
    # repaint), one RGBA overlay per init image (kept original pixels), the fill mode.
    mask: Any = None
    overlays: tuple[Any, ...] = ()
    inpainting_fill: int = 0  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    mask_round: bool = True
    inpainting_mask_weight: float = 1.0  # A1111 option, for 9-channel inpainting UNets
    paste_to: Any = None  # full-res inpainting: masks.CropBox of the original the output goes back into
    mask_infotext: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs in A1111's order
    image_cfg_scale: float | None = None  # instruct-pix2pix models only (A1111 ignores it for others)


@dataclass(frozen=True)
class HiresParams:
    """txt2img's hires fix, resolved: the first pass runs at the job's width x height, the
    second pass at target size (before the centre crop of truncate_x/y latent cells)."""

    upscale_width: int  # A1111's hr_upscale_to_x
    upscale_height: int
    upscaler: str  # as named (infotext "Hires upscaler"); "Latent" when the request sent none
    latent_mode: str | None  # torch interpolate mode for latent upscalers; None: pixel upscaler
    latent_antialias: bool
    steps: int  # second-pass sampler steps (hr_second_pass_steps or steps)
    denoising_strength: float
    sampling: SamplingParams  # second-pass sampler and scheduler
    prompts: tuple[str, ...]  # per image, like GenerationJob.prompts
    negative_prompts: tuple[str, ...]
    truncate_x: int = 0  # latent cells cropped (centred) when hr_resize_x/y set both sides
    truncate_y: int = 0
    infotext: tuple[tuple[str, Any], ...] = ()  # the hires infotext keys, in A1111's order
    checkpoint_title: str | None = None  # hr_checkpoint_name as sent; None: "Use same checkpoint"


@dataclass(frozen=True)
class RefinerParams:
    """A1111's refiner: sampling continues on `checkpoint_title` from the first model call whose
    sigma falls at or below the threshold `switch_at` maps to (issue: refiner switch)."""

    checkpoint_title: str
    switch_at: float  # fraction of the sampling steps, 0 < switch_at < 1


@dataclass(frozen=True)
class GenerationJob:
    """One txt2img request, fully resolved.

    `prompts` / `negative_prompts` / `seeds.seeds` all have batch_size * n_iter entries;
    batch n uses the slice [n * batch_size, (n + 1) * batch_size).
    """

    kind: str  # "txt2img" or "img2img" (then `img2img` holds its fields)
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    width: int
    height: int
    batch_size: int
    n_iter: int
    sampling: SamplingParams
    seeds: SeedParams
    clip_skip: int = 1
    model_title: str | None = None  # checkpoint to use; None = the loaded one
    preview_every_n_steps: int = 10  # 0 or negative: no live previews
    job_timestamp: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)  # per-job snapshot of the options store (outputs)
    engine_options: EngineOptions = field(default_factory=EngineOptions)  # what the engine reads, typed
    img2img: Img2ImgParams | None = None  # set exactly when kind == "img2img"
    hires: HiresParams | None = None  # txt2img with enable_hr
    tiling: bool = False  # seamless textures: circular padding in the model's convolutions
    refiner: RefinerParams | None = None
    restore_faces: bool = False  # face restoration after decoding (model from options)
    # ControlNet units, resolved at the edge (webui_api.controlnet types; no torch here);
    # empty when the request has none or all are disabled.
    controlnet_units: tuple[Any, ...] = ()

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch_slice(self, batch_no: int) -> slice:
        start = batch_no * self.batch_size
        return slice(start, start + self.batch_size)


@dataclass
class GeneratedImage:
    """One finished image and the facts the response and infotext need about it."""

    image: Any  # PIL.Image.Image (kept as Any so this module needs no PIL import)
    seed: int
    subseed: int
    prompt: str
    negative_prompt: str


@dataclass
class JobResult:
    """What the engine hands back for a job: images in generation order."""

    images: list[GeneratedImage]
    interrupted: bool = False
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    # "Pad conds" / "Pad conds v0": True when the CFG denoiser padded cond or uncond (A1111 adds
    # these after sampling, so the infotext writes them after every other extra key).
    cond_padding: dict[str, bool] = field(default_factory=dict)
    vae_name: str | None = None  # the separate VAE file decoding used (None: the checkpoint's own)
    vae_hash: str | None = None  # its sha256[:10], None when hashing is off
    # Images appended after the generated ones without infotext (ControlNet's detected maps,
    # as the extension returns them).
    extra_images: list[Any] = field(default_factory=list)
    # The CheckpointInfo of the model the job ran on (filled by the engine): the response's
    # infotext and file names need it, and nobody has to load the model again to learn it.
    model_info: ModelFacts | None = None

    @property
    def ran_on(self) -> ModelFacts:
        """`model_info` once the engine has filled it (a result that never ran has none)."""
        if self.model_info is None:
            raise RuntimeError("this JobResult has no model_info: the engine did not produce it")
        return self.model_info
