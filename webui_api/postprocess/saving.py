"""Writing result images to disk where and as A1111 does (`save_images: true`).

Folders: <outdir>/<directories_filename_pattern> under the data dir (outputs/txt2img-images/
2026-11-23/...). Names: a five-digit counter continuing after the highest one already in the
folder, then "-" and the samples_filename_pattern ("[seed]" by default when saving to dirs),
so tools that browse A1111 output folders see the same layout. `save_txt` writes the infotext
beside each image as <name>.txt.

Pattern tags follow A1111's FilenameGenerator: [seed], [seed_first], [seed_last], [steps],
[cfg], [width], [height], [styles], [sampler], [scheduler], [sampler_scheduler], [model_hash],
[model_name], [date], [datetime<format><zone>], [job_timestamp], [prompt_hash<n>],
[negative_prompt_hash<n>], [full_prompt_hash<n>], [prompt], [prompt_spaces], [prompt_words],
[batch_number], [batch_size], [generation_number], [hasprompt<a|b>...], [clip_skip],
[denoising], [vae_filename], [none], [image_hash<n>], [basename]. A tag that cannot be filled
(unknown, or a fact this server lacks such as [user] or [prompt_no_styles]) stays in the name
as written, as A1111 does; tags that A1111 skips (e.g. [batch_number] for a batch of one)
drop the text before them too.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from PIL import Image

from webui_api.paths import output_root, resolve_inside
from webui_api.postprocess.encode import encode_image, encoding_options

# A1111's sanitize_filename_part: these become "_", a leading space and trailing spaces/dots go.
_INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
_INVALID_PREFIX = " "
_INVALID_POSTFIX = " ."
MAX_FILENAME_PART_LENGTH = 128  # A1111's --filenames-max-length default
BEFORE_RESTORATION = "-before-face-restoration"  # A1111's suffix (option save_images_before_face_restoration)
BEFORE_HIRES = "-before-highres-fix"  # A1111's suffix (option save_images_before_highres_fix)
_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
MAX_NUMBERING_TRIES = 500


class Skip:
    """A tag value meaning "leave this tag and the text before it out" (A1111's
    NOTHING_AND_SKIP_PREVIOUS_TEXT)."""


SKIP = Skip()


@dataclass(frozen=True)
class JobNameFacts:
    """What a generation job adds to the tags (absent for extras)."""

    steps: int
    cfg_scale: float
    sampler_name: str
    scheduler_label: str
    batch_size: int
    n_iter: int
    all_seeds: tuple[int, ...]
    main_prompt: str
    main_negative_prompt: str
    job_timestamp: str
    clip_skip: int = 1
    styles: tuple[str, ...] = ()
    model_name: str | None = None
    model_hash: str | None = None
    denoising_strength: float | None = None
    vae_name: str | None = None


@dataclass(frozen=True)
class NameFacts:
    """What the pattern tags can refer to for one image."""

    seed: int | None
    prompt: str
    width: int
    height: int
    now: datetime
    job: JobNameFacts | None = None
    index: int = 0  # the image's position in the job (batch_index + iteration * batch_size)
    basename: str = ""
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    max_prompt_words: int = 8  # directories_max_prompt_words

    @property
    def batch_index(self) -> int:
        return self.index % self.job.batch_size if self.job else 0


def sanitize(text: str, replace_spaces: bool = True, max_length: int = MAX_FILENAME_PART_LENGTH) -> str:
    """A1111's sanitize_filename_part: invalid characters become "_", no leading space, no
    trailing spaces or dots, at most `max_length` characters."""
    if replace_spaces:
        text = text.replace(" ", "_")
    cleaned = "".join("_" if ch in _INVALID_FILENAME_CHARS else ch for ch in text)
    return cleaned.lstrip(_INVALID_PREFIX)[:max_length].rstrip(_INVALID_POSTFIX)


def prompt_words(prompt: str, limit: int = 8) -> str:
    """A1111's [prompt_words]: the first `limit` words without punctuation ("empty" if none)."""
    words = [word for word in _NONLETTERS.split(prompt or "") if word] or ["empty"]
    return sanitize(" ".join(words[:limit]), replace_spaces=False)


def _hash(text: str, *args: str) -> str:
    length = int(args[0]) if args and args[0] != "" else 8
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _datetime(facts: NameFacts, *args: str) -> str:
    """[datetime], [datetime<format>], [datetime<format><time zone>]."""
    fmt = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
    moment = facts.now
    if len(args) > 1:
        try:
            moment = moment.astimezone(ZoneInfo(args[1]))
        except (ZoneInfoNotFoundError, ValueError):
            pass  # A1111 ignores an unknown zone too
    try:
        text = moment.strftime(fmt)
    except (ValueError, TypeError):
        text = moment.strftime(DEFAULT_TIME_FORMAT)
    return sanitize(text, replace_spaces=False)


