"""ControlNet at generation time: control maps, then residuals added to every UNet call.

Per job (before sampling, on the worker): each unit's input image goes through its
preprocessor, the map is resized to the generation size by the unit's resize mode (the
extension's detectmap_proc), and its network is loaded (the engine's LRU). With hires fix a
second map at the second pass's size is made, as the extension does.

Per UNet call (`ControlHook`): every unit whose guidance window contains the current step
runs its ControlNet on the same latent, timestep and text conditioning as the UNet; its 13
(SD1/SD2; SDXL 10) residuals are scaled and summed over units, then handed to the UNet as
`down_block_additional_residuals` / `mid_block_additional_residual`. The extension's rules:

- step fraction = sampling_step / sampling_steps, where sampling_step is the index the
  sampler last reported through its callback (A1111's state.sampling_step; so the first two
  steps both see 0) and sampling_steps the steps this sampler run makes; a unit acts while
  guidance_start <= fraction <= guidance_end;
- Balanced: every residual x weight;
- "My prompt is more important" (soft injection): residual i x weight x 0.825 ** (12 - i),
  i = 0..12 over [down residuals..., mid] (SDXL takes the first 10 of those 13 factors);
- "ControlNet is more important": soft injection as well, and the residuals reach only
  the prompt (cond) rows of the CFG batch, not the negative-prompt rows;
- in the hires pass, canny and mlsd maps always use soft injection.

Every call appends one `ControlStep` per unit to the job's trace (strength 0 outside the
window), so the schedule can be observed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui_api.controlnet.units import ControlUnit
from webui_api.engine_options import EngineOptions
from webui_api.errors import BadRequest
from webui_api.jobs import GenerationJob, JobResult

SOFT_INJECTION_BASE = 0.825
SOFT_INJECTION_DEPTH = 13  # SD1's 12 down residuals + the middle one
DEFAULT_PROCESSOR_RES = 512  # the extension's resolution slider default
LATENT_SCALE = 8
HIRES_SOFT_MODULES = ("canny", "mlsd")


@dataclass(frozen=True)
class ControlStep:
    """One unit's part in one UNet call: applied strength 0.0 means outside its window."""

    call: int
    sampling_step: int
    unit: int
    strength: float


@dataclass(frozen=True, eq=False)
class PreparedUnit:
    """A unit ready for sampling: its network and control maps (1, 3, H, W) in [0, 1]."""

    unit: ControlUnit
    net: Any  # webui_api.engine.control_models.LoadedControlNet
    hint: torch.Tensor
    hr_hint: torch.Tensor | None = None
    hires_pass: bool = False  # True in the hires fix's second pass
    trace: list = field(default_factory=list)  # the job's ControlStep record, shared by its units

    def for_hires_pass(self) -> PreparedUnit:
        return replace(self, hires_pass=True)

    def active_in(self, first_pass_of_hires: bool) -> bool:
        """hr_option: which passes of a hires job the unit takes part in."""
        option = self.unit.hr_option
        if self.hires_pass:
            return option != "Low res only"
        return not (first_pass_of_hires and option == "High res only")

    @property
    def map(self) -> torch.Tensor:
        return self.hr_hint if self.hires_pass and self.hr_hint is not None else self.hint


def hires_pass_units(units: tuple[Any, ...]) -> tuple[Any, ...]:
    """The job's units as the hires fix's second pass uses them."""
    return tuple(u.for_hires_pass() if isinstance(u, PreparedUnit) else u for u in units)


# ---------------------------------------------------------------------------
# Control maps (numpy / PIL): the extension's detectmap_proc and pixel perfect
# ---------------------------------------------------------------------------


def pixel_perfect_resolution(image: np.ndarray, height: int, width: int, resize_mode: str) -> int:
    """The preprocessor resolution that makes the map land 1:1 on the generation size."""
    raw_h, raw_w = image.shape[:2]
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(raw_h, raw_w)))


