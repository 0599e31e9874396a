"""Image upscalers as A1111 names them: "None", "Lanczos", "Nearest", its built-in models and files.

A1111 lists its built-in upscalers by fixed names ("ESRGAN_4x", "R-ESRGAN 4x+", "SwinIR 4x",
"ScuNET GAN", "DAT x2", ...) whether or not their weights were downloaded yet, and maps each
name to a file in its folder (models/RealESRGAN/RealESRGAN_x4plus.pth is "R-ESRGAN 4x+"); a
missing file is downloaded the first time the upscaler is used. The names, folders, file
names and origins come from the pinned weights registry (webui_api.weights); the listing
rules here are A1111's:

* ESRGAN, SwinIR: the folder's files by file stem; the built-in ("ESRGAN_4x", "SwinIR 4x")
  only while the folder has no model file.
* ScuNET: files by stem, "ScuNET GAN" while there is none, "ScuNET PSNR" unless a file is
  called so.
* RealESRGAN and DAT: the built-ins the `realesrgan_enabled_models` / `dat_enabled_models`
  options enable; DAT folder files by stem too. Other RealESRGAN-folder files are listed by
  stem as well (A1111 ignores them; listing them costs nothing and keeps them usable).

Every built-in name resolves even when its option hides it, and a built-in's file stem
("RealESRGAN_x4plus") resolves to it. All entries are sorted by name after None, Lanczos,
Nearest, as A1111 sorts `shared.sd_upscalers`.

Model files are loaded with spandrel, which detects the architecture from the weights, so
one loader serves every folder. torch and spandrel are imported inside the functions that
run a model, so importing this module (and `webui_api`) stays light.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from webui_api.errors import BadRequest
from webui_api.postprocess.face_restore.cache import ModelKey, PostprocessModels
from webui_api.weights.registry import UPSCALER, WeightFile, WeightsRegistry

MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors")
BUILTIN_NAMES = ("None", "Lanczos", "Nearest")
DEFAULT_SCALE = 4

# Built-ins A1111 lists only while their folder holds no model file (Upscaler.find_models
# adds the download URL only then).
LISTED_WHEN_FOLDER_EMPTY = frozenset({"ESRGAN_4x", "SwinIR 4x", "ScuNET GAN"})
# Folders whose built-ins an option enables, with A1111's defaults.
ENABLED_OPTIONS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "RealESRGAN": ("realesrgan_enabled_models", ("R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B")),
    "DAT": ("dat_enabled_models", ("DAT x2", "DAT x3", "DAT x4")),
}


@dataclass(frozen=True)
class UpscalerFamily:
    """One of A1111's upscaler folders: the cmd flag that moves it and the label it lists."""

    folder: str  # default folder name under the models dir
    flag: str  # key in /cmd-flags (argparse dest) that overrides the folder
    model_name: str | None  # A1111's `scaler.model_name` for files of this family


FAMILIES = (
    UpscalerFamily("ESRGAN", "esrgan_models_path", "ESRGAN_4x"),
    UpscalerFamily("RealESRGAN", "realesrgan_models_path", None),
    UpscalerFamily("SwinIR", "swinir_models_path", "SwinIR 4x"),
    UpscalerFamily("DAT", "dat_models_path", None),
    UpscalerFamily("ScuNET", "scunet_models_path", "ScuNET GAN"),
)


class UnknownUpscaler(BadRequest):
    """An upscaler name that no built-in or model file has (A1111 fails an assertion here)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"could not find upscaler named {name!r}",
            errors=f"upscaler {name!r} is not one of {known}",
        )


class UnusableUpscaler(BadRequest):
    """A listed file that does not load as an upscaler (wrong or damaged weights)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot use upscaler file {path.name} in {path.parent}", errors=reason)


class MissingUpscalerWeights(BadRequest):
    """A built-in upscaler whose file was not fetched (nothing may fetch it here)."""

    def __init__(self, name: str, weights: str, path: Path) -> None:
        super().__init__(f"{name}: weights file {path.name} is not in {path.parent}; fetch it with "
                         f'`webui-api models fetch "{weights}"` or copy the file there', errors=f"missing {path}")


