"""Infotext: the "parameters" text A1111 writes into every image, built and parsed byte-exact.

Clients copy infotexts between servers (PNG chunks, `info.infotexts`, the `infotext` request
field, /png-info), so both directions must agree with A1111 v1.10 to the character, including
its odd corners: values parsed back are strings while the added defaults are numbers or
booleans, empty values silently vanish, and a last line with fewer than three `key: value`
entries is prompt text, not parameters.

No PIL here: this module is plain text in, plain text or dicts out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from types import MappingProxyType
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

from webui_api.errors import BadRequest

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# One `key: value` entry of the parameter line (grammar in the API reference, section 6):
# a key of 2+ word/space/-/ characters, then a JSON-ish quoted value or anything up to a comma.
_PARAM_ENTRY = re.compile(
    r"""\s*
    (\w[\w \-/]+)                      # key
    :\s*
    ( "(?:\\.|[^\\"])+"                # quoted value, backslash escapes allowed
    | [^,]*                            # bare value, may be empty
    )
    (?:,|$)""",
    re.VERBOSE,
)
_SIZE_VALUE = re.compile(r"^(\d+)x(\d+)$")
_MIN_PARAM_ENTRIES = 3  # fewer matches on the last line: it is part of the prompt


# --------------------------------------------------------------------------- writing


def quote(value: Any) -> str:
    """Write one parameter value the way A1111 does, so that the parser can split on commas.

    Values whose text contains a comma, colon or newline become JSON literals with non-ASCII
    kept raw; everything else is the plain `str()` (so floats read "7.0", booleans "True").
    """
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:  # A1111 would fail here; the string form is the closest faithful output
        return json.dumps(text, ensure_ascii=False)


def _format_entry(key: str, value: Any) -> str:
    """A1111 writes a flag-like entry whose value repeats its key as the bare key."""
    if key == value:
        return key
    return f"{key}: {quote(value)}"


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Build the infotext: prompt, optional negative line, one parameter line; stripped.

    `params` must already be in A1111's key order (insertion order is kept); None values are
    skipped, exactly as A1111 drops parameters that do not apply.
    """
    entries = ", ".join(_format_entry(k, v) for k, v in params.items() if v is not None)
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{entries}".strip()


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _SplitInfotext:
    """The three parts of an infotext before the parameter line is decoded."""

    prompt: str
    negative_prompt: str
    param_line: str


