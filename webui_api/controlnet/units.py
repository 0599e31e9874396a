"""ControlNet units from a request's `alwayson_scripts`, parsed the way clients send them.

The extension's API accepts each unit as a dict (`{"controlnet": {"args": [unit, ...]}}`,
the script key in any case). Clients written against different versions of it send
different spellings, so every historical form is accepted here:

- legacy field names `input_image` (image), `mask_image` (mask), `guidance` (guidance_end),
  `lowvram` (low_vram);
- enums as their strings, their old aliases ("Envelope (Outer Fit)") or their old ints;
- `image` as raw base64, a data URL, `{"image", "mask"}` or `[image, mask]`;
- `enabled` missing counts as enabled (the extension's newer default, False, silently
  dropped units of clients that never sent it).

A unit that is disabled or has weight 0 is dropped: it cannot change the image, so the job
runs exactly as without it. Images are decoded here, before the job is queued, so a broken
image is a 4xx at once. Numpy and PIL only (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadRequest, ValidationFailed

SCRIPT_KEY = "controlnet"

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {
    "inner fit (scale to fit)": "Crop and Resize",
    "scale to fit (inner fit)": "Crop and Resize",
    "outer fit (shrink to fit)": "Resize and Fill",
    "envelope (outer fit)": "Resize and Fill",
    "just resize (latent upscale)": "Just Resize",
}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")

# legacy name -> current name (the extension's legacy_field_alias and mask_alias)
FIELD_ALIASES = {"input_image": "image", "mask_image": "mask", "guidance": "guidance_end", "lowvram": "low_vram"}


@dataclass(frozen=True, eq=False)
class ControlUnit:
    """One enabled unit, every field resolved. `image` is the RGB input (H, W, 3) uint8 the
    preprocessor receives, or None in img2img when the init image is to be used."""

    module: str
    model: str
    image: np.ndarray | None
    weight: float = 1.0
    resize_mode: str = "Crop and Resize"
    processor_res: int = -1
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    pixel_perfect: bool = False
    low_vram: bool = False
    hr_option: str = "Both"
    save_detected_map: bool = True
    index: int = 0  # position among the request's units (the infotext's "ControlNet <index>")
    extras: Mapping[str, Any] = field(default_factory=dict)  # accepted, unused fields

    @property
    def soft_injection(self) -> bool:
        """The extension scales residuals by depth for every mode but Balanced."""
        return self.control_mode != "Balanced"

    @property
    def cond_only(self) -> bool:
        """"ControlNet is more important": control reaches only the prompt half of CFG."""
        return self.control_mode == "ControlNet is more important"

    def infotext(self) -> str:
        """The extension's "ControlNet N" infotext value."""
        parts = {
            "Module": self.module, "Model": self.model, "Weight": _num(self.weight),
            "Resize Mode": self.resize_mode, "Processor Res": self.processor_res,
            "Threshold A": _num(self.threshold_a), "Threshold B": _num(self.threshold_b),
            "Guidance Start": _num(self.guidance_start), "Guidance End": _num(self.guidance_end),
            "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode,
        }
        return ", ".join(f"{key}: {value}" for key, value in parts.items())