@dataclass(frozen=True)
class UpscalerEntry:
    """One listed upscaler; `path` is None for the PIL built-ins. A built-in model has its
    registry name in `weights` and `path` where its file is (or will be once fetched)."""

    name: str
    model_name: str | None = None
    path: Path | None = None
    scale: int = DEFAULT_SCALE
    family: str | None = None
    weights: str | None = None  # registry name of a pinned file fetched on first use
    url: str | None = None  # its origin, shown as model_path until it is fetched (as A1111 does)

    @property
    def is_builtin(self) -> bool:
        return self.path is None

    @property
    def present(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def needs_fetch(self) -> bool:
        return self.weights is not None and not self.present

    def _model_path(self) -> str | None:
        if self.path is None:
            return None
        return self.url if self.needs_fetch and self.url else str(self.path)

    def api_item(self) -> dict[str, Any]:
        """A1111's UpscalerItem (model_url is always null there too)."""
        return {"name": self.name, "model_name": self.model_name, "model_path": self._model_path(), "model_url": None,
                "scale": self.scale}

    def realesrgan_item(self) -> dict[str, Any]:
        """A1111's RealesrganItem."""
        return {"name": self.name, "path": self._model_path(), "scale": self.scale}


def scale_from_name(stem: str) -> int:
    """The factor a file name advertises ("4x-UltraSharp", "RealESRGAN_x2plus"), else 4.

    Listing must not load every file; the real factor comes from the weights when a model runs.
    """
    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", stem.lower())
    if match is None:
        return DEFAULT_SCALE
    return int(match.group(1) or match.group(2))


def family_folders(models_dir: Path, cmd_flags: Mapping[str, Any]) -> list[tuple[UpscalerFamily, Path]]:
    """Each family's folder: its cmd flag when set, else <models>/<folder> as A1111 defaults."""
    folders = []
    for family in FAMILIES:
        flagged = cmd_flags.get(family.flag)
        folders.append((family, Path(flagged) if flagged else models_dir / family.folder))
    return folders


def model_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)


def scan_folder(family: UpscalerFamily, folder: Path) -> list[UpscalerEntry]:
    """Model files in one folder, sorted by name, named by file stem like A1111's friendly_name."""
    return [UpscalerEntry(p.stem, family.model_name, p, scale_from_name(p.stem), family.folder)
            for p in model_files(folder)]


def builtin_entry(weights: WeightFile, family: UpscalerFamily, folder: Path) -> UpscalerEntry:
    """A registry upscaler as A1111 lists it: its fixed name, the file it is saved as."""
    return UpscalerEntry(weights.name, family.model_name, folder / weights.filename, weights.scale or DEFAULT_SCALE,
                         family.folder, weights.name, weights.url)


