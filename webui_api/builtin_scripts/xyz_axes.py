"""The axes of A1111's X/Y/Z plot: their order (clients send indexes into it), how values are
read (ranges, CSV), and what each value changes in a cell's request or options.

A1111 builds the list per tab: the common axes plus the txt2img-only ones on txt2img, the
img2img-only ones on img2img; an axis type is an index into that tab's list. An axis whose
feature this server does not have (FP8) keeps its place in the list, so indexes line up, but
choosing it is a 422.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from itertools import chain, permutations
from typing import Any

from ..errors import ValidationFailed
from .base import ScriptContext
from .checkpoints import closest_checkpoint

TITLE = "x/y/z plot"
MAX_AXIS_VALUES = 4096  # a range like 1-100000000 is refused before it is expanded


@dataclass
class CellEdit:
    """What the axes of one cell change: request fields, option overrides, added styles.
    Built and thrown away while planning one cell (never shared)."""

    request: Any
    fields: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    styles: list[str] = field(default_factory=list)

    def current(self, name: str) -> Any:
        return self.fields.get(name, getattr(self.request, name, None))


Apply = Callable[[CellEdit, Any, Sequence[Any], ScriptContext], None]
Choices = Callable[[ScriptContext], list[str]]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # "int", "float", "str" or "perm" (permutations of the listed strings)
    apply: Apply | None  # None: not supported by this server (422 when chosen)
    fmt: str = "label"  # legend text: "label" ("Steps: 20"), "value", "join", "nothing", "basename"
    cost: float = 0.0  # slow-to-change axes go in the outer loop
    choices: Choices | None = None  # values come from the dropdown unless csv_mode
    only: str | None = None  # "txt2img" / "img2img": the axis exists on that tab only


# --------------------------------------------------------------------------- apply functions


def set_field(name: str) -> Apply:
    def apply(edit: CellEdit, value: Any, _values: Sequence[Any], _ctx: ScriptContext) -> None:
        edit.fields[name] = value

    return apply


def set_option(key: str, boolean: bool = False) -> Apply:
    def apply(edit: CellEdit, value: Any, _values: Sequence[Any], _ctx: ScriptContext) -> None:
        edit.options[key] = (str(value).lower() == "true") if boolean else value

    return apply


def set_override(key: str) -> Apply:
    """A1111's apply_override: the option for the cell, named in its override_settings too
    (the img2img token merging rule asks whether override_settings set the ratio)."""

    def apply(edit: CellEdit, value: Any, _values: Sequence[Any], _ctx: ScriptContext) -> None:
        edit.options[key] = value
        edit.fields["override_settings"] = {**(edit.current("override_settings") or {}), key: value}

    return apply


def _nothing(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    return None


def _prompt_sr(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    """Search (the first value) and replace in the prompt and negative prompt."""
    prompt, negative = _text(edit.current("prompt")), _text(edit.current("negative_prompt"))
    search = values[0]
    if search not in prompt and search not in negative:
        raise ValidationFailed(f"{TITLE}: Prompt S/R did not find {search!r} in the prompt or the negative prompt")
    edit.fields["prompt"] = prompt.replace(search, value)
    edit.fields["negative_prompt"] = negative.replace(search, value)


def _text(value: Any) -> str:
    if isinstance(value, list):
        raise ValidationFailed(f"{TITLE}: prompt axes need the prompt as one string, not a list")
    return value or ""


def _prompt_order(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    """Put the listed tokens into the prompt in this permutation's order, each taking the
    place of the earliest-found token."""
    prompt = _text(edit.current("prompt"))
    found = sorted((prompt.find(token), token) for token in value)
    parts = []
    for _, token in found:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token):]
    edit.fields["prompt"] = "".join(part + value[i] for i, part in enumerate(parts)) + prompt


def _checkpoint(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    edit.options["sd_model_checkpoint"] = closest_checkpoint(ctx.checkpoints, value, TITLE).title


def _refiner(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    if value in (None, "", "None", "none"):
        edit.fields["refiner_checkpoint"] = None
        return
    edit.fields["refiner_checkpoint"] = closest_checkpoint(ctx.checkpoints, value, TITLE).title


FACE_MODELS = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN"}


def _face_restore(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    """A1111's apply_face_restore: "CodeFormer" / "GFPGAN" turn restoration on with that
    model, "true"/"yes"/"y"/"1" turn it on, anything else off. A1111 stores the model name on
    a field its restorer never reads (so the option's model runs); here the name becomes the
    cell's face_restoration_model override, so the chosen model is the one that runs."""
    text = str(value).strip().lower()
    if text in FACE_MODELS:
        edit.options["face_restoration_model"] = FACE_MODELS[text]
    edit.fields["restore_faces"] = text in FACE_MODELS or text in ("true", "yes", "y", "1")


def _size(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    """"WIDTHxHEIGHT" (A1111 prints and ignores anything else; here it is a 422)."""
    width, _, height = str(value).partition("x")
    try:
        edit.fields["width"], edit.fields["height"] = int(width.strip()), int(height.strip())
    except ValueError:
        raise ValidationFailed(f"{TITLE}: Size values look like 512x768; received {value!r}") from None


def _vae(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    name = str(value).strip().lower()
    if name in ("auto", "automatic"):
        edit.options["sd_vae"] = "Automatic"
        return
    if name == "none":
        edit.options["sd_vae"] = "None"
        return
    for vae in ctx.vae_names:
        if vae.lower() == name:
            edit.options["sd_vae"] = vae
            return
    raise ValidationFailed(f"{TITLE}: unknown VAE {value!r}; known: {['Automatic', 'None', *ctx.vae_names]}")


def _styles(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    edit.styles.extend(name.strip() for name in str(value).split(",") if name.strip())


def _uni_pc_order(edit: CellEdit, value: Any, values: Sequence[Any], ctx: ScriptContext) -> None:
    edit.options["uni_pc_order"] = min(int(value), int(edit.current("steps")) - 1)


# --------------------------------------------------------------------------- the list


def _samplers(ctx: ScriptContext) -> list[str]:
    return list(ctx.sampler_names)


def _checkpoint_titles(ctx: ScriptContext) -> list[str]:
    return sorted((info.title for info in ctx.checkpoints), key=str.casefold)


def _upscalers(ctx: ScriptContext) -> list[str]:
    latent = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
              "Latent (nearest)", "Latent (nearest-exact)"]
    return latent + list(ctx.upscaler_names)


def _booleans(_ctx: ScriptContext) -> list[str]:
    return ["False", "True"]


AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", _nothing, fmt="nothing"),
    Axis("Seed", "int", set_field("seed")),
    Axis("Var. seed", "int", set_field("subseed")),
    Axis("Var. strength", "float", set_field("subseed_strength")),
    Axis("Steps", "int", set_field("steps")),
    Axis("Hires steps", "int", set_field("hr_second_pass_steps"), only="txt2img"),
    Axis("CFG Scale", "float", set_field("cfg_scale")),
    Axis("Image CFG Scale", "float", set_field("image_cfg_scale"), only="img2img"),
    Axis("Prompt S/R", "str", _prompt_sr, fmt="value"),
    Axis("Prompt order", "perm", _prompt_order, fmt="join"),
    Axis("Sampler", "str", set_field("sampler_name"), fmt="value", choices=_samplers, only="txt2img"),
    Axis("Hires sampler", "str", set_field("hr_sampler_name"), choices=_samplers, only="txt2img"),
    Axis("Sampler", "str", set_field("sampler_name"), fmt="value", choices=_samplers, only="img2img"),
    Axis("Checkpoint name", "str", _checkpoint, fmt="basename", cost=1.0, choices=_checkpoint_titles),
    Axis("Negative Guidance minimum sigma", "float", set_field("s_min_uncond")),
    Axis("Sigma Churn", "float", set_field("s_churn")),
    Axis("Sigma min", "float", set_field("s_tmin")),
    Axis("Sigma max", "float", set_field("s_tmax")),
    Axis("Sigma noise", "float", set_field("s_noise")),
    Axis("Schedule type", "str", set_field("scheduler"), choices=lambda ctx: list(ctx.scheduler_labels)),
    Axis("Schedule min sigma", "float", set_option("sigma_min")),
    Axis("Schedule max sigma", "float", set_option("sigma_max")),
    Axis("Schedule rho", "float", set_option("rho")),
    Axis("Beta schedule alpha", "float", set_option("beta_dist_alpha")),
    Axis("Beta schedule beta", "float", set_option("beta_dist_beta")),
    Axis("Eta", "float", set_field("eta")),
    Axis("Clip skip", "int", set_option("CLIP_stop_at_last_layers")),
    Axis("Denoising", "float", set_field("denoising_strength")),
    Axis("Initial noise multiplier", "float", set_field("initial_noise_multiplier")),
    Axis("Extra noise", "float", set_option("img2img_extra_noise")),
    Axis("Hires upscaler", "str", set_field("hr_upscaler"), choices=_upscalers, only="txt2img"),
    Axis("Cond. Image Mask Weight", "float", set_option("inpainting_mask_weight"), only="img2img"),
    Axis("VAE", "str", _vae, cost=0.7, choices=lambda ctx: ["Automatic", "None", *ctx.vae_names]),
    Axis("Styles", "str", _styles, choices=lambda ctx: [style.name for style in ctx.all_styles()]),
    Axis("UniPC Order", "int", _uni_pc_order, cost=0.5),
    Axis("Face restore", "str", _face_restore, fmt="value"),
    Axis("Token merging ratio", "float", set_override("token_merging_ratio")),
    Axis("Token merging ratio high-res", "float", set_override("token_merging_ratio_hr")),
    Axis(
        "Always discard next-to-last sigma",
        "str",
        set_option("always_discard_next_to_last_sigma", True),
        choices=_booleans,
    ),
    Axis("SGM noise multiplier", "str", set_option("sgm_noise_multiplier", True), choices=_booleans),
    Axis(
        "Refiner checkpoint",
        "str",
        _refiner,
        fmt="basename",
        cost=1.0,
        choices=lambda ctx: ["None", *_checkpoint_titles(ctx)],
    ),
    Axis("Refiner switch at", "float", set_field("refiner_switch_at")),
    Axis("RNG source", "str", set_option("randn_source"), choices=lambda _ctx: ["GPU", "CPU", "NV"]),
    Axis("FP8 mode", "str", None, cost=0.9, choices=lambda _ctx: ["Disable", "Enable for SDXL", "Enable"]),
    Axis("Size", "str", _size),
)


def axes_for(tab: str) -> list[Axis]:
    """The tab's list, in A1111's order: what an axis type index points into."""
    return [axis for axis in AXES if axis.only in (None, tab)]


def find_axis(tab: str, choice: int | str, which: str) -> Axis:
    """An index into the tab's list, or (a convenience) the axis label, any case."""
    axes = axes_for(tab)
    if isinstance(choice, int):
        if not 0 <= choice < len(axes):
            raise ValidationFailed(
                f"{TITLE}: {which} type {choice} is out of range; {tab} has {len(axes)} axis types (0-{len(axes) - 1})"
            )
        axis = axes[choice]
    else:
        found = next((a for a in axes if a.label.lower() == choice.strip().lower()), None)
        if found is None:
            raise ValidationFailed(f"{TITLE}: unknown {which} type {choice!r}; known: {[a.label for a in axes]}")
        axis = found
    if axis.apply is None:
        raise ValidationFailed(f"{TITLE}: the {which} axis '{axis.label}' is not supported by this server")
    return axis


# --------------------------------------------------------------------------- values


INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
FLOAT_RANGE = re.compile(rf"\s*({FLOAT})\s*-\s*({FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
FLOAT_COUNT = re.compile(rf"\s*({FLOAT})\s*-\s*({FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*\])?\s*")


def split_csv(text: str) -> list[str]:
    """Comma-separated values, CSV quoting honoured ("a, b", c), each stripped."""
    return [item.strip() for item in chain.from_iterable(csv.reader(StringIO(text), skipinitialspace=True))]


def to_csv(items: Sequence[str]) -> str:
    """The inverse, as A1111 writes a dropdown selection into the infotext."""
    with StringIO() as out:
        csv.writer(out).writerow(list(items))
        return out.getvalue().strip()


def _number(text: str) -> str:
    return text.replace(" ", "")


def _checked_count(count: int, text: str) -> int:
    if count > MAX_AXIS_VALUES:
        raise ValidationFailed(f"{TITLE}: {text!r} expands to {count} values; at most {MAX_AXIS_VALUES} per axis")
    return count


def _check_step(step: float, text: str) -> None:
    if step == 0:
        raise ValidationFailed(f"{TITLE}: the range {text!r} has a step of 0")


def expand_int(text: str) -> list[Any]:
    """"1-5" (inclusive), "1-10 (+2)" (step), "1-10 [4]" (count, evenly spaced, truncated to
    int); anything else is kept for the int conversion."""
    import numpy as np

    if text.strip() == "":
        return []
    match = INT_RANGE.fullmatch(text)
    if match is not None:
        start, end = int(_number(match.group(1))), int(_number(match.group(2))) + 1
        step = int(match.group(3)) if match.group(3) is not None else 1
        _check_step(step, text)
        _checked_count(len(range(start, end, step)), text)
        return list(range(start, end, step))
    match = INT_COUNT.fullmatch(text)
    if match is not None:
        count = _checked_count(int(match.group(3)) if match.group(3) is not None else 1, text)
        start, end = int(_number(match.group(1))), int(_number(match.group(2)))
        return [int(x) for x in np.linspace(start, end, count).tolist()]
    return [text]


def expand_float(text: str) -> list[Any]:
    """"0.5-1 (+0.25)" (step, end included as numpy's arange gives it), "1-2 [3]" (count)."""
    import numpy as np

    if text.strip() == "":
        return []
    match = FLOAT_RANGE.fullmatch(text)
    if match is not None:
        start, end = float(_number(match.group(1))), float(_number(match.group(2)))
        step = float(match.group(3)) if match.group(3) is not None else 1.0
        _check_step(step, text)
        if (end - start) / step < 0:
            return []
        _checked_count(int((end - start) / step) + 1, text)
        return np.arange(start, end + step, step).tolist()
    match = FLOAT_COUNT.fullmatch(text)
    if match is not None:
        count = _checked_count(int(float(match.group(3))) if match.group(3) is not None else 1, text)
        return np.linspace(float(_number(match.group(1))), float(_number(match.group(2))), count).tolist()
    return [text]


CONVERT: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "str": str}


def axis_values(axis: Axis, text: str, dropdown: Sequence[str], csv_mode: bool, ctx: ScriptContext) -> list[Any]:
    """A1111's process_axis: the raw list (dropdown for choice axes unless csv_mode; we fall
    back to the text when the dropdown is empty), ranges expanded, values converted."""
    if axis.label == "Nothing":
        return [0]
    raw = list(dropdown) if axis.choices is not None and not csv_mode and dropdown else split_csv(text or "")
    if axis.kind == "perm":
        return list(permutations(raw))
    if axis.kind in ("int", "float"):
        expand = expand_int if axis.kind == "int" else expand_float
        raw = [value for item in raw for value in expand(item)]
    _checked_count(len(raw), text or "")
    return [_convert(axis, value) for value in raw]


def _convert(axis: Axis, value: Any) -> Any:
    try:
        return CONVERT[axis.kind](value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"{TITLE}: {value!r} is not a valid {axis.kind} for the axis '{axis.label}'") from None


def check_values(axis: Axis, values: list[Any], ctx: ScriptContext) -> None:
    """A1111's confirm step, before anything runs: known samplers (checkpoints are checked
    when applied), and no empty axis."""
    if not values:
        raise ValidationFailed(f"{TITLE}: the axis '{axis.label}' has no values")
    if axis.choices is _samplers:
        known = {name.lower() for name in ctx.sampler_names}
        for value in values:
            if value.lower() not in known:
                raise ValidationFailed(f"{TITLE}: unknown sampler {value!r}; known: {list(ctx.sampler_names)}")


def format_value(axis: Axis, value: Any) -> str:
    """The legend text of one value."""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.fmt == "nothing":
        return ""
    if axis.fmt == "join":
        return ", ".join(value)
    if axis.fmt == "basename":
        return os.path.basename(str(value))
    return str(value) if axis.fmt == "value" else f"{axis.label}: {value}"
