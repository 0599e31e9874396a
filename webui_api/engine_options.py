"""The A1111 options a generation job's engine run reads, resolved once into typed fields.

The options store holds A1111's ~330 keys as a loose mapping. The engine needs about forty
of them; the job builder resolves those here when it builds the job, so the engine reads
`job.engine_options.sigma_min` instead of looking strings up in a snapshot. `OPTION_NAMES`
is the one place that names the A1111 option behind each field.

No torch, FastAPI or pydantic here: jobs.py imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineOptions:
    """Per-job engine settings; the defaults are A1111's option defaults."""

    # Checkpoints and VAE
    checkpoints_limit: int = 1
    sd_vae: str = "Automatic"
    vae_overrides_per_model: bool = True
    auto_vae_precision: bool = True
    # Extra networks (LoRA)
    default_lora: str = "None"
    extra_networks_default_multiplier: float = 1.0
    disable_extra_networks: bool = False  # the request's field, not an option
    lora_hashes_in_infotext: bool = True
    ti_hashes_in_infotext: bool = True  # textual inversion: "TI hashes"
    # Noise schedule
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    sgm_noise_multiplier: bool = False
    sd_noise_schedule: str = "Default"  # or "Zero Terminal SNR" (A1111's ᾱ rescale)
    # Samplers
    eta_ddim: float | None = None  # None: the sampler's own default
    eta_ancestral: float | None = None
    no_dpmpp_sde_batch_determinism: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    # Guidance
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    skip_early_cond: float = 0.0
    s_min_uncond_all: bool = False
    batch_cond_uncond: bool = True
    live_preview_content: str = "Prompt"
    show_progress_type: str = "Approx NN"  # live preview kind: Full, Approx NN, Approx cheap, TAESD
    live_preview_allow_lowvram_full: bool = False  # "Full" previews even while the model is offloaded
    upcast_attn: bool = False  # "Upcast cross attention layer to float32" (engine.attention)
    # Prompt conditioning
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    sdxl_clip_l_skip: bool = False
    use_old_scheduling: bool = False
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    sdxl_refiner_high_aesthetic_score: float = 6.0
    sdxl_refiner_low_aesthetic_score: float = 2.5
    # img2img, hires fix, refiner
    img2img_extra_noise: float = 0.0
    overlay_inpaint: bool = True
    hires_fix_refiner_pass: str = "second pass"
    refiner_switch_by_sample_steps: bool = False
    # ControlNet extension
    controlnet_no_detectmap: bool = False
    controlnet_cache_size: int | None = None  # None: the library's own limit
    # Token merging (ToMe) on the UNet's full-resolution self-attention; 0 = off
    token_merging_ratio: float = 0.0
    token_merging_ratio_img2img: float = 0.0
    token_merging_ratio_hr: float = 0.0
    token_merging_ratio_overridden: bool = False  # the request's override_settings names it (img2img rule)
    # Forge (Flux): module files named per job, float8 weight storage
    forge_additional_modules: tuple[str, ...] = ()
    forge_unet_storage_dtype: str = "Automatic"

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], disable_extra_networks: bool = False, overridden: Collection[str] = ()
    ) -> EngineOptions:
        """Resolve the fields from an options snapshot; an unset or null option keeps the
        default. A value of the wrong type is a ValueError naming the option. `overridden`
        names the options the request's override_settings set (A1111 reads that for ToMe)."""
        values: dict[str, Any] = {
            "disable_extra_networks": bool(disable_extra_networks),
            "token_merging_ratio_overridden": "token_merging_ratio" in overridden,
        }
        for name, (option, convert) in OPTION_NAMES.items():
            raw = options.get(option)
            if raw is None:
                continue
            try:
                values[name] = convert(raw)
            except (TypeError, ValueError) as err:
                raise ValueError(f"option {option!r} has an unusable value {raw!r}: {err}") from err
        return cls(**values)

    def token_merging_for(self, kind: str, hires_pass: bool = False) -> float:
        """The ToMe ratio of one sampler pass, A1111's get_token_merging_ratio: txt2img uses
        token_merging_ratio, its hires pass token_merging_ratio_hr when non-zero (else the
        first ratio); img2img uses token_merging_ratio when override_settings set it to
        non-zero, else token_merging_ratio_img2img when non-zero, else token_merging_ratio."""
        if kind == "img2img":
            named = self.token_merging_ratio if self.token_merging_ratio_overridden else 0.0
            return named or self.token_merging_ratio_img2img or self.token_merging_ratio
        if hires_pass:
            return self.token_merging_ratio_hr or self.token_merging_ratio
        return self.token_merging_ratio


