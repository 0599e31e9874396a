"""Forge's "additional modules": VAE and text-encoder files picked per job.

Forge lists every file in models/VAE and models/text_encoder as a module
(`GET /sdapi/v1/sd-modules`: `{model_name: file name, filename: full path}`) and a job names
the ones it wants in `forge_additional_modules` (full paths, as Forge's UI stores them). Names
are only ever matched against that listing, so a request cannot make the server read a file
outside those folders; a file name or stem is accepted too, for clients that send those.

The T5 tokenizer is looked up here as well. T5 v1.1's tokenizer ships with the package
(tokenizers/t5-v1_1-xxl) and is the default; a `t5-tokenizer` folder in models/text_encoder
(a Hugging Face tokenizer.json, or spiece.model) takes precedence, for whoever needs another.
A diffusers pipeline folder's own tokenizer_2/ (Flux) or tokenizer_3/ (SD3) wins over both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui_api.engine.loading import T5_V1_1_TOKENIZER, bundled_tokenizer_dir
from webui_api.engine.loading.discovery import ModelPaths, natural_sort_key, walk_files
from webui_api.errors import BadRequest

MODULE_EXTENSIONS = (".safetensors", ".sft", ".gguf", ".pt", ".pth", ".bin", ".ckpt")
T5_TOKENIZER_FOLDER = "t5-tokenizer"


@dataclass(frozen=True)
class ModuleFile:
    """One /sdapi/v1/sd-modules entry."""

    model_name: str
    filename: str

    def api_item(self) -> dict[str, str]:
        return {"model_name": self.model_name, "filename": self.filename}


def module_folders(paths: ModelPaths) -> tuple[Path, ...]:
    return (*paths.vae_dirs, *paths.text_encoder_dirs)


def scan_modules(paths: ModelPaths) -> list[ModuleFile]:
    """Every VAE / text-encoder file, keyed by file name (a later one with the same name wins)."""
    found: dict[str, str] = {}
    for folder in module_folders(paths):
        for path in walk_files(folder, MODULE_EXTENSIONS):
            if T5_TOKENIZER_FOLDER not in path.parts:
                found[path.name] = str(path)
    return [ModuleFile(name, found[name]) for name in sorted(found, key=natural_sort_key)]


def resolve_modules(requested: Sequence[str], listing: Iterable[ModuleFile]) -> tuple[Path, ...]:
    """The listed files the names refer to (full path, file name or stem); unknown names are a 400."""
    entries = list(listing)
    resolved: list[Path] = []
    for name in requested:
        entry = _match(name, entries)
        if entry is None:
            raise BadRequest(
                f"unknown module {name!r}: not a file in models/VAE or models/text_encoder (see /sdapi/v1/sd-modules)"
            )
        resolved.append(Path(entry.filename))
    return tuple(dict.fromkeys(resolved))


def _match(name: str, entries: list[ModuleFile]) -> ModuleFile | None:
    for entry in entries:
        if name == entry.filename or name == entry.model_name:
            return entry
    base = Path(name.replace("\\", "/")).name
    for entry in entries:
        if base == entry.model_name or base == Path(entry.model_name).stem:
            return entry
    return None


def t5_tokenizer_dirs(paths: ModelPaths) -> list[Path]:
    """Where the T5 tokenizer is looked for, first match wins: the models folders' t5-tokenizer/,
    then the bundled T5 v1.1 tokenizer."""
    user = [folder / T5_TOKENIZER_FOLDER for folder in paths.text_encoder_dirs]
    return [*user, bundled_tokenizer_dir(T5_V1_1_TOKENIZER, "tokenizer.json")]


def load_t5_tokenizer(paths: ModelPaths) -> Any:
    """T5's tokenizer (pad 0, end-of-sequence 1) from the first folder that has one."""
    # transformers exports it lazily (an alias of T5Tokenizer in 5.x); its type hints do not list it
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    for folder in t5_tokenizer_dirs(paths):
        if (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file():
            tokenizer = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
            if tokenizer.pad_token_id != 0 or tokenizer.eos_token_id != 1:
                raise BadRequest(f"the T5 tokenizer in {folder.name} must pad with id 0 and end with id 1")
            return tokenizer
    raise RuntimeError(f"no T5 tokenizer found in {[str(folder) for folder in t5_tokenizer_dirs(paths)]}")