def _num(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------------------
# alwayson_scripts -> units
# ---------------------------------------------------------------------------


def controlnet_entry(alwayson_scripts: Mapping[str, Any] | None) -> Any:
    """The ControlNet entry of `alwayson_scripts` (key matched case-insensitively), or None."""
    for name, entry in (alwayson_scripts or {}).items():
        if name.lower() == SCRIPT_KEY:
            return entry
    return None


def entry_args(entry: Any) -> list[Any]:
    """`{"args": [...]}` or a bare list; anything else is a 422 naming what was received."""
    args = entry.get("args", []) if isinstance(entry, Mapping) else entry
    if args is None:
        return []
    if not isinstance(args, (list, tuple)):
        raise ValidationFailed(
            f"alwayson_scripts.controlnet.args must be a list of unit objects, received {type(args).__name__}"
        )
    return list(args)


def parse_units(
    alwayson_scripts: Mapping[str, Any] | None, init_image: Any = None, init_resize_mode: int = 0
) -> tuple[ControlUnit, ...]:
    """Every enabled unit with weight > 0 of a request. `init_image` (img2img: an array, or
    a function giving it, called only when needed) stands in for a unit without image, with
    A1111's img2img resize mode, as the extension does."""
    entry = controlnet_entry(alwayson_scripts)
    if entry is None:
        return ()
    units = []
    for index, raw in enumerate(entry_args(entry)):
        if raw is False or raw is None:
            continue  # `[false]` is how some clients switch an extension off
        unit = parse_unit(raw, index, init_image, init_resize_mode)
        if unit is not None:
            units.append(unit)
    return tuple(units)


def parse_unit(raw: Any, index: int, init_image: Any = None, init_resize_mode: int = 0) -> ControlUnit | None:
    """One unit dict -> ControlUnit, or None when it cannot act (disabled, weight 0)."""
    if not isinstance(raw, Mapping):
        raise ValidationFailed(f"ControlNet unit {index} must be an object, received {type(raw).__name__}")
    values = unalias(raw, index)
    if not _bool(values.get("enabled", True), "enabled", index):
        return None
    weight = _float(values, "weight", 1.0, index)
    if weight == 0:
        return None
    start, end = _guidance(values, index)
    resize_mode = resize_mode_value(values.get("resize_mode", "Crop and Resize"), index)
    image = unit_image(values, index)
    fallback = init_image() if callable(init_image) and image is None else init_image
    if image is None and fallback is not None:
        image, resize_mode = fallback, resize_mode_value(int(init_resize_mode), index)
    return ControlUnit(
        module=module_name(values.get("module") or "none"),
        model=str(values.get("model") or "None"),
        image=image,
        weight=_checked_weight(weight, index),
        resize_mode=resize_mode,
        processor_res=int(_float(values, "processor_res", -1, index)),
        threshold_a=_float(values, "threshold_a", -1, index),
        threshold_b=_float(values, "threshold_b", -1, index),
        guidance_start=start,
        guidance_end=end,
        control_mode=control_mode_value(values.get("control_mode", "Balanced"), index),
        pixel_perfect=_bool(values.get("pixel_perfect", False), "pixel_perfect", index),
        low_vram=_bool(values.get("low_vram", False), "low_vram", index),
        hr_option=hr_option_value(values.get("hr_option", "Both"), index),
        save_detected_map=_bool(values.get("save_detected_map", True), "save_detected_map", index),
        index=index,
    )


def controlnet_units(request: Any) -> tuple[ControlUnit, ...]:
    """The units of a txt2img or img2img request (img2img: its first init image stands in
    for units without an image)."""
    init_images = getattr(request, "init_images", None)

    def first_init_image() -> np.ndarray | None:
        return decode_rgb(init_images[0], "init_images[0]") if init_images else None

    units = parse_units(request.alwayson_scripts, first_init_image, int(getattr(request, "resize_mode", 0) or 0))
    missing = [unit.index for unit in units if unit.image is None]
    if missing:
        raise BadRequest(f"ControlNet unit {missing[0]} is enabled but no input image is given (send 'image')")
    return units


def unalias(raw: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Legacy names renamed; sending both spellings of one field is a 422 (as the extension)."""
    values = dict(raw)
    for old, new in FIELD_ALIASES.items():
        if old not in values:
            continue
        if new in values and values[new] is not None and values[old] is not None:
            raise ValidationFailed(f"ControlNet unit {index} sends both '{old}' and '{new}'; send only '{new}'")
        value = values.pop(old)
        values[new] = value if values.get(new) is None else values[new]
    return values


def module_name(name: str) -> str:
    """The preprocessor's canonical name (aliases resolved); unknown names are a 422."""
    if str(name).lower() == "none":
        return "none"
    from .preprocessors import find_module

    return find_module(str(name))


# ---------------------------------------------------------------------------
# Scalars and enums
# ---------------------------------------------------------------------------


def _bool(value: Any, name: str, index: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValidationFailed(f"ControlNet unit {index}: '{name}' must be true or false, received {value!r}")


def _float(values: Mapping[str, Any], name: str, default: float, index: int) -> float:
    value = values.get(name)
    if value is None:
        return float(default)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"ControlNet unit {index}: '{name}' must be a number, received {value!r}") from exc


def _checked_weight(weight: float, index: int) -> float:
    if not 0.0 <= weight <= 2.0:
        raise ValidationFailed(f"ControlNet unit {index}: weight must be between 0 and 2, received {weight}")
    return weight


def _guidance(values: Mapping[str, Any], index: int) -> tuple[float, float]:
    start = _float(values, "guidance_start", 0.0, index)
    end = _float(values, "guidance_end", 1.0, index)
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValidationFailed(
            f"ControlNet unit {index}: guidance_start/guidance_end must lie in [0, 1], received {start}, {end}"
        )
    if start > end:
        raise ValidationFailed(f"ControlNet unit {index}: guidance_start ({start}) > guidance_end ({end})")
    return start, end


def _enum(value: Any, choices: Sequence[str], aliases: Mapping[str, str], name: str, index: int) -> str:
    """An enum sent as its string (any case), an old alias, or its position (the old ints)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) < len(choices):
            return choices[int(text)]
        by_lower = {choice.lower(): choice for choice in choices}
        found = by_lower.get(text.lower()) or aliases.get(text.lower())
        if found:
            return found
    raise ValidationFailed(
        f"ControlNet unit {index}: '{name}' must be one of {list(choices)} (or 0-{len(choices) - 1}), received "
        f"{value!r}"
    )


def resize_mode_value(value: Any, index: int = 0) -> str:
    """A1111's img2img mode 3 ("Just resize (latent upscale)") counts as Just Resize."""
    if value == 3 or value == "3":
        return "Just Resize"
    return _enum(value, RESIZE_MODES, RESIZE_ALIASES, "resize_mode", index)


def control_mode_value(value: Any, index: int = 0) -> str:
    return _enum(value, CONTROL_MODES, {}, "control_mode", index)


def hr_option_value(value: Any, index: int = 0) -> str:
    return _enum(value, HR_OPTIONS, {}, "hr_option", index)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def decode_rgb(data: Any, what: str) -> np.ndarray:
    """Base64 / data URL -> (H, W, 3) uint8; transparency composited over white (HWC3)."""
    from ..errors import InvalidImage
    from ..postprocess.encode import decode_image_base64

    if not isinstance(data, str):
        raise InvalidImage(errors=f"{what}: expected a base64 string, received {type(data).__name__}")
    try:
        picture = decode_image_base64(data)
    except InvalidImage as exc:
        raise InvalidImage(exc.detail, errors=f"{what}: {exc.errors}") from exc
    return to_rgb(
        np.asarray(
            picture.convert("RGBA") if "A" in picture.getbands() or picture.mode == "P" else picture.convert("RGB")
        )
    )


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2).astype(np.uint8)
    if channels == 3:
        return array.astype(np.uint8)
    color = array[:, :, :3].astype(np.float32)
    alpha = array[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def unit_image(values: Mapping[str, Any], index: int) -> np.ndarray | None:
    """The unit's input image: `image` in any accepted form, with `mask` applied the way the
    extension does for ordinary modules (a drawn mask replaces the image: canvas scribble)."""
    image, mask = _image_and_mask(values.get("image"), values.get("mask"), index)
    if image is None or image == "":
        if mask:
            raise BadRequest(f"ControlNet unit {index} has a mask but no image")
        return None
    rgb = decode_rgb(image, f"ControlNet unit {index} image")
    if not mask:
        return rgb
    drawn = decode_rgb(mask, f"ControlNet unit {index} mask")
    if drawn.shape[:2] != rgb.shape[:2]:
        raise BadRequest(
            f"ControlNet unit {index}: mask size {drawn.shape[1]}x{drawn.shape[0]} differs from image size "
            f"{rgb.shape[1]}x{rgb.shape[0]}"
        )
    channel = drawn[:, :, 0]
    if (channel <= 5).all() or (channel >= 250).all():
        return rgb
    return to_rgb(channel)


def _image_and_mask(image: Any, mask: Any, index: int) -> tuple[Any, Any]:
    """Split the `image` forms: "b64", {"image", "mask"}, [image, mask]."""
    if isinstance(image, Mapping):
        return image.get("image"), image.get("mask") or mask
    if isinstance(image, (list, tuple)):
        if len(image) == 1 and isinstance(image[0], Mapping):
            return _image_and_mask(image[0], mask, index)
        if len(image) == 2 and all(isinstance(part, (str, type(None))) for part in image):
            return image[0], image[1] or mask
        raise ValidationFailed(
            f"ControlNet unit {index}: 'image' lists of several inputs (IP-Adapter style) are not supported; send one "
            f"image or {{image, mask}}"
        )
    return image, mask
