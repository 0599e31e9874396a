"""Running the two interrogators of POST /sdapi/v1/interrogate (on the scheduler's worker).

"clip": A1111's InterrogateModels.interrogate: a BLIP caption, then for every category the
CLIP-ranked best phrases appended (", phrase" or ", (phrase:0.123)" with
`interrogate_return_ranks`). "deepdanbooru": A1111's DeepDanbooru.tag: the image resized and
filled to 512x512, tags above the threshold formatted by the deepbooru options.

Models are loaded once into the server's PostprocessModels cache (keyed by file and device)
and, unless `interrogate_keep_models_in_memory` is on, parked in CPU RAM after each call as
A1111 does. Everything here runs on the worker thread, one call at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import NotFound
from ..postprocess.face_restore.cache import ModelKey, PostprocessModels
from .categories import limited, load_categories
from .tags import TagOptions, clip_suffix, format_tags
from .weights import InterrogateFolders

MODELS = ("clip", "deepdanbooru")
DEEPBOORU_SIZE = 512


def check_model_name(name: str | None) -> str:
    """A1111: anything but "clip" or "deepdanbooru" is a 404 "Model not found"."""
    if name not in MODELS:
        raise NotFound("Model not found")
    return str(name)


@dataclass
class Interrogator:
    """The interrogate models of one server: where their files are and where they run."""

    folders: InterrogateFolders
    models: PostprocessModels
    device: str = "cpu"  # "auto" or a torch device string (Settings.device)
    dtype: str = "auto"  # Settings.dtype: "auto" is half precision on CUDA, like A1111 without --no-half
    categories_dir: Path | None = None  # <data-dir>/interrogate, read when it exists

    @classmethod
    def from_settings(cls, settings: Any, models: PostprocessModels) -> Interrogator:
        return cls(InterrogateFolders.from_settings(settings), models, settings.device, settings.dtype,
                   Path(settings.data_dir) / "interrogate")

    def check_files(self, model: str) -> None:
        """Refuse before queueing when a weight file is missing (400 naming file and folder)."""
        if model == "clip":
            self.folders.blip_file()
            self.folders.clip_file()
        else:
            self.folders.deepdanbooru_file()

    def run(self, model: str, image: Image.Image, options: Mapping[str, Any]) -> str:
        if model == "clip":
            return self.clip_caption(image, options)
        return self.deepdanbooru_tags(image, options)

    def clip_caption(self, image: Image.Image, options: Mapping[str, Any]) -> str:
        from . import blip, clip

        keep = bool(options.get("interrogate_keep_models_in_memory", False))
        blip_model = self._on_device("BLIP", self.folders.blip_file(), blip.load_blip)
        try:
            text = blip.caption(blip_model, image, _caption_settings(options))
        finally:
            self._park(blip_model, keep)
        clip_model = self._on_device("CLIP", self.folders.clip_file(), clip.load_clip)
        try:
            return text + self._ranked(clip_model, image, options)
        finally:
            self._park(clip_model, keep)

    def _ranked(self, clip_model: Any, image: Image.Image, options: Mapping[str, Any]) -> str:
        from ..engine.loading import load_openclip_tokenizer
        from . import clip

        tokenizer = load_openclip_tokenizer()  # CLIP's vocabulary, padded with id 0 like clip.tokenize
        features = clip.image_features(clip_model, image)
        skip = options.get("interrogate_clip_skip_categories") or ()
        limit = int(options.get("interrogate_clip_dict_limit", 1500))
        suffix = ""
        for category in load_categories(self.categories_dir, skip):
            labels = limited(category.items, limit)
            if not labels:
                continue
            texts = clip.text_features(clip_model, tokenizer, labels)
            matches = clip.rank(features, texts, labels, category.topn)
            suffix += clip_suffix(matches, bool(options.get("interrogate_return_ranks", False)))
        return suffix

    def deepdanbooru_tags(self, image: Image.Image, options: Mapping[str, Any]) -> str:
        import numpy as np
        import torch

        from ..engine.image_prep import TargetSize, resize_image
        from .deepdanbooru import load_deepdanbooru

        model = self._on_device("deepdanbooru", self.folders.deepdanbooru_file(), load_deepdanbooru)
        try:
            picture = resize_image(2, image.convert("RGB"), TargetSize(DEEPBOORU_SIZE, DEEPBOORU_SIZE))
            param = next(model.parameters())
            pixels = torch.from_numpy(np.expand_dims(np.array(picture, dtype=np.float32), 0) / 255)
            with torch.no_grad():
                probabilities = model(pixels.to(param.device, param.dtype))[0].float().cpu().numpy()
        finally:
            self._park(model, bool(options.get("interrogate_keep_models_in_memory", False)))
        return format_tags(model.tags, probabilities.tolist(), TagOptions.from_options(options))

    def _on_device(self, kind: str, path: Path, load: Any) -> Any:
        """The cached model (loaded on the CPU once), moved to the interrogation device and dtype."""
        import torch

        model = self.models.get(ModelKey(kind, path, "cpu"), lambda: load(path))
        device = self._device()
        half = device.type == "cuda" and self.dtype in ("auto", "float16")
        return model.to(device, torch.float16 if half else torch.float32)

    def _device(self) -> Any:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @staticmethod
    def _park(model: Any, keep: bool) -> None:
        """A1111's send_*_to_ram: back to CPU RAM after use unless the option keeps it on the GPU."""
        if not keep and next(model.parameters()).device.type != "cpu":
            import torch

            model.to("cpu", torch.float32)


def _caption_settings(options: Mapping[str, Any]) -> Any:
    from .blip import CaptionSettings

    return CaptionSettings(
        num_beams=int(options.get("interrogate_clip_num_beams", 1)),
        min_length=int(options.get("interrogate_clip_min_length", 24)),
        max_length=int(options.get("interrogate_clip_max_length", 48)),
    )