def _hasprompt(facts: NameFacts, *args: str) -> str:
    """[hasprompt<word|default>...]: each word found in the prompt, else its default."""
    lower, out = facts.prompt.lower(), ""
    for arg in args:
        if arg == "":
            continue
        expected, _, default = arg.partition("|")
        if expected.lower() in lower:
            out += expected.lower()
        elif default:
            out += default
    return sanitize(out)


def _image_hash(facts: NameFacts, *args: str) -> str | None:
    if facts.image is None:
        return None
    length = int(args[0]) if args and args[0] != "" else None
    return hashlib.sha256(facts.image.tobytes()).hexdigest()[:length]


def _job(read: Callable[[JobNameFacts, NameFacts], Any]) -> Callable[..., Any]:
    """A tag that needs the generation job: unfilled (kept as written) without one."""
    return lambda facts, *args: None if facts.job is None else read(facts.job, facts)


def _scheduler(job: JobNameFacts, with_sampler: bool) -> str:
    label = job.scheduler_label.capitalize()
    return sanitize(f"{job.sampler_name} {label}" if with_sampler else label, replace_spaces=False)


def _vae_filename(job: JobNameFacts) -> str:
    """A1111's [vae_filename]: the VAE file's name before its first dot, "NoneType" without one."""
    if job.vae_name is None:
        return "NoneType"
    parts = Path(job.vae_name).name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]


TAGS: Mapping[str, Callable[..., Any]] = {
    "basename": lambda f: f.basename or "img",
    "seed": lambda f: "" if f.seed is None else f.seed,
    "seed_first": _job(lambda j, f: f.seed if j.batch_size == 1 else j.all_seeds[0]),
    "seed_last": _job(lambda j, f: SKIP if j.batch_size == 1 else j.all_seeds[-1]),
    "steps": _job(lambda j, f: j.steps),
    "cfg": _job(lambda j, f: j.cfg_scale),
    "width": lambda f: f.width,
    "height": lambda f: f.height,
    "styles": _job(lambda j, f: sanitize(", ".join(s for s in j.styles if s != "None") or "None", False)),
    "sampler": _job(lambda j, f: sanitize(j.sampler_name, False)),
    "sampler_scheduler": _job(lambda j, f: _scheduler(j, True)),
    "scheduler": _job(lambda j, f: _scheduler(j, False)),
    "model_hash": _job(lambda j, f: j.model_hash),
    "model_name": _job(lambda j, f: None if j.model_name is None else sanitize(j.model_name, False)),
    "date": lambda f: f.now.strftime("%Y-%m-%d"),
    "datetime": _datetime,
    "job_timestamp": _job(lambda j, f: j.job_timestamp),
    "prompt_hash": lambda f, *a: _hash(f.prompt, *a),
    "negative_prompt_hash": lambda f, *a: None if f.job is None else _hash(f.job.main_negative_prompt, *a),
    "full_prompt_hash": lambda f, *a: (
        None if f.job is None else _hash(f"{f.job.main_prompt} {f.job.main_negative_prompt}", *a)
    ),
    "prompt": lambda f: sanitize(f.prompt),
    "prompt_spaces": lambda f: sanitize(f.prompt, replace_spaces=False),
    "prompt_words": lambda f: prompt_words(f.prompt, f.max_prompt_words),
    "batch_number": _job(lambda j, f: SKIP if j.batch_size == 1 else f.batch_index + 1),
    "batch_size": _job(lambda j, f: j.batch_size),
    "generation_number": _job(lambda j, f: SKIP if j.n_iter == 1 and j.batch_size == 1 else f.index + 1),
    "hasprompt": _hasprompt,
    "clip_skip": _job(lambda j, f: j.clip_skip),
    "denoising": _job(lambda j, f: j.denoising_strength if j.denoising_strength else SKIP),
    "vae_filename": _job(lambda j, f: _vae_filename(j)),
    "none": lambda f: "",
    "image_hash": _image_hash,
}


def _split_args(tag: str) -> tuple[str, list[str]]:
    """"datetime<%Y><UTC>" -> ("datetime", ["%Y", "UTC"])."""
    args: list[str] = []
    while (match := _PATTERN_ARG.match(tag)) is not None:
        tag, arg = match.groups()
        args.insert(0, arg)
    return tag, args


