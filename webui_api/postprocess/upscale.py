"""Image upscalers as A1111 names them: "None", "Lanczos", "Nearest" and model files.

Model files (ESRGAN, Real-ESRGAN, SwinIR, DAT, ScuNET, ...) are loaded with spandrel, which
detects the architecture from the weights, so one loader serves every folder. A1111 keeps one
folder per family (models/ESRGAN, models/RealESRGAN, ...); the folder only decides the family
label that /sdapi/v1/upscalers reports as `model_name`.

torch and spandrel are imported inside the functions that run a model, so importing this module
(and `webui_api`) stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from PIL import Image

from webui_api.errors import BadRequest
from webui_api.postprocess.face_restore.cache import ModelKey, PostprocessModels

MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors")
BUILTIN_NAMES = ("None", "Lanczos", "Nearest")
DEFAULT_SCALE = 4


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


@dataclass(frozen=True)
class UpscalerEntry:
    """One listed upscaler; `path` is None for the PIL built-ins."""

    name: str
    model_name: str | None = None
    path: Path | None = None
    scale: int = DEFAULT_SCALE
    family: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.path is None

    def api_item(self) -> dict[str, Any]:
        """A1111's UpscalerItem (model_url is always null there too)."""
        path = None if self.path is None else str(self.path)
        return {"name": self.name, "model_name": self.model_name, "model_path": path, "model_url": None, "scale": self.scale}

    def realesrgan_item(self) -> dict[str, Any]:
        """A1111's RealesrganItem."""
        return {"name": self.name, "path": None if self.path is None else str(self.path), "scale": self.scale}


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


def scan_folder(family: UpscalerFamily, folder: Path) -> list[UpscalerEntry]:
    """Model files in one folder, sorted by name, named by file stem like A1111's friendly_name."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)
    return [UpscalerEntry(p.stem, family.model_name, p, scale_from_name(p.stem), family.folder) for p in files]


@dataclass
class UpscalerCatalog:
    """Every upscaler the server offers, in A1111's order: built-ins, then each family's files.

    Loaded models live in `models`, the server's PostprocessModels (Services owns it), so a
    catalog rebuilt for every request (the folders may change between calls) still reuses
    weights loaded by an earlier one. Without one, the catalog keeps its own.
    """

    entries: list[UpscalerEntry]
    device: str = "cpu"  # "auto" (CUDA when present) or a torch device string, like Settings.device
    models: PostprocessModels = field(default_factory=PostprocessModels, repr=False)

    @classmethod
    def scan(cls, models_dir: Path, cmd_flags: Mapping[str, Any] | None = None, device: str = "cpu",
             models: PostprocessModels | None = None) -> UpscalerCatalog:
        builtins = [UpscalerEntry(name) for name in BUILTIN_NAMES]
        files = [e for fam, folder in family_folders(models_dir, cmd_flags or {}) for e in scan_folder(fam, folder)]
        return cls(builtins + files, device, models if models is not None else PostprocessModels())

    @classmethod
    def from_settings(cls, settings: Any, models: PostprocessModels | None = None) -> UpscalerCatalog:
        """From webui_api.settings.Settings: the models dir, the --*-models-path flags and the
        device the models run on (the generation device, as A1111's device_esrgan defaults)."""
        return cls.scan(Path(settings.models_dir), settings.cmd_flags, settings.device, models)

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def api_items(self) -> list[dict[str, Any]]:
        return [entry.api_item() for entry in self.entries]

    def realesrgan_items(self) -> list[dict[str, Any]]:
        """Local Real-ESRGAN files (A1111 also lists its download URLs; this server is offline)."""
        return [e.realesrgan_item() for e in self.entries if e.family == "RealESRGAN"]

    def find(self, name: str | None) -> UpscalerEntry:
        """The entry called `name`; None means "None". Case-insensitive as a convenience (A1111
        matches exactly, so every name it accepts is accepted here too)."""
        wanted = "none" if name is None else str(name).lower()
        for entry in self.entries:
            if entry.name.lower() == wanted:
                return entry
        raise UnknownUpscaler(str(name), self.names())

    def model_for(self, entry: UpscalerEntry) -> Any:
        """The spandrel model of a file entry, loaded once per model cache."""
        if entry.path is None:
            raise ValueError(f"{entry.name} is a built-in upscaler with no model file")
        path = entry.path
        return self.models.get(ModelKey("upscaler", path, self.device), lambda: load_model(path, self.device))

    def upscale(self, image: Image.Image, name: str | None, scale: float, tiling: TileSpec | None = None) -> Image.Image:
        """Upscale `image` by `scale` with the named upscaler (A1111's Upscaler.upscale contract)."""
        entry = self.find(name)
        step = builtin_step(entry.name) if entry.is_builtin else model_step(self.model_for(entry), tiling or TileSpec())
        return upscale_to_scale(image, scale, step)


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
    inner = out[:, :, (tile.top - pad_top) * s:(bottom - pad_top) * s, (tile.left - pad_left) * s:(right - pad_left) * s]
    result[:, :, tile.top * s:bottom * s, tile.left * s:right * s] = inner


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