def _text(value: Any) -> str:
    return str(value)


def _names(value: Any) -> tuple[str, ...]:
    """Forge's module list: a list of file names or paths (a lone string is one name)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise ValueError("expected a list of module file names")


def _finite(value: Any) -> float:
    """A float that is a number (NaN or infinity would reach the UNet as a token count)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _nonzero_int(value: Any) -> int:
    """A1111 treats 0 like unset for these (e.g. sd_checkpoints_limit: one model)."""
    return int(value or 1)


# EngineOptions field -> (A1111 option name, conversion); the only place option names appear.
OPTION_NAMES: Mapping[str, tuple[str, Callable[[Any], Any]]] = {
    "checkpoints_limit": ("sd_checkpoints_limit", _nonzero_int),
    "sd_vae": ("sd_vae", _text),
    "vae_overrides_per_model": ("sd_vae_overrides_per_model_preferences", bool),
    "auto_vae_precision": ("auto_vae_precision", bool),
    "default_lora": ("sd_lora", lambda value: str(value or "None")),
    "extra_networks_default_multiplier": ("extra_networks_default_multiplier", float),
    "lora_hashes_in_infotext": ("lora_add_hashes_to_infotext", bool),
    "ti_hashes_in_infotext": ("textual_inversion_add_hashes_to_infotext", bool),
    "sigma_min": ("sigma_min", float),
    "sigma_max": ("sigma_max", float),
    "rho": ("rho", float),
    "always_discard_next_to_last_sigma": ("always_discard_next_to_last_sigma", bool),
    "beta_dist_alpha": ("beta_dist_alpha", float),
    "beta_dist_beta": ("beta_dist_beta", float),
    "sgm_noise_multiplier": ("sgm_noise_multiplier", bool),
    "sd_noise_schedule": ("sd_noise_schedule", _text),
    "eta_ddim": ("eta_ddim", float),
    "eta_ancestral": ("eta_ancestral", float),
    "no_dpmpp_sde_batch_determinism": ("no_dpmpp_sde_batch_determinism", bool),
    "uni_pc_variant": ("uni_pc_variant", _text),
    "uni_pc_skip_type": ("uni_pc_skip_type", _text),
    "uni_pc_order": ("uni_pc_order", int),
    "uni_pc_lower_order_final": ("uni_pc_lower_order_final", bool),
    "pad_cond_uncond": ("pad_cond_uncond", bool),
    "pad_cond_uncond_v0": ("pad_cond_uncond_v0", bool),
    "skip_early_cond": ("skip_early_cond", float),
    "s_min_uncond_all": ("s_min_uncond_all", bool),
    "batch_cond_uncond": ("batch_cond_uncond", bool),
    "live_preview_content": ("live_preview_content", _text),
    "show_progress_type": ("show_progress_type", _text),
    "live_preview_allow_lowvram_full": ("live_preview_allow_lowvram_full", bool),
    "upcast_attn": ("upcast_attn", bool),
    "emphasis": ("emphasis", _text),
    "comma_padding_backtrack": ("comma_padding_backtrack", int),
    "sdxl_clip_l_skip": ("sdxl_clip_l_skip", bool),
    "use_old_scheduling": ("use_old_scheduling", bool),
    "sdxl_crop_top": ("sdxl_crop_top", int),
    "sdxl_crop_left": ("sdxl_crop_left", int),
    "sdxl_refiner_high_aesthetic_score": ("sdxl_refiner_high_aesthetic_score", float),
    "sdxl_refiner_low_aesthetic_score": ("sdxl_refiner_low_aesthetic_score", float),
    "img2img_extra_noise": ("img2img_extra_noise", float),
    "overlay_inpaint": ("overlay_inpaint", bool),
    "hires_fix_refiner_pass": ("hires_fix_refiner_pass", lambda value: str(value or "second pass")),
    "refiner_switch_by_sample_steps": ("refiner_switch_by_sample_steps", bool),
    "controlnet_no_detectmap": ("control_net_no_detectmap", bool),
    "controlnet_cache_size": ("control_net_model_cache_size", int),
    "token_merging_ratio": ("token_merging_ratio", _finite),
    "token_merging_ratio_img2img": ("token_merging_ratio_img2img", _finite),
    "token_merging_ratio_hr": ("token_merging_ratio_hr", _finite),
    "forge_additional_modules": ("forge_additional_modules", _names),
    "forge_unet_storage_dtype": ("forge_unet_storage_dtype", _text),
}