def _split_infotext(text: str) -> _SplitInfotext:
    """Separate prompt lines, negative-prompt lines and the parameter line.

    Every line after the first one starting with "Negative prompt:" belongs to the negative
    prompt; the last line is the parameter line only when it has enough entries to look like one.
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_ENTRY.findall(last_line)) < _MIN_PARAM_ENTRIES:
        lines.append(last_line)
        last_line = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return _SplitInfotext(_join_lines(prompt_lines), _join_lines(negative_lines), last_line)


def _join_lines(lines: list[str]) -> str:
    """A1111 joins with newlines but never starts with one: empty leading lines vanish."""
    joined = ""
    for line in lines:
        joined += ("" if joined == "" else "\n") + line
    return joined


def _unquote(value: str) -> str:
    """Decode a JSON-quoted value; text that is not valid JSON is kept as written."""
    if len(value) < 1 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _parse_param_line(line: str) -> dict[str, Any]:
    """Decode every `key: value` entry; "WxH" values split into `key-1` / `key-2`.

    Entries with an empty value are dropped: A1111 fails on them and skips them silently.
    """
    parsed: dict[str, Any] = {}
    for key, raw in _PARAM_ENTRY.findall(line):
        if raw == "":
            continue
        value = _unquote(raw)
        size = _SIZE_VALUE.match(value)
        if size is None:
            parsed[key] = value
        else:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
    return parsed


# Defaults A1111 adds for keys an infotext does not mention, in A1111's order, around the
# old-hires-fix conversion (which needs the hires defaults and runs before the RNG default).
_DEFAULTS_BEFORE_HIRES_FIX: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES_FIX: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def _set_missing(res: dict[str, Any], defaults: Iterable[tuple[str, Any]]) -> None:
    for key, value in defaults:
        res.setdefault(key, value)


def parse_infotext(
    text: str,
    skip_fields: Iterable[str] = (),
    *,
    styles: Sequence[StyleLike] = (),
    infotext_styles: str = "Apply if any",
    current_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """Parse an infotext into A1111's dict (its `parse_generation_parameters`).

    Keys parsed from the text come first with string values, then Prompt / Negative prompt,
    then the defaults A1111 adds for absent keys (with their non-string types). The keyword
    arguments mirror A1111 options: `skip_fields` is `infotext_skip_pasting` (keys removed at
    the end); `styles` (styles.csv, in load order) and `infotext_styles` decide whether style
    text is cut out of the prompts and reported as "Styles array". `current_modules` is Forge's
    forge_additional_modules option: "Module N" keys naming other files become "VAE/TE".
    """
    split = _split_infotext(text)
    res = _parse_param_line(split.param_line)
    prompts = _extract_prompt_styles(res, split, styles, infotext_styles)
    res["Prompt"] = prompts.prompt
    res["Negative prompt"] = prompts.negative_prompt
    res.setdefault("Clip skip", "1")  # an absent clip skip means the default, 1
    _append_hypernet_tag(res)
    if "Hires resize-1" not in res:
        res["Hires resize-1"], res["Hires resize-2"] = 0, 0
    _set_missing(res, _DEFAULTS_BEFORE_HIRES_FIX)
    _restore_old_hires_fix(res)
    _set_missing(res, _DEFAULTS_AFTER_HIRES_FIX)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and _uses_emphasis(prompts.prompt, prompts.negative_prompt):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _apply_backcompat(res)
    for key in skip_fields:
        res.pop(key, None)
    _forge_modules(res, current_modules)
    return res


def _forge_modules(res: dict[str, Any], current_modules: Sequence[str]) -> None:
    """Forge's parse: the "Module 1..n" values (file names without extension), in order, become
    "VAE/TE" (the forge_additional_modules paste field) unless they are the modules already
    selected. Forge swaps in the listed file's full name; we keep the name without extension,
    which the module resolver accepts. Infotexts without Module keys are left as A1111 parses them."""
    modules = [str(value) for key, value in res.items() if re.fullmatch(r"Module \d+", key)]
    current = [PurePath(str(name)).stem for name in current_modules]
    if modules and sorted(modules) != sorted(current):
        res["VAE/TE"] = modules
    _forge_hires_modules(res)


def _forge_hires_modules(res: dict[str, Any]) -> None:
    """Forge's parse: "Hires Module 1..n" become "Hires VAE/TE" (the hr_additional_modules paste
    field): "Use same choices" and "Built-in" (meaning []) stand alone, other values are file
    names without extension. Forge also adds ['Use same choices'] to infotexts without the keys;
    we leave those as A1111 parses them (A1111's png-info has no such key)."""
    modules = [str(value) for key, value in res.items() if re.fullmatch(r"Hires Module \d+", key)]
    if not modules:
        return
    if modules[0] in ("Use same choices", "Built-in"):
        res["Hires VAE/TE"] = [] if modules[0] == "Built-in" else ["Use same choices"]
    else:
        res["Hires VAE/TE"] = modules


def _append_hypernet_tag(res: dict[str, Any]) -> None:
    """Old infotexts name a hypernetwork as a parameter; A1111 turns it into a prompt tag."""
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"


def _restore_old_hires_fix(res: dict[str, Any]) -> None:
    """Convert pre-1.0 "First pass size" infotexts into today's Size + Hires resize keys.

    Follows A1111 with its option `use_old_hires_fix_width_height` at the default (off).
    A first-pass size of 0x0 meant "pick one near 512x512 pixels", recomputed here.
    """
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        first_w, first_h = int(first_w), int(first_h)
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
        if first_w == 0 or first_h == 0:
            first_w, first_h = _old_first_pass_size(width, height)
    except (ValueError, ZeroDivisionError, OverflowError):
        return  # a 0x0 or absurd size: A1111 fails here; leave the keys as parsed instead
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _old_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """Old hires fix: scale to about 512*512 pixels, each side rounded up to a multiple of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


# --------------------------------------------------------------------------- styles


class StyleLike(Protocol):
    """A prompt style as styles.csv defines it (webui_api.styles.PromptStyle fits)."""

    @property
    def name(self) -> str: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def negative_prompt(self) -> str | None: ...


INFOTEXT_STYLES_MODES = ("Ignore", "Apply", "Discard", "Apply if any")


@dataclass(frozen=True)
class _StyledPrompts:
    """Prompts with the text of the found styles cut out, and those styles' names."""

    style_names: list[str]
    prompt: str
    negative_prompt: str


def _cut_style_text(style_text: str | None, prompt: str) -> str | None:
    """The prompt without the style's text, or None when the style is not in it.

    A style with "{prompt}" must wrap the (stripped) prompt; any other style must end it,
    and a ", " left before it goes too. An empty style text matches every prompt.
    """
    stripped, style = prompt.strip(), (style_text or "").strip()
    if "{prompt}" in style:
        left, _, right = style.partition("{prompt}")
        if stripped.startswith(left) and stripped.endswith(right):
            return stripped[len(left):len(stripped) - len(right)]
        return None
    if not stripped.endswith(style):
        return None
    rest = stripped[:len(stripped) - len(style)]
    return rest[:-2] if rest.endswith(", ") else rest


def _cut_style(style: StyleLike, prompt: str, negative_prompt: str) -> tuple[str, str] | None:
    """Both prompts without the style, or None unless both contain their part of it."""
    if not style.prompt and not style.negative_prompt:
        return None
    cut_prompt = _cut_style_text(style.prompt, prompt)
    if cut_prompt is None:
        return None
    cut_negative = _cut_style_text(style.negative_prompt, negative_prompt)
    return None if cut_negative is None else (cut_prompt, cut_negative)


def _find_styles(styles: Sequence[StyleLike], prompt: str, negative_prompt: str) -> _StyledPrompts:
    """Peel styles off the prompts, outermost first, until none matches (each used once)."""
    remaining, found = list(styles), []
    while True:
        for style in remaining:
            cut = _cut_style(style, prompt, negative_prompt)
            if cut is not None:
                prompt, negative_prompt = cut
                remaining.remove(style)
                found.append(style.name)
                break
        else:
            return _StyledPrompts(found[::-1], prompt, negative_prompt)


def _extract_prompt_styles(
    res: dict[str, Any], split: _SplitInfotext, styles: Sequence[StyleLike], mode: str
) -> _StyledPrompts:
    """A1111's style inference while parsing, which also normalises the hires prompts.

    Hires prompts (checked only for infotexts newer than v1.8.0-139 or without a readable
    version) must carry the same styles, otherwise nothing is cut anywhere; a hires prompt
    equal to the main one becomes "" ("use the same"), and once either is present both are set.
    """
    if mode not in INFOTEXT_STYLES_MODES:
        raise ValueError(f"infotext_styles must be one of {INFOTEXT_STYLES_MODES}, received {mode!r}")
    unchanged = _StyledPrompts([], split.prompt, split.negative_prompt)
    if mode == "Ignore":
        return unchanged
    main = _find_styles(styles, split.prompt, split.negative_prompt)
    if _hires_prompts_follow_styles(res):
        hires = _find_styles(
            styles, res.get("Hires prompt", split.prompt), res.get("Hires negative prompt", split.negative_prompt)
        )
        if hires.style_names != main.style_names:
            return unchanged
        res["Hires prompt"] = "" if hires.prompt == main.prompt else hires.prompt
        res["Hires negative prompt"] = "" if hires.negative_prompt == main.negative_prompt else hires.negative_prompt
    if (mode == "Apply if any" and main.style_names) or mode == "Apply":
        res["Styles array"] = main.style_names
    return main


def _hires_prompts_follow_styles(res: Mapping[str, Any]) -> bool:
    if "Hires prompt" not in res and "Hires negative prompt" not in res:
        return False
    version = _parse_version(res.get("Version"))
    return version is None or version > _V180_HR_STYLES


# --------------------------------------------------------------------------- emphasis


# Tokens of A1111's attention syntax: escapes, brackets, ":weight)" closers, text runs, stray ":".
_ATTENTION_TOKEN = re.compile(
    r"""\\[()\[\]\\]         # escaped bracket or backslash: literal text
    | \\                     # lone backslash
    | [(\[]                  # opening bracket
    | :\s*([+-]?[.\d]+)\s*\) # explicit weight closing a round bracket
    | [)\]]                  # closing bracket
    | [^\\()\[\]:]+          # plain text
    | :                      # colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1


@dataclass
class _AttentionScan:
    """Weighted text segments of a prompt being scanned, with the open brackets' positions."""

    segments: list[list[Any]]
    round_open: list[int]
    square_open: list[int]

    def scale_from(self, start: int, multiplier: float) -> None:
        for segment in self.segments[start:]:
            segment[1] *= multiplier

    def add_text(self, text: str) -> None:
        """Plain text; each BREAK word becomes its own marker segment."""
        for i, part in enumerate(_BREAK_WORD.split(text)):
            if i > 0:
                self.segments.append(["BREAK", -1.0])
            self.segments.append([part, 1.0])


def _scan_token(scan: _AttentionScan, token: str, weight: str | None) -> None:
    """Apply one token; a closer with no matching opener is literal text, as in A1111."""
    if token.startswith("\\"):
        scan.segments.append([token[1:], 1.0])
    elif token in ("(", "["):
        (scan.round_open if token == "(" else scan.square_open).append(len(scan.segments))
    elif weight is not None and scan.round_open and _is_float(weight):
        scan.scale_from(scan.round_open.pop(), float(weight))
    elif token == ")" and scan.round_open:
        scan.scale_from(scan.round_open.pop(), _ROUND_MULTIPLIER)
    elif token == "]" and scan.square_open:
        scan.scale_from(scan.square_open.pop(), _SQUARE_MULTIPLIER)
    else:
        scan.add_text(token)


def _is_float(text: str) -> bool:
    """A1111 crashes on weights like "1.2.3"; here they stay literal text instead."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _attention_segments(text: str) -> list[list[Any]]:
    """Split a prompt into [text, weight] runs like A1111's prompt attention parser."""
    scan = _AttentionScan(segments=[], round_open=[], square_open=[])
    for match in _ATTENTION_TOKEN.finditer(text):
        _scan_token(scan, match.group(0), match.group(1))
    for start in scan.round_open:  # unclosed brackets still weigh everything after them
        scan.scale_from(start, _ROUND_MULTIPLIER)
    for start in scan.square_open:
        scan.scale_from(start, _SQUARE_MULTIPLIER)
    return _merge_equal_weights(scan.segments or [["", 1.0]])


def _merge_equal_weights(segments: list[list[Any]]) -> list[list[Any]]:
    merged: list[list[Any]] = []
    for text, weight in segments:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return merged


def _uses_emphasis(prompt: str, negative_prompt: str) -> bool:
    """True when any non-BREAK segment of either prompt has a weight other than 1.0.

    A1111 then adds "Emphasis: Original", since such infotexts predate the emphasis option.
    """
    segments = _attention_segments(prompt) + _attention_segments(negative_prompt)
    return any(weight != 1.0 for text, weight in segments if text != "BREAK")


# --------------------------------------------------------------------------- version backcompat


_V160 = Version("1.6.0")
_V170_TSNR = Version("v1.7.0-225")  # 225 commits after the v1.7.0 tag
_V180 = Version("1.8.0")
_V180_HR_STYLES = Version("1.8.0-139")


def _parse_version(text: Any) -> Version | None:
    """Parse a "Version" value as A1111 does: PEP 440, keeping "tag-commits" of "tag-commits-ghash".

    Anything else (fork names, garbage) is no version at all, which disables the backcompat flags.
    """
    if not isinstance(text, str):
        return None
    head = re.match(r"([^-]+-[^-]+)-.*", text)
    try:
        return Version(head.group(1) if head else text)
    except InvalidVersion:
        return None


def _apply_backcompat(res: dict[str, Any]) -> None:
    """Flag old-behaviour options for infotexts written by older A1111 versions.

    A1111 does this when its `auto_backcompat` option is on, which is the default.
    """
    version = _parse_version(res.get("Version"))
    if version is None:
        return
    if version < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if version < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InfotextOption:
    """An infotext key that stands for an option, and the option default's type.

    The type is the default's (as A1111's cast uses it); None means "the current value's type"
    (only the checkpoint, whose default is None).
    """

    infotext_key: str
    option: str
    value_type: type | None


# In A1111's option registration order (that is the order overrides are produced in).
INFOTEXT_OPTIONS: tuple[InfotextOption, ...] = (
    InfotextOption("Face restoration", "face_restoration", bool),
    InfotextOption("Model hash", "sd_model_checkpoint", None),
    InfotextOption("Emphasis", "emphasis", str),
    InfotextOption("Clip skip", "CLIP_stop_at_last_layers", int),
    InfotextOption("RNG", "randn_source", str),
    InfotextOption("Tiling", "tiling", bool),
    InfotextOption("Hires refiner", "hires_fix_refiner_pass", str),
    InfotextOption("VAE", "sd_vae", str),
    InfotextOption("VAE Encoder", "sd_vae_encode_method", str),
    InfotextOption("VAE Decoder", "sd_vae_decode_method", str),
    InfotextOption("Conditional mask weight", "inpainting_mask_weight", float),
    InfotextOption("Noise multiplier", "initial_noise_multiplier", float),
    InfotextOption("Extra noise", "img2img_extra_noise", float),
    InfotextOption("NGMS", "s_min_uncond", float),
    InfotextOption("NGMS all steps", "s_min_uncond_all", bool),
    InfotextOption("Token merging ratio", "token_merging_ratio", float),
    InfotextOption("Token merging ratio hr", "token_merging_ratio_hr", float),
    InfotextOption("Pad conds", "pad_cond_uncond", bool),
    InfotextOption("Pad conds v0", "pad_cond_uncond_v0", bool),
    InfotextOption("Old prompt editing timelines", "use_old_scheduling", bool),
    InfotextOption("Downcast alphas_cumprod", "use_downcasted_alpha_bar", bool),
    InfotextOption("Refiner switch by sampling steps", "refiner_switch_by_sample_steps", bool),
    InfotextOption("Eta DDIM", "eta_ddim", float),
    InfotextOption("Eta", "eta_ancestral", float),
    InfotextOption("Sigma churn", "s_churn", float),
    InfotextOption("Sigma tmin", "s_tmin", float),
    InfotextOption("Sigma tmax", "s_tmax", float),
    InfotextOption("Sigma noise", "s_noise", float),
    InfotextOption("Schedule min sigma", "sigma_min", float),
    InfotextOption("Schedule max sigma", "sigma_max", float),
    InfotextOption("Schedule rho", "rho", float),
    InfotextOption("ENSD", "eta_noise_seed_delta", int),
    InfotextOption("Discard penultimate sigma", "always_discard_next_to_last_sigma", bool),
    InfotextOption("SGM noise multiplier", "sgm_noise_multiplier", bool),
    InfotextOption("UniPC variant", "uni_pc_variant", str),
    InfotextOption("UniPC skip type", "uni_pc_skip_type", str),
    InfotextOption("UniPC order", "uni_pc_order", int),
    InfotextOption("UniPC lower order final", "uni_pc_lower_order_final", bool),
    InfotextOption("Noise Schedule", "sd_noise_schedule", str),
    InfotextOption("Skip Early CFG", "skip_early_cond", float),
    InfotextOption("Beta scheduler alpha", "beta_dist_alpha", float),
    InfotextOption("Beta scheduler beta", "beta_dist_beta", float),
    # registered later by A1111's built-in hypertile extension
    InfotextOption("Hypertile U-Net", "hypertile_enable_unet", bool),
    InfotextOption("Hypertile U-Net second pass", "hypertile_enable_unet_secondpass", bool),
    InfotextOption("Hypertile U-Net max depth", "hypertile_max_depth_unet", int),
    InfotextOption("Hypertile U-Net max tile size", "hypertile_max_tile_unet", int),
    InfotextOption("Hypertile U-Net swap size", "hypertile_swap_size_unet", int),
    InfotextOption("Hypertile VAE", "hypertile_enable_vae", bool),
    InfotextOption("Hypertile VAE max depth", "hypertile_max_depth_vae", int),
    InfotextOption("Hypertile VAE max tile size", "hypertile_max_tile_vae", int),
    InfotextOption("Hypertile VAE swap size", "hypertile_swap_size_vae", int),
    # Forge's infotext_to_setting_name_mapping
    InfotextOption("VAE/TE", "forge_additional_modules", tuple),
)

INFOTEXT_TO_OPTION: Mapping[str, str] = MappingProxyType({o.infotext_key: o.option for o in INFOTEXT_OPTIONS})


def _cast_option_value(entry: InfotextOption, value: Any, current: Any) -> Any:
    """Convert an infotext value to the option's type, the way A1111 casts it.

    Quirk kept on purpose: only the exact string "False" is false; any other non-empty
    string, "0" included, casts to True, as in A1111.
    """
    value_type = entry.value_type or (type(current) if current is not None else None)
    if value_type is None:
        return None
    if value_type is bool and value == "False":
        return False
    try:
        return value_type(value)
    except (TypeError, ValueError) as exc:
        raise BadRequest(
            f"infotext value {value!r} for {entry.infotext_key!r} is not a valid "
            f"{value_type.__name__} for option {entry.option!r}",
            errors=str(exc),
        ) from exc


def override_settings_from_infotext(
    params: Mapping[str, Any], options_snapshot: Mapping[str, Any]
) -> dict[str, Any]:
    """Option overrides implied by parsed infotext params (A1111's `get_override_settings`).

    Only options whose cast value differs from the snapshot are returned. The checkpoint
    ("Model hash") is ignored while `disable_weights_auto_swap` is on (A1111's default), and
    options the snapshot does not hold are ignored, since this server has no such setting.
    """
    overrides: dict[str, Any] = {}
    for entry in INFOTEXT_OPTIONS:
        value = params.get(entry.infotext_key)
        if value is None or entry.option not in options_snapshot:
            continue
        if entry.option == "sd_model_checkpoint" and options_snapshot.get("disable_weights_auto_swap", True):
            continue
        current = options_snapshot[entry.option]
        cast = _cast_option_value(entry, value, current)
        if cast is not None and cast != current:
            overrides[entry.option] = cast
    return overrides
