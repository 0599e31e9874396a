"""Upscalers: the catalog A1111 lists, the PIL built-ins, spandrel-loaded files and tiling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.factories import settings_for_tests
from webui_api.postprocess.upscale import (
    TileSpec,
    UnknownUpscaler,
    UnusableUpscaler,
    UpscalerCatalog,
    builtin_step,
    load_model,
    run_model_tiled,
    scale_from_name,
    tile_origins,
    upscale_to_scale,
)

from .upscaler_files import write_esrgan


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# What a stock A1111 install lists before anything is downloaded (LDSR aside: not implemented here).
STOCK_NAMES = ["None", "Lanczos", "Nearest", "DAT x2", "DAT x3", "DAT x4", "ESRGAN_4x", "R-ESRGAN 4x+",
               "R-ESRGAN 4x+ Anime6B", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x"]
X4PLUS_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"


def test_builtins_come_first_with_a1111_fields(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path / "models")
    assert catalog.names() == STOCK_NAMES
    assert catalog.api_items()[:3] == [
        {"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for n in ("None", "Lanczos", "Nearest")
    ]
    # not downloaded yet: A1111 shows the download URL as the model path
    assert catalog.find("R-ESRGAN 4x+").api_item() == {
        "name": "R-ESRGAN 4x+", "model_name": None, "model_path": X4PLUS_URL, "model_url": None, "scale": 4}
    assert [item["name"] for item in catalog.realesrgan_items()] == ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]


def test_files_are_listed_by_family_folder_and_flag(tmp_path):
    models = tmp_path / "models"
    write_esrgan(models / "ESRGAN" / "4x-Ultra.pth")
    write_esrgan(models / "RealESRGAN" / "RealESRGAN_x2plus.safetensors", scale=2)
    elsewhere = write_esrgan(tmp_path / "swin" / "Swin.pth")
    (models / "ESRGAN" / "notes.txt").write_text("not a model")
    catalog = UpscalerCatalog.scan(models, {"swinir_models_path": str(tmp_path / "swin")})
    files = {i["name"]: i for i in catalog.api_items() if i["model_path"] and not i["model_path"].startswith("http")}
    assert [(i["name"], i["model_name"], i["scale"]) for i in files.values()] == [
        ("4x-Ultra", "ESRGAN_4x", 4), ("RealESRGAN_x2plus", None, 2), ("Swin", "SwinIR 4x", 4),
    ]
    assert files["Swin"]["model_path"] == str(elsewhere)
    # a folder with files lists them instead of its built-in (ESRGAN_4x, SwinIR 4x)
    assert "ESRGAN_4x" not in catalog.names() and "SwinIR 4x" not in catalog.names()
    assert {"name": "RealESRGAN_x2plus", "path": str(models / "RealESRGAN" / "RealESRGAN_x2plus.safetensors"),
            "scale": 2} in catalog.realesrgan_items()


@pytest.mark.parametrize("stem,scale", [("4x-UltraSharp", 4), ("RealESRGAN_x2plus", 2), ("2x_foo", 2),
                                        ("DAT_x3", 3), ("SwinIR", 4), ("1x-ITF-SkinDiffDetail", 1)])
def test_scale_from_name(stem, scale):
    assert scale_from_name(stem) == scale


def test_find_is_case_insensitive_and_unknown_is_400(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path)
    assert catalog.find("lanczos").name == "Lanczos"
    assert catalog.find(None).name == "None"
    assert catalog.find("r-esrgan 4x+").name == "R-ESRGAN 4x+"
    with pytest.raises(UnknownUpscaler) as info:
        catalog.find("4x-Missing")
    assert info.value.status_code == 400 and "4x-Missing" in info.value.detail


@pytest.mark.parametrize("name,scale,size", [("Lanczos", 2, (128, 96)), ("Nearest", 1.5, (96, 72)),
                                             ("None", 2, (128, 96)), ("Lanczos", 1, (64, 48))])
def test_builtin_sizes_follow_a1111_rounding(tmp_path, name, scale, size):
    """Target is (size * scale) floored to a multiple of 8; "None" is resized there by Lanczos."""
    out = UpscalerCatalog.scan(tmp_path).upscale(_noise(64, 48), name, scale)
    assert out.size == size


def test_nearest_2x_repeats_pixels():
    image = _noise(8, 8)
    out = upscale_to_scale(image, 2, builtin_step("Nearest"))
    assert np.array_equal(np.asarray(out)[::2, ::2], np.asarray(image))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_esrgan_files_load_and_scale(tmp_path, suffix, scale):
    path = write_esrgan(tmp_path / "ESRGAN" / f"model{suffix}", scale=scale)
    model = load_model(path)
    assert model.scale == scale and model.architecture.id == "ESRGAN"
    out = run_model_tiled(model, _noise(20, 12), TileSpec(size=0))
    assert out.size == (20 * scale, 12 * scale)


@pytest.mark.parametrize("scale,target", [(2, (48, 32)), (4, (96, 64)), (3, (72, 48))])
def test_model_upscale_reaches_requested_scale(tmp_path, scale, target):
    """A 2x model asked for 4x runs twice; asked for 3x it overshoots and is resized down."""
    write_esrgan(tmp_path / "models" / "ESRGAN" / "2x-test.safetensors", scale=2)
    catalog = UpscalerCatalog.scan(tmp_path / "models")
    assert catalog.upscale(_noise(24, 16), "2x-test", scale, TileSpec(size=0)).size == target


def test_tiled_matches_untiled_away_from_seams(tmp_path):
    """With overlap as large as the receptive field the tiles agree with a whole-image run."""
    model = load_model(write_esrgan(tmp_path / "m.pth", scale=2))
    image = _noise(40, 28)
    whole = np.asarray(run_model_tiled(model, image, TileSpec(size=0))).astype(int)
    tiled = np.asarray(run_model_tiled(model, image, TileSpec(size=16, overlap=16))).astype(int)
    assert tiled.shape == whole.shape == (56, 80, 3)
    assert np.abs(tiled - whole).max() <= 1


def test_tiles_cover_the_image():
    assert tile_origins(40, 16) == [0, 16, 32]
    assert tile_origins(10, 16) == [0] and tile_origins(10, 0) == [0]
    with pytest.raises(ValueError, match="size=-1"):
        TileSpec(size=-1)


def test_a_file_that_is_not_an_upscaler_is_rejected(tmp_path):
    import torch

    path = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UnusableUpscaler) as info:
        load_model(path)
    assert info.value.status_code == 400 and "junk.pth" in info.value.detail and str(tmp_path) in info.value.detail


def test_models_are_loaded_once_per_catalog(tmp_path):
    write_esrgan(tmp_path / "ESRGAN" / "a.pth", scale=1)
    catalog = UpscalerCatalog.scan(tmp_path)
    entry = catalog.find("a")
    assert catalog.model_for(entry) is catalog.model_for(entry)


def test_catalog_takes_the_device_from_settings(tmp_path):
    write_esrgan(tmp_path / "models" / "ESRGAN" / "a.pth", scale=1)
    catalog = UpscalerCatalog.from_settings(settings_for_tests(tmp_path, device="cpu"))
    assert catalog.device == "cpu"
    assert str(catalog.model_for(catalog.find("a")).device) == "cpu"
    with pytest.raises(ValueError, match="device"):
        load_model(tmp_path / "models" / "ESRGAN" / "a.pth", "not-a-device")


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_models_run_on_cuda_when_asked(tmp_path):
    model = load_model(write_esrgan(tmp_path / "m.pth", scale=2), "cuda")
    assert model.device.type == "cuda"
    assert run_model_tiled(model, _noise(40, 24), TileSpec(size=16)).size == (80, 48)