def _fill(tag: str, facts: NameFacts) -> Any:
    """A tag's value, None when it cannot be filled."""
    name, args = _split_args(tag)
    fill = TAGS.get(name.lower())
    if fill is None:
        return None
    try:
        return fill(facts, *args)
    except (ValueError, TypeError, IndexError):
        return None  # e.g. [prompt_hash<x>]: A1111 reports and leaves the tag


def apply_pattern(pattern: str, facts: NameFacts) -> str:
    """A1111's FilenameGenerator.apply: fill each [tag]; unfillable ones stay as written."""
    out = ""
    for match in _PATTERN.finditer(pattern):
        text, tag = match.groups()
        if tag is None:
            out += text
            continue
        value = _fill(tag, facts)
        if value is SKIP:
            continue
        out += text + (f"[{tag}]" if value is None else str(value))
    return out


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """One past the highest leading counter of the files in `folder` (0 for an empty folder)."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(prefix):
            head = os.path.splitext(path.name[len(prefix):])[0].split("-")[0]
            highest = max(highest, int(head)) if head.isdigit() else highest
    return highest + 1


@dataclass(frozen=True)
class SaveTarget:
    """Where one kind of image goes: the A1111 option naming its folder, and a counter prefix."""

    outdir_option: str  # e.g. "outdir_txt2img_samples"
    shared_outdir_option: str  # "outdir_samples" / "outdir_grids": overrides when set
    basename: str = ""  # "grid" for grids
    to_dirs_option: str | None = "save_to_dirs"  # None: never in a subfolder (extras)
    short_filename: bool = False  # no pattern after the counter (extras; grids unless extended)
    info_key: str = "parameters"  # the PNG text chunk the info goes to ("extras" for extras)

    @property
    def is_grid(self) -> bool:
        return self.basename == "grid"


TXT2IMG_SAMPLES = SaveTarget("outdir_txt2img_samples", "outdir_samples")
IMG2IMG_SAMPLES = SaveTarget("outdir_img2img_samples", "outdir_samples")
TXT2IMG_GRIDS = SaveTarget("outdir_txt2img_grids", "outdir_grids", "grid", "grid_save_to_dirs")
IMG2IMG_GRIDS = SaveTarget("outdir_img2img_grids", "outdir_grids", "grid", "grid_save_to_dirs")
EXTRAS_SAMPLES = SaveTarget("outdir_extras_samples", "outdir_samples", "", None, True, "extras")


def target_root(target: SaveTarget, options: Mapping[str, Any], data_dir: Path) -> tuple[Path, str]:
    """(root, outdir below it): an absolute outdir (set by the operator) is its own root, a
    relative one lives under the data dir. Nothing this target writes may leave the root."""
    return output_root(str(options.get(target.shared_outdir_option) or options.get(target.outdir_option)), data_dir)


def target_folder(target: SaveTarget, options: Mapping[str, Any], data_dir: Path, facts: NameFacts) -> Path:
    """<outdir>[/<directories_filename_pattern>], resolved inside the target's root (UnsafePath otherwise)."""
    root, outdir = target_root(target, options, data_dir)
    sub = ""
    if target.to_dirs_option is not None and options.get(target.to_dirs_option, True):
        sub = apply_pattern(str(options.get("directories_filename_pattern") or "[prompt_words]"), facts)
        sub = sub.lstrip(" ").rstrip("\\ /")
    return resolve_inside(root, outdir, sub, what="directories_filename_pattern" if sub else target.outdir_option)


def file_decoration(target: SaveTarget, options: Mapping[str, Any], facts: NameFacts, suffix: str = "") -> str:
    """The part after the counter (without the "-"): the samples pattern, nothing for short
    names (extras, grids unless grid_extended_filename) or images without a seed."""
    short = target.short_filename or (target.is_grid and not options.get("grid_extended_filename", False))
    if short or facts.seed is None:
        return suffix
    default = "[seed]" if options.get("save_to_dirs", True) else "[seed]-[prompt_spaces]"
    return apply_pattern(str(options.get("samples_filename_pattern") or default), facts) + suffix


def free_path(folder: Path, basename: str, decoration: str, extension: str) -> Path:
    """The first unused numbered name, counting on from the folder's highest counter."""
    start = next_sequence_number(folder, basename)
    for offset in range(MAX_NUMBERING_TRIES):
        number = f"{start + offset:05}" if not basename else f"{basename}-{start + offset:04}"
        path = folder / f"{number}{decoration}.{extension}"
        if not path.exists():
            return path
    raise FileExistsError(f"no free file name in {folder} after {MAX_NUMBERING_TRIES} tries from {start}")