def _resample(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Few-colour maps (segmentation, binary lines) resize with nearest neighbour so no new
    colours appear; others with area averaging when shrinking, bicubic when enlarging."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    colours = len(np.unique(array.reshape(-1, array.shape[2]), axis=0))
    binary = colours == 2 and array.min() < 16 and array.max() > 240
    smaller = width * height < array.shape[0] * array.shape[1]
    method = (
        Image.Resampling.NEAREST
        if 2 < colours < 200
        else (Image.Resampling.BOX if smaller else Image.Resampling.BICUBIC)
    )
    out = np.asarray(Image.fromarray(array).resize((width, height), resample=method))
    if binary:
        out = np.where(out.mean(axis=2, keepdims=True) > 127, 255, 0).astype(np.uint8).repeat(3, axis=2)
    return out


def resize_map(detected: np.ndarray, resize_mode: str, height: int, width: int) -> np.ndarray:
    """Just Resize stretches; Crop and Resize covers then centre-crops; Resize and Fill fits
    inside and pads with the median border colour."""
    if resize_mode == "Just Resize":
        return _resample(detected, width, height)
    old_h, old_w = detected.shape[:2]
    k0, k1 = height / old_h, width / old_w
    if resize_mode == "Resize and Fill":
        k = min(k0, k1)
        borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
        canvas = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        scaled = _resample(detected, int(np.round(old_w * k)), int(np.round(old_h * k)))
        top, left = max(0, (height - scaled.shape[0]) // 2), max(0, (width - scaled.shape[1]) // 2)
        canvas[top:top + scaled.shape[0], left:left + scaled.shape[1]] = scaled[:height, :width]
        return canvas
    k = max(k0, k1)
    scaled = _resample(detected, int(np.round(old_w * k)), int(np.round(old_h * k)))
    top, left = max(0, (scaled.shape[0] - height) // 2), max(0, (scaled.shape[1] - width) // 2)
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


def run_unit_preprocessor(unit: ControlUnit, image: np.ndarray, height: int, width: int, annotator_dir: Path,
                          cache: Any = None, seed: int | None = None) -> np.ndarray:
    """The unit's module on its input image, at its (or the pixel-perfect) resolution;
    `cache` (the library's AnnotatorCache) keeps model-based annotators loaded across jobs and
    `seed` makes the random modules (shuffle) repeat with the generation's seed."""
    from webui_api.controlnet.preprocessors import run_preprocessor

    resolution = unit.processor_res if unit.processor_res > 0 else DEFAULT_PROCESSOR_RES
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(image, height, width, unit.resize_mode)
    threshold_a = unit.threshold_a if unit.threshold_a != -1 else None
    threshold_b = unit.threshold_b if unit.threshold_b != -1 else None
    detected = run_preprocessor(
        unit.module, image, resolution, threshold_a, threshold_b, annotator_dir, cache=cache, seed=seed
    )
    if detected.ndim != 3 or detected.shape[2] != 3 or detected.dtype != np.uint8:
        raise BadRequest(
            f"preprocessor {unit.module!r} returned an array of shape {detected.shape} {detected.dtype}; expected (h, "
            "w, 3) uint8"
        )
    return detected


def map_tensor(detected: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return (
        torch.from_numpy(detected.copy())
        .permute(2, 0, 1)[None]
        .to(device=device, dtype=torch.float32)
        .div(255.0)
        .to(dtype)
    )


# ---------------------------------------------------------------------------
# Per job
# ---------------------------------------------------------------------------


@dataclass
class PreparedControls:
    """A job's prepared units, the maps to return and the per-call trace."""

    units: tuple[PreparedUnit, ...] = ()
    detected_maps: list[Any] = field(default_factory=list)  # PIL images
    trace: list[ControlStep] = field(default_factory=list)

    def finish(self, result: JobResult, options: EngineOptions) -> None:
        """Append the detected maps after the images (unless control_net_no_detectmap) and
        the extension's "ControlNet N" infotext entries."""
        if not self.units:
            return
        if not options.controlnet_no_detectmap:
            result.extra_images.extend(self.detected_maps)
        for prepared in self.units:
            unit = prepared.unit
            result.extra_generation_params[f"ControlNet {unit.index}"] = unit.infotext().replace(
                f"Model: {unit.model}", f"Model: {prepared.net.entry.title}")


def hires_size(job: GenerationJob) -> tuple[int, int] | None:
    """(height, width) of the hires second pass, after the latent crop."""
    hires = job.hires
    if hires is None:
        return None
    height = (hires.upscale_height // LATENT_SCALE - hires.truncate_y) * LATENT_SCALE
    width = (hires.upscale_width // LATENT_SCALE - hires.truncate_x) * LATENT_SCALE
    return height, width


def job_numpy_seed(job: GenerationJob) -> int | None:
    """The extension's preprocessor seed: the job's first seed and subseed combined."""
    from webui_api.controlnet.preprocessors import numpy_seed

    seeds = job.seeds
    if not seeds.seeds:
        return None
    return numpy_seed(seeds.seeds[0], seeds.subseeds[0] if seeds.subseeds else 0)


def check_fits(net: Any, model: Any) -> None:
    """A ControlNet runs beside one UNet family only: same widths and context size."""
    cn, unet = net.module.config, model.unet.config
    if (
        tuple(cn.block_out_channels) != tuple(unet.block_out_channels)
        or cn.cross_attention_dim != unet.cross_attention_dim
    ):
        raise BadRequest(
            f"ControlNet {net.entry.title} ({net.family}) does not fit the checkpoint {model.info.title} "
            f"({model.family}):"
            f" widths {tuple(cn.block_out_channels)} vs {tuple(unet.block_out_channels)}, context "
            f"{cn.cross_attention_dim} vs {unet.cross_attention_dim}"
        )


def prepare_unit(
    library: Any, model: Any, job: GenerationJob, unit: ControlUnit, annotator_dir: Path
) -> tuple[PreparedUnit, list[np.ndarray]]:
    """One unit: network, low-res map and (hires) the second pass's map."""
    if unit.image is None:
        raise BadRequest(f"ControlNet unit {unit.index} is enabled but no input image is given")
    net = library.get(unit.model, model.device, model.dtype)
    check_fits(net, model)
    detected = run_unit_preprocessor(
        unit, unit.image, job.height, job.width, annotator_dir, library.annotators, job_numpy_seed(job)
    )
    low = resize_map(detected, unit.resize_mode, job.height, job.width)
    maps = [low]
    hr_hint = None
    size = hires_size(job)
    if size is not None:
        high = resize_map(detected, unit.resize_mode, *size)
        hr_hint = map_tensor(high, model.device, model.dtype)
        maps = [high, low]
    return PreparedUnit(unit, net, map_tensor(low, model.device, model.dtype), hr_hint), maps


def prepare_controls(
    library: Any, model: Any, job: GenerationJob, annotator_dir: Path
) -> tuple[GenerationJob, PreparedControls]:
    """The job with its units replaced by PreparedUnits, and what the result needs."""
    if not job.controlnet_units:
        return job, PreparedControls()
    apply_cache_size(library, job.engine_options.controlnet_cache_size)
    controls = PreparedControls()
    prepared = []
    for unit in job.controlnet_units:
        ready, maps = prepare_unit(library, model, job, unit, annotator_dir)
        prepared.append(replace(ready, trace=controls.trace))
        if unit.save_detected_map:
            controls.detected_maps.extend(Image.fromarray(m) for m in maps)
    controls.units = tuple(prepared)
    return replace(job, controlnet_units=controls.units), controls


def apply_cache_size(library: Any, value: int | None) -> None:
    """The extension's control_net_model_cache_size option bounds the loaded-network LRU
    (None: the option is unset, the library keeps its limit)."""
    if value is None:
        return
    try:
        library.set_limit(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


# ---------------------------------------------------------------------------
# Per UNet call
# ---------------------------------------------------------------------------


class ControlHook:
    """Residuals for one sampler run; `track` wraps the sampler callback to follow steps."""

    def __init__(self, units: list[PreparedUnit], sampling_steps: int, trace: list[ControlStep] | None = None) -> None:
        self.units = units
        self.sampling_steps = max(1, sampling_steps)
        self.sampling_step = 0
        self.calls = 0
        self.trace = trace if trace is not None else []

    def track(self, callback: Callable[[dict], None]) -> Callable[[dict], None]:
        def tracked(info: dict) -> None:
            self.sampling_step = int(info["i"])
            callback(info)

        return tracked

    def strength(self, unit: ControlUnit) -> float:
        fraction = self.sampling_step / self.sampling_steps
        return 0.0 if fraction < unit.guidance_start or fraction > unit.guidance_end else unit.weight

    def __call__(self, x: torch.Tensor, t: torch.Tensor, crossattn: torch.Tensor, uncond_rows: int,
                 added_cond_kwargs: dict | None = None) -> dict[str, Any]:
        """UNet keyword arguments with the summed residuals ({} when no unit acts)."""
        total: list[torch.Tensor] | None = None
        for prepared in self.units:
            weight = self.strength(prepared.unit)
            self.trace.append(ControlStep(self.calls, self.sampling_step, prepared.unit.index, weight))
            if weight == 0.0:
                continue
            residuals = self._unit_residuals(prepared, weight, x, t, crossattn, uncond_rows, added_cond_kwargs)
            total = residuals if total is None else [a + b for a, b in zip(total, residuals, strict=True)]
        self.calls += 1
        if total is None:
            return {}
        return {"down_block_additional_residuals": tuple(total[:-1]), "mid_block_additional_residual": total[-1]}

    def _unit_residuals(
        self, prepared: PreparedUnit, weight: float, x, t, crossattn, uncond_rows, added
    ) -> list[torch.Tensor]:
        net = prepared.net.module
        hint = _fit_hint(prepared.map, x)
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        down, mid = net(
            x.to(net.dtype),
            t,
            encoder_hidden_states=crossattn.to(net.dtype),
            controlnet_cond=hint.to(net.dtype),
            return_dict=False,
            **kwargs,
        )
        scales = residual_scales(prepared, weight, len(down) + 1)
        rows = _row_mask(x.shape[0], uncond_rows, prepared.unit.cond_only, x)
        # .to(x.dtype): a float32 network (--no-half-controlnet) beside a half-precision UNet
        return [
            (r * s if rows is None else r * s * rows).to(x.dtype) for r, s in zip([*down, mid], scales, strict=True)
        ]


def residual_scales(prepared: PreparedUnit, weight: float, count: int) -> list[float]:
    unit = prepared.unit
    forced = prepared.hires_pass and any(name in unit.module for name in HIRES_SOFT_MODULES)
    if not (unit.soft_injection or forced):
        return [weight] * count
    soft = [weight * SOFT_INJECTION_BASE ** float(SOFT_INJECTION_DEPTH - 1 - i) for i in range(SOFT_INJECTION_DEPTH)]
    return soft[:count] if count <= SOFT_INJECTION_DEPTH else [weight] * (count - SOFT_INJECTION_DEPTH) + soft


def _row_mask(rows: int, uncond_rows: int, cond_only: bool, x: torch.Tensor) -> torch.Tensor | None:
    """1 for prompt rows, 0 for negative-prompt rows (the trailing `uncond_rows`)."""
    if not cond_only or uncond_rows == 0:
        return None
    mask = torch.ones(rows, 1, 1, 1, device=x.device, dtype=x.dtype)
    mask[rows - uncond_rows:] = 0
    return mask


def _fit_hint(hint: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The map for every row of the call, at 8x the latent size."""
    size = (x.shape[2] * LATENT_SCALE, x.shape[3] * LATENT_SCALE)
    if tuple(hint.shape[2:]) != size:
        hint = F.interpolate(hint.float(), size=size, mode="bilinear", align_corners=False).to(hint.dtype)
    return hint.to(x.device).expand(x.shape[0], -1, -1, -1)


def control_hook(job: GenerationJob, schedule: torch.Tensor, timestep_kind: bool) -> ControlHook | None:
    """The hook for one sampler run of `job` (None without units acting in this pass)."""
    units = list(job.controlnet_units)
    if not units:
        return None
    wrong = [type(u).__name__ for u in units if not isinstance(u, PreparedUnit)]
    if wrong:
        raise TypeError(
            f"controlnet_units must be prepared (engine.control.prepare_controls) before sampling; got {wrong}"
        )
    first_pass_of_hires = job.hires is not None
    acting = [u for u in units if u.active_in(first_pass_of_hires)]
    if not acting:
        return None
    steps = len(schedule) if timestep_kind else len(schedule) - 1
    return ControlHook(acting, steps, acting[0].trace)