def enabled_builtins(folder_name: str, options: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The built-in names an option enables for this folder; None: no option filters it."""
    if folder_name not in ENABLED_OPTIONS:
        return None
    key, default = ENABLED_OPTIONS[folder_name]
    value = (options or {}).get(key, default)
    return tuple(str(name) for name in value or ())


def family_entries(family: UpscalerFamily, folder: Path, builtins: list[WeightFile],
                   options: Mapping[str, Any] | None) -> list[UpscalerEntry]:
    """What A1111 lists for one folder (see the module docstring for the rules)."""
    builtin_files = {w.filename.lower() for w in builtins}
    files = scan_folder(family, folder)
    if family.folder == "RealESRGAN":  # the built-ins stand for their own files
        files = [e for e in files if e.path is not None and e.path.name.lower() not in builtin_files]
    enabled = enabled_builtins(family.folder, options)
    listed = []
    for weights in builtins:
        if weights.name in LISTED_WHEN_FOLDER_EMPTY and model_files(folder):
            continue
        if enabled is not None and weights.name not in enabled:
            continue
        if any(e.name == weights.name for e in files):
            continue
        listed.append(builtin_entry(weights, family, folder))
    return files + listed


def a1111_order(entries: Iterable[UpscalerEntry]) -> list[UpscalerEntry]:
    """None, Lanczos, Nearest first, then by lower-cased name (A1111's load_upscalers sort)."""
    return sorted(entries, key=lambda e: "" if e.is_builtin else e.name.lower())


@dataclass
class UpscalerCatalog:
    """Every upscaler the server offers, in A1111's order, plus the names that resolve
    without being listed (`aliases`: hidden built-ins and built-in file stems).

    Loaded models live in `models`, the server's PostprocessModels (Runtime owns it), so a
    catalog rebuilt for every request (the folders may change between calls) still reuses
    weights loaded by an earlier one. Without one, the catalog keeps its own. `fetch`, when
    given, downloads a built-in's missing file on first use (the routes normally fetch before
    queueing, so this is the fallback for jobs that name an upscaler only inside a script).
    """

    entries: list[UpscalerEntry]
    device: str = "cpu"  # "auto" (CUDA when present) or a torch device string, like Settings.device
    models: PostprocessModels = field(default_factory=PostprocessModels, repr=False)
    aliases: Mapping[str, UpscalerEntry] = field(default_factory=dict, repr=False)
    fetch: Callable[[str], Path] | None = field(default=None, repr=False)

    @classmethod
    def scan(cls, models_dir: Path, cmd_flags: Mapping[str, Any] | None = None, device: str = "cpu",
             models: PostprocessModels | None = None, options: Mapping[str, Any] | None = None,
             registry: WeightsRegistry | None = None) -> UpscalerCatalog:
        registry = registry or WeightsRegistry.builtin()
        listed: list[UpscalerEntry] = []
        hidden: list[UpscalerEntry] = []
        for family, folder in family_folders(models_dir, cmd_flags or {}):
            builtins = [w for w in registry.in_folder(family.folder) if w.kind == UPSCALER]
            shown = family_entries(family, folder, builtins, options)
            listed += shown
            hidden += [builtin_entry(w, family, folder) for w in builtins]
        builtins_pil = [UpscalerEntry(name) for name in BUILTIN_NAMES]
        return cls(builtins_pil + a1111_order(listed), device, models if models is not None else PostprocessModels(),
                   _aliases(listed, hidden))

    @classmethod
    def from_settings(cls, settings: Any, models: PostprocessModels | None = None,
                      options: Mapping[str, Any] | None = None, registry: WeightsRegistry | None = None,
                      fetch: Callable[[str], Path] | None = None) -> UpscalerCatalog:
        """From webui_api.settings.Settings: the models dir, the --*-models-path flags and the
        device the models run on (the generation device, as A1111's device_esrgan defaults);
        `options` decide which Real-ESRGAN / DAT built-ins are listed."""
        catalog = cls.scan(Path(settings.models_dir), settings.cmd_flags, settings.device, models, options, registry)
        catalog.fetch = fetch
        return catalog

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def api_items(self) -> list[dict[str, Any]]:
        return [entry.api_item() for entry in self.entries]

    def realesrgan_items(self) -> list[dict[str, Any]]:
        """A1111's /realesrgan-models: the enabled Real-ESRGAN built-ins (their download URL
        as path until fetched) and, here, other files in that folder."""
        return [e.realesrgan_item() for e in self.entries if e.family == "RealESRGAN"]

    def find(self, name: str | None) -> UpscalerEntry:
        """The entry called `name`; None means "None". Case-insensitive as a convenience (A1111
        matches exactly, so every name it accepts is accepted here too)."""
        wanted = "none" if name is None else str(name).lower()
        for entry in self.entries:
            if entry.name.lower() == wanted:
                return entry
        if wanted in self.aliases:
            return self.aliases[wanted]
        raise UnknownUpscaler(str(name), self.names())

    def weights_needed(self, names: Iterable[str | None]) -> list[str]:
        """Registry names of the built-in files these upscalers need and do not have yet
        (unknown names raise the usual 400)."""
        needed = [entry.weights for entry in (self.find(name) for name in names) if entry.needs_fetch]
        return list(dict.fromkeys(n for n in needed if n is not None))

    def model_for(self, entry: UpscalerEntry) -> Any:
        """The spandrel model of a file entry, loaded once per model cache (a built-in's
        missing file is fetched first when the catalog may fetch)."""
        if entry.path is None:
            raise ValueError(f"{entry.name} is a built-in upscaler with no model file")
        if entry.needs_fetch and entry.weights is not None:
            if self.fetch is None:
                raise MissingUpscalerWeights(entry.name, entry.weights, entry.path)
            self.fetch(entry.weights)
        path = entry.path
        return self.models.get(ModelKey("upscaler", path, self.device), lambda: load_model(path, self.device))

    def upscale(
        self, image: Image.Image, name: str | None, scale: float, tiling: TileSpec | None = None
    ) -> Image.Image:
        """Upscale `image` by `scale` with the named upscaler (A1111's Upscaler.upscale contract)."""
        entry = self.find(name)
        step = builtin_step(entry.name) if entry.is_builtin else model_step(self.model_for(entry), tiling or TileSpec())
        return upscale_to_scale(image, scale, step)


def _aliases(listed: list[UpscalerEntry], hidden: list[UpscalerEntry]) -> dict[str, UpscalerEntry]:
    """Names that resolve without being listed: every built-in (a listed file of the same
    name wins), a built-in under its file stem, and the built-in name of a file A1111 saved."""
    by_path = {e.path: e for e in listed if e.path is not None}
    aliases: dict[str, UpscalerEntry] = {}
    for entry in hidden:
        target = by_path.get(entry.path, entry) if entry.path is not None and entry.present else entry
        aliases.setdefault(entry.name.lower(), target)
        if entry.path is not None:
            aliases.setdefault(entry.path.stem.lower(), target)
    return aliases


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class TileSpec:
    """Tiled inference: tiles of `size` px (0 = whole image) padded by `overlap` px of context.

    Defaults are A1111's ESRGAN_tile / ESRGAN_tile_overlap options.
    """

    size: int = 192
    overlap: int = 8

    def __post_init__(self) -> None:
        if self.size < 0 or self.overlap < 0:
            raise ValueError(f"tile size and overlap must be >= 0, got size={self.size} overlap={self.overlap}")


Step = Callable[[Image.Image, float], Image.Image]


def builtin_step(name: str) -> Step:
    """One pass of a PIL built-in: "None" returns the image, the others resize by the factor."""
    if name == "None":
        return lambda image, _scale: image
    resample = Image.Resampling.LANCZOS if name == "Lanczos" else Image.Resampling.NEAREST
    return lambda image, scale: image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)


def model_step(model: Any, tiling: TileSpec) -> Step:
    """One pass of a model: its own factor whatever the target (the loop below handles the rest)."""
    return lambda image, _scale: run_model_tiled(model, image, tiling)


def upscale_to_scale(image: Image.Image, scale: float, step: Step) -> Image.Image:
    """A1111's loop: up to three passes until the target is reached, then Lanczos to exactly
    (size * scale) rounded down to a multiple of 8."""
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    for attempt in range(3):
        if image.width >= dest_w and image.height >= dest_h and (attempt > 0 or scale != 1):
            break
        before = image.size
        image = step(image, scale)
        if image.size == before:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    return image


def load_model(path: Path | None, device: str = "cpu") -> Any:
    """A spandrel ImageModelDescriptor in eval mode on `device`; loud when the file is no upscaler.

    On CUDA a model whose architecture supports it runs in fp16 (A1111's half-precision
    upscalers); on the CPU it stays fp32, where half is slow or unsupported."""
    import spandrel

    from webui_api.engine.device import resolve_device

    if path is None:
        raise ValueError("built-in upscalers have no model file to load")
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        raise UnusableUpscaler(path, "spandrel recognises no architecture in its weights") from exc
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused code in the pickle
        raise UnusableUpscaler(path, f"the pickle holds more than tensors (possibly code), so it was refused: {exc}; "
                                     "convert it to .safetensors") from exc
    except (EOFError, OSError, ValueError) as exc:  # truncated or not a weights file at all
        raise UnusableUpscaler(path, f"not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnusableUpscaler(path, f"it is a {type(descriptor).__name__}, not an image-to-image model")
    descriptor.eval()
    target = resolve_device(device)
    descriptor = descriptor.to(target)
    if target.type == "cuda" and descriptor.supports_half:
        descriptor = descriptor.half()
    return descriptor


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets that cover [0, length) with tiles of `tile` px (the last one may be short)."""
    if tile <= 0 or tile >= length:
        return [0]
    return list(range(0, length, tile))


def run_model_tiled(model: Any, image: Image.Image, tiling: TileSpec) -> Image.Image:
    """Run the model tile by tile so memory stays bounded on large images.

    Each tile is fed with `overlap` px of surrounding context; only the tile's own area of the
    output is kept, so seams see the same neighbourhood as an untiled run would near them.
    """
    import torch

    source = _to_tensor(image.convert("RGB"))
    scale = int(model.scale)
    height, width = source.shape[-2:]
    result = torch.zeros((1, 3, height * scale, width * scale), dtype=torch.float32)
    for top in tile_origins(height, tiling.size):
        for left in tile_origins(width, tiling.size):
            _run_tile(model, source, result, _Tile(top, left, tiling.size or max(height, width), tiling.overlap))
    return _to_image(result)


@dataclass(frozen=True)
class _Tile:
    top: int
    left: int
    size: int
    overlap: int


def _run_tile(model: Any, source: Any, result: Any, tile: _Tile) -> None:
    """Upscale one padded tile and write its unpadded centre into `result`."""
    import torch

    height, width = source.shape[-2:]
    bottom, right = min(tile.top + tile.size, height), min(tile.left + tile.size, width)
    pad_top, pad_left = max(tile.top - tile.overlap, 0), max(tile.left - tile.overlap, 0)
    pad_bottom, pad_right = min(bottom + tile.overlap, height), min(right + tile.overlap, width)
    with torch.inference_mode():
        out = model(source[:, :, pad_top:pad_bottom, pad_left:pad_right].to(model.device, model.dtype)).float().cpu()
    s = int(model.scale)
    inner = out[
        :, :, (tile.top - pad_top) * s : (bottom - pad_top) * s, (tile.left - pad_left) * s : (right - pad_left) * s
    ]
    result[:, :, tile.top * s : bottom * s, tile.left * s : right * s] = inner


def _to_tensor(image: Image.Image) -> Any:
    """RGB PIL image -> 1x3xHxW float tensor in [0, 1], channels in BGR order: A1111 feeds its
    spandrel upscalers BGR (upscaler_utils.pil_image_to_torch_bgr), so models behave the same."""
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.float32)[:, :, ::-1] / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).contiguous()


def _to_image(tensor: Any) -> Image.Image:
    """1x3xHxW BGR tensor in [0, 1] -> RGB PIL image (clamped, rounded)."""
    import numpy as np

    array = tensor[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]), "RGB")
