"""txt2img / img2img request and response models, field for field as A1111 v1.10 declares them.

A1111 builds these models from its processing classes with pydantic v1: every field is
optional, unknown keys are ignored and numbers are coerced. We keep that leniency (clients
such as webuiapi send every field, nulls included) and add what A1111 lacks: sizes and step
counts are checked here, so nonsense is answered with a 422 before any work starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .edge import EdgeModel

MAX_IMAGE_SIDE = 8192  # far above anything a GPU can render; stops accidental billion-pixel requests
MAX_STEPS = 1000
MAX_BATCH = 64
MAX_HR_SCALE = 64.0  # the pixel budget refuses far less; this bound keeps the size arithmetic finite
MAX_MASK_BLUR = 1024  # A1111's UI stops at 64; a Gaussian blur of radius 2**60 would never finish

# Fields that mean nothing as null: A1111 crashes on them (TypeError, 500), so does a task
# accepted with them. A null here means "the default", the same for sync requests and tasks.
NULL_MEANS_DEFAULT = ("steps", "batch_size", "n_iter", "width", "height", "cfg_scale", "seed", "subseed",
                      "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "hr_scale", "resize_mode",
                      "mask_blur_x", "mask_blur_y", "inpainting_fill", "inpaint_full_res_padding",
                      "inpainting_mask_invert")


class LenientModel(EdgeModel):
    """Ignore unknown keys and accept strings for numbers, like A1111's pydantic v1 models;
    refuse non-finite floats, out-of-range ints and deep nesting (schemas.edge)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, protected_namespaces=(),
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        nulls = [
            name for name in NULL_MEANS_DEFAULT if name in data and data[name] is None and name in cls.model_fields
        ]
        if not nulls:
            return data
        return {**data, **{name: cls.model_fields[name].get_default(call_default_factory=True) for name in nulls}}


def _check_side(name: str, value: int | None) -> int | None:
    """Any size A1111 can render: it samples a latent of side // 8 (so 500 renders 496 pixels,
    infotext `Size` as requested); below 8 its latent is empty and it fails, above our cap is refused."""
    if value is None:
        return value
    if value < 8 or value > MAX_IMAGE_SIDE:
        raise ValueError(f"{name} must be between 8 and {MAX_IMAGE_SIDE}; received {value}")
    return value


def _check_range(name: str, value: int | None, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}; received {value}")
    return value


class GenerationRequest(LenientModel):
    """Fields shared by txt2img and img2img, in A1111's model order."""

    prompt: str | list[str] | None = ""
    negative_prompt: str | list[str] | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = Field(default=[])  # pydantic copies it per request; OpenAPI shows []
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default={})  # OpenAPI shows {} as A1111
    force_task_id: str | None = None
    infotext: str | None = None
    # not A1111's: true answers `images` as signed, expiring URLs (GET /sdapi/v1/outputs/...)
    # instead of base64; null follows the server's --output-urls
    output_urls: bool | None = None
    distilled_cfg_scale: float | None = 3.5  # Forge: Flux-dev's guidance embedding (other models ignore it)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int | None, info) -> int | None:
        return _check_side(info.field_name, value)

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        return _check_range("steps", value, 1, MAX_STEPS)

    @field_validator("alwayson_scripts")
    @classmethod
    def _alwayson_entries(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """A1111 reads `alwayson_scripts[name]["args"]` as the script's positional arguments:
        anything else is refused here instead of failing with a TypeError inside a script."""
        for name, entry in (value or {}).items():
            if not isinstance(entry, dict):
                raise ValueError(f"alwayson_scripts[{name!r}] must be an object with an 'args' list; "
                                 f"received {type(entry).__name__}")
            if entry.get("args") is not None and not isinstance(entry["args"], (list, dict)):
                raise ValueError(
                    f"alwayson_scripts[{name!r}].args must be a list; received {type(entry['args']).__name__}"
                )
        return value

    @field_validator("batch_size", "n_iter")
    @classmethod
    def _counts(cls, value: int | None, info) -> int | None:
        return _check_range(info.field_name, value, 1, MAX_BATCH)

    @field_validator("subseed_strength", "denoising_strength", "refiner_switch_at")
    @classmethod
    def _unit_interval(cls, value: float | None, info) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{info.field_name} must be between 0 and 1; received {value}")
        return value


class Txt2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/txt2img (A1111's StableDiffusionTxt2ImgProcessingAPI)."""

    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    hr_distilled_cfg: float | None = 3.5  # Forge: distilled CFG of the hires pass
    # Forge: CFG scale of the hires pass (every model family). Forge's API default is 1.0; absent
    # here means the first pass's cfg_scale, so A1111 clients get A1111's hires pass.
    hr_cfg: float | None = None
    # Forge: the hires pass's VAE / text encoders; only "Use same choices" or the job's own
    # forge_additional_modules are accepted (job_builder.hires_modules).
    hr_additional_modules: list[str] | None = None

    @field_validator("hr_scale")
    @classmethod
    def _hr_scale(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= MAX_HR_SCALE:
            raise ValueError(f"hr_scale must be between 0 and {MAX_HR_SCALE:g}; received {value}")
        return value

    @field_validator("hr_second_pass_steps")
    @classmethod
    def _hr_steps(cls, value: int | None) -> int | None:
        return _check_range("hr_second_pass_steps", value, 0, MAX_STEPS)

    @field_validator("firstphase_width", "firstphase_height", "hr_resize_x", "hr_resize_y")
    @classmethod
    def _hires_sizes(cls, value: int | None, info) -> int | None:
        return _check_range(info.field_name, value, 0, MAX_IMAGE_SIDE)


class Img2ImgRequest(GenerationRequest):
    """POST /sdapi/v1/img2img (A1111's StableDiffusionImg2ImgProcessingAPI)."""

    init_images: list[Any] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(default=False, exclude=True)
    denoising_strength: float | None = 0.75

    @field_validator("resize_mode")
    @classmethod
    def _resize_mode(cls, value: int | None) -> int | None:
        return _check_range("resize_mode", value, 0, 3)

    @field_validator("mask_blur", "mask_blur_x", "mask_blur_y")
    @classmethod
    def _blur(cls, value: int | None, info) -> int | None:
        return _check_range(info.field_name, value, 0, MAX_MASK_BLUR)

    @field_validator("inpainting_fill")
    @classmethod
    def _fill(cls, value: int | None) -> int | None:
        return _check_range("inpainting_fill", value, 0, 3)  # fill, original, latent noise, latent nothing

    @field_validator("inpainting_mask_invert")
    @classmethod
    def _invert(cls, value: int | None) -> int | None:
        return _check_range("inpainting_mask_invert", value, 0, 1)

    @field_validator("inpaint_full_res_padding")
    @classmethod
    def _padding(cls, value: int | None) -> int | None:
        return _check_range("inpaint_full_res_padding", value, 0, MAX_IMAGE_SIDE)


class GenerationResponse(BaseModel):
    """A1111's TextToImageResponse / ImageToImageResponse: info is a JSON *string*."""

    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str