def chosen_path(folder: Path, target: SaveTarget, decoration: str, extension: str, options: Mapping[str, Any]) -> Path:
    """A1111's naming: counter + "-decoration" (save_images_add_number, or no decoration at
    all), else the decoration alone."""
    if options.get("save_images_add_number", True) or decoration == "":
        return free_path(folder, target.basename, f"-{decoration}" if decoration else "", extension)
    return folder / f"{decoration}.{extension}"


def fit_name_length(path: Path) -> Path:
    """Shorten the stem to what the file system allows (A1111 uses statvfs's f_namemax)."""
    try:
        limit = os.statvfs(path.parent).f_namemax
    except (AttributeError, OSError):
        return path
    extension = path.suffix
    return path.with_name(path.stem[: limit - max(4, len(extension))] + extension)


def final_path(path: Path, options: Mapping[str, Any]) -> Path:
    """save_images_replace_action: "Replace" overwrites, otherwise "-1", "-2"... is appended."""
    if options.get("save_images_replace_action", "Replace") == "Replace":
        return path
    stem, n, candidate = path.with_suffix(""), 0, path
    while candidate.exists():
        n += 1
        candidate = Path(f"{stem}-{n}{path.suffix}")
    return candidate


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a .tmp file so a folder watcher never sees half an image (as A1111 does)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass(frozen=True)
class ImageText:
    """The text stored with a saved image: `info` goes to target.info_key ("parameters" for
    generations; "extras" for extras, whose `existing` items keep the source's chunks)."""

    info: str | None
    existing: Mapping[str, str] = field(default_factory=dict)


def image_bytes(image: Image.Image, fmt: str, target: SaveTarget, text: ImageText, options: Mapping[str, Any]) -> bytes:
    """Encode with metadata: PNG text chunks (existing items + info under its key), JPEG/WEBP
    the info as EXIF UserComment; nothing when enable_pnginfo is off."""
    encoding = encoding_options(options)
    if not options.get("enable_pnginfo", True):
        return encode_image(image, fmt, **encoding)
    if target.info_key == "parameters":
        extra = {k: v for k, v in text.existing.items() if k != "parameters"} if fmt == "png" else None
        return encode_image(image, fmt, infotext=text.info, extra_text=extra or None, **encoding)
    if fmt != "png":
        return encode_image(image, fmt, infotext=text.info, **encoding)
    items = {k: v for k, v in text.existing.items() if isinstance(v, str)}
    if text.info is not None:
        items[target.info_key] = text.info
    parameters = items.pop("parameters", None)
    return encode_image(image, fmt, infotext=parameters, extra_text=items or None, **encoding)


def save_image(
    image: Image.Image,
    target: SaveTarget,
    facts: NameFacts,
    infotext: str | ImageText | None,
    options: Mapping[str, Any],
    data_dir: Path,
    forced_name: str | None = None,
    suffix: str = "",
) -> Path:
    """Encode `image` in samples_format (grid_format for grids) with its text and write it;
    with save_txt the info also goes to <name>.txt. `forced_name` replaces the numbering
    (extras' use_original_name_batch); `suffix` ends the name (A1111's
    "-before-face-restoration")."""
    text = infotext if isinstance(infotext, ImageText) else ImageText(infotext)
    root, _ = target_root(target, options, data_dir)
    folder = target_folder(target, options, data_dir, facts)
    fmt = str(options.get("grid_format" if target.is_grid else "samples_format", "png")).lower()
    extension = "jpg" if fmt == "jpeg" else fmt
    if forced_name is not None:
        path = folder / f"{forced_name}.{extension}"
    else:
        path = chosen_path(folder, target, file_decoration(target, options, facts, suffix), extension, options)
    path = resolve_inside(root, final_path(fit_name_length(path), options), what="samples_filename_pattern")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, image_bytes(image, fmt, target, text, options))
    if options.get("save_txt", False) and text.info is not None:
        path.with_suffix(".txt").write_text(f"{text.info}\n", encoding="utf8")
    return path


# --------------------------------------------------------------------------- jobs and extras


def keeps_before_hires(job: Any, options: Mapping[str, Any], save_images: bool) -> bool:
    """A1111 saves each first-pass picture of hires fix when samples are saved and
    save_images_before_highres_fix is on."""
    return bool(getattr(job, "hires", None) is not None and save_images and options.get("samples_save", True)
                and options.get("save_images_before_highres_fix", False))


