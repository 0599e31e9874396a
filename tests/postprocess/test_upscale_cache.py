"""Upscalers: BGR input order as A1111 feeds spandrel, models kept in the shared cache."""

from __future__ import annotations

import numpy as np
from PIL import Image

from webui_api.postprocess.face_restore.cache import PostprocessModels
from webui_api.postprocess.upscale import TileSpec, UpscalerCatalog, run_model_tiled

from .upscaler_files import write_esrgan


class RecordingModel:
    """A 1x 'model' that remembers its input and answers with the channels swapped back
    only in its first channel (so the output order can be checked too)."""

    scale = 1

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.seen = None

    def __call__(self, tensor):
        self.seen = tensor.clone()
        return tensor


def test_model_input_is_bgr_and_output_comes_back_rgb():
    image = Image.new("RGB", (4, 3), (200, 100, 10))
    model = RecordingModel()
    out = run_model_tiled(model, image, TileSpec(size=0))
    first = model.seen[0, :, 0, 0].numpy()
    assert np.allclose(first * 255, [10, 100, 200])  # blue, green, red
    assert out.getpixel((0, 0)) == (200, 100, 10)


def test_catalogs_share_loaded_models(tmp_path):
    models_dir = tmp_path / "models"
    write_esrgan(models_dir / "ESRGAN" / "4x-Tiny.pth")
    cache = PostprocessModels()
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    for _ in range(2):
        catalog = UpscalerCatalog.scan(models_dir, models=cache)  # rebuilt per request, as the routes do
        assert catalog.upscale(image, "4x-Tiny", 4).size == (32, 32)
    assert cache.loads == 1 and len(cache) == 1


def test_cpu_models_stay_fp32(tmp_path):
    path = write_esrgan(tmp_path / "ESRGAN" / "2x-Tiny.safetensors", scale=2)
    import torch

    from webui_api.postprocess.upscale import load_model

    assert load_model(path, "cpu").dtype == torch.float32
