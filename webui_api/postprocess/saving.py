"""Writing result images to disk where and as A1111 does (`save_images: true`).

Folders: <outdir>/<directories_filename_pattern> under the data dir (outputs/txt2img-images/
2026-11-23/...). Names: a five-digit counter continuing after the highest one already in the
folder, then "-" and the samples_filename_pattern ("[seed]" by default when saving to dirs),
so tools that browse A1111 output folders see the same layout.

Only a subset of A1111's filename pattern tags is understood (see TAGS); an unknown tag is
left in the name as written, as A1111 does for tags it cannot fill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from PIL import Image

from webui_api.postprocess.encode import encode_image, encoding_options

# Characters A1111 replaces in file names (its invalid_filename_chars plus control characters).
_INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
_TAG = re.compile(r"\[(\w+)\]")
MAX_NUMBERING_TRIES = 500


@dataclass(frozen=True)
class NameFacts:
    """What the pattern tags can refer to for one image."""

    seed: int | None
    prompt: str
    width: int
    height: int
    now: datetime


def sanitize(text: str, max_length: int = 128) -> str:
    """A file-name-safe fragment: invalid characters become "_", no leading/trailing dots or spaces."""
    cleaned = "".join("_" if ch in _INVALID_FILENAME_CHARS else ch for ch in text)
    return cleaned.strip(" .")[:max_length]


def _prompt_words(prompt: str) -> str:
    """A1111's [prompt_words]: the prompt's words, without punctuation, space-joined."""
    return " ".join(re.findall(r"[\w]+", prompt))


TAGS: Mapping[str, Callable[[NameFacts], str]] = {
    "seed": lambda f: "" if f.seed is None else str(f.seed),
    "prompt": lambda f: sanitize(f.prompt).replace(" ", "_"),
    "prompt_spaces": lambda f: sanitize(f.prompt),
    "prompt_words": lambda f: sanitize(_prompt_words(f.prompt)),
    "width": lambda f: str(f.width),
    "height": lambda f: str(f.height),
    "date": lambda f: f.now.strftime("%Y-%m-%d"),
    "datetime": lambda f: f.now.strftime("%Y%m%d%H%M%S"),
}


def apply_pattern(pattern: str, facts: NameFacts) -> str:
    """Replace each known [tag]; unknown tags stay as written."""
    return _TAG.sub(lambda m: TAGS[m.group(1).lower()](facts) if m.group(1).lower() in TAGS else m.group(0), pattern)


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """One past the highest leading counter of the files in `folder` (0 for an empty folder)."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name.startswith(prefix):
            head = Path(path.name[len(prefix):]).stem.split("-")[0]
            highest = max(highest, int(head)) if head.isdigit() else highest
    return highest + 1


@dataclass(frozen=True)
class SaveTarget:
    """Where one kind of image goes: the A1111 option naming its folder, and a counter prefix."""

    outdir_option: str  # e.g. "outdir_txt2img_samples"
    shared_outdir_option: str  # "outdir_samples" / "outdir_grids": overrides when set
    basename: str = ""  # "grid" for grids
    to_dirs_option: str = "save_to_dirs"


TXT2IMG_SAMPLES = SaveTarget("outdir_txt2img_samples", "outdir_samples")
IMG2IMG_SAMPLES = SaveTarget("outdir_img2img_samples", "outdir_samples")
TXT2IMG_GRIDS = SaveTarget("outdir_txt2img_grids", "outdir_grids", "grid", "grid_save_to_dirs")


def target_folder(target: SaveTarget, options: Mapping[str, Any], data_dir: Path, facts: NameFacts) -> Path:
    """<data dir>/<outdir>[/<directories_filename_pattern>] (absolute outdirs are used as given)."""
    base = data_dir / str(options.get(target.shared_outdir_option) or options.get(target.outdir_option))
    if options.get(target.to_dirs_option, True):
        sub = apply_pattern(str(options.get("directories_filename_pattern") or "[prompt_words]"), facts)
        base = base / sub.strip().rstrip("\\ /")
    return base


def file_decoration(target: SaveTarget, options: Mapping[str, Any], facts: NameFacts) -> str:
    """The part after the counter: "-<pattern>", "" when the pattern is empty (grids: none)."""
    if target.basename or facts.seed is None:
        return ""
    default = "[seed]" if options.get("save_to_dirs", True) else "[seed]-[prompt_spaces]"
    text = apply_pattern(str(options.get("samples_filename_pattern") or default), facts)
    return f"-{text}" if text else ""


def free_path(folder: Path, basename: str, decoration: str, extension: str) -> Path:
    """The first unused numbered name, counting on from the folder's highest counter."""
    start = next_sequence_number(folder, basename)
    for offset in range(MAX_NUMBERING_TRIES):
        number = f"{start + offset:05}" if not basename else f"{basename}-{start + offset:04}"
        path = folder / f"{number}{decoration}.{extension}"
        if not path.exists():
            return path
    raise FileExistsError(f"no free file name in {folder} after {MAX_NUMBERING_TRIES} tries from {start}")


def save_image(
    image: Image.Image,
    target: SaveTarget,
    facts: NameFacts,
    infotext: str | None,
    options: Mapping[str, Any],
    data_dir: Path,
) -> Path:
    """Encode `image` in samples_format (grid_format for grids) with its infotext and write it."""
    folder = target_folder(target, options, data_dir, facts)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = str(options.get("grid_format" if target.basename == "grid" else "samples_format", "png")).lower()
    extension = "jpg" if fmt == "jpeg" else fmt
    path = free_path(folder, target.basename, file_decoration(target, options, facts), extension)
    with_info = infotext if options.get("enable_pnginfo", True) else None
    path.write_bytes(encode_image(image, fmt, infotext=with_info, **encoding_options(options)))
    return path


def save_samples(result: Any, infotexts: list[str], options: Mapping[str, Any], data_dir: Path,
                 target: SaveTarget = TXT2IMG_SAMPLES, now: datetime | None = None) -> list[Path]:
    """Write every image of a JobResult (GeneratedImage: image, seed, prompt) with its infotext."""
    moment = now or datetime.now()
    paths = []
    for generated, infotext in zip(result.images, infotexts):
        facts = NameFacts(generated.seed, generated.prompt, generated.image.width, generated.image.height, moment)
        paths.append(save_image(generated.image, target, facts, infotext, options, data_dir))
    return paths


def save_grid(grid: Image.Image, result: Any, infotext: str | None, options: Mapping[str, Any], data_dir: Path,
              target: SaveTarget = TXT2IMG_GRIDS, now: datetime | None = None) -> Path:
    """The grid as grid-NNNN.<grid_format>, named after the first image's seed and prompt."""
    first = result.images[0]
    facts = NameFacts(first.seed, first.prompt, grid.width, grid.height, now or datetime.now())
    return save_image(grid, target, facts, infotext, options, data_dir)