def job_name_facts(job: Any, model: Any = None, result: Any = None, styles: Sequence[str] = ()) -> JobNameFacts:
    """The tags' view of a webui_api.jobs.GenerationJob (plus the model and result facts)."""
    scheduler = job.sampling.schedule.label
    strength = job.img2img.denoising_strength if job.img2img is not None else None
    if job.hires is not None:
        strength = job.hires.denoising_strength
    return JobNameFacts(
        steps=job.sampling.steps, cfg_scale=job.sampling.cfg_scale, sampler_name=job.sampling.sampler_name,
        scheduler_label=scheduler, batch_size=job.batch_size, n_iter=job.n_iter, all_seeds=tuple(job.seeds.seeds),
        main_prompt=job.prompts[0] if job.prompts else "",
        main_negative_prompt=job.negative_prompts[0] if job.negative_prompts else "",
        job_timestamp=job.job_timestamp, clip_skip=job.clip_skip, styles=tuple(styles),
        model_name=getattr(model, "model_name", None), model_hash=getattr(model, "hash", None),
        denoising_strength=strength, vae_name=getattr(result, "vae_name", None),
    )


def save_samples(result: Any, infotexts: list[str], options: Mapping[str, Any], data_dir: Path,
                 target: SaveTarget = TXT2IMG_SAMPLES, now: datetime | None = None,
                 job: JobNameFacts | None = None, before_restoration: Sequence[Image.Image] = (),
                 before_hires: Sequence[Image.Image] = ()) -> list[Path]:
    """Write every image of a JobResult (GeneratedImage: image, seed, prompt) with its infotext.

    The intermediate images go in A1111's order, so the counters run as there: a batch's
    first-pass pictures of hires fix (`before_hires`, suffix "-before-highres-fix") before
    the batch, and each image as decoded before face restoration (`before_restoration`,
    "-before-face-restoration") just before its restored image; both in result order, with
    the infotext and name facts of the image they belong to."""
    moment = now or datetime.now()
    words = int(options.get("directories_max_prompt_words", 8) or 8)
    batch_size = max(int(getattr(job, "batch_size", 1) or 1), 1)
    paths: list[Path] = []

    def save(image: Image.Image, index: int, suffix: str) -> None:
        generated = result.images[index]
        facts = NameFacts(generated.seed, generated.prompt, image.width, image.height, moment, job, index,
                          image=image, max_prompt_words=words)
        paths.append(save_image(image, target, facts, infotexts[index], options, data_dir, suffix=suffix))

    for index in range(min(len(result.images), len(infotexts))):
        if index % batch_size == 0:
            for first in range(index, min(index + batch_size, len(before_hires), len(result.images))):
                save(before_hires[first], first, BEFORE_HIRES)
        if index < len(before_restoration):
            save(before_restoration[index], index, BEFORE_RESTORATION)
        save(result.images[index].image, index, "")
    return paths


def save_grid(grid: Image.Image, result: Any, infotext: str | None, options: Mapping[str, Any], data_dir: Path,
              target: SaveTarget = TXT2IMG_GRIDS, now: datetime | None = None,
              job: JobNameFacts | None = None) -> Path:
    """The grid as grid-NNNN.<grid_format>, named after the first image's seed and prompt."""
    first = result.images[0]
    words = int(options.get("directories_max_prompt_words", 8) or 8)
    facts = NameFacts(first.seed, first.prompt, grid.width, grid.height, now or datetime.now(), job,
                      basename="grid", image=grid, max_prompt_words=words)
    return save_image(grid, target, facts, infotext, options, data_dir)


def save_extras(image: Image.Image, infotext: str, items: Mapping[str, Any], options: Mapping[str, Any],
                data_dir: Path, name: str | None = None, now: datetime | None = None) -> Path:
    """An extras result as A1111's extras tab saves it: flat in outputs/extras-images, numbered
    (or under the source file's name with use_original_name_batch), the postprocessing text in
    an "extras" chunk beside the source's own chunks."""
    facts = NameFacts(None, "", image.width, image.height, now or datetime.now(), image=image)
    forced = None
    if name is not None and options.get("use_original_name_batch", True):
        forced = os.path.splitext(os.path.basename(name))[0] or None  # an empty name is numbered
    existing = {k: v for k, v in items.items() if isinstance(k, str) and isinstance(v, str)}
    return save_image(image, EXTRAS_SAMPLES, facts, ImageText(infotext, existing), options, data_dir, forced)
