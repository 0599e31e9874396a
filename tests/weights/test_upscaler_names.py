"""A1111's built-in upscaler names: listed before download, mapped to A1111's file names,
resolvable under their file stems, fetched on first use through the weights fetcher."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.postprocess.upscaler_files import write_esrgan
from tests.weights.mirror import MirrorState, serve_mirror
from tests.weights.tiny_files import origin_path, pinned_to, tiny_esrgan_bytes
from webui_api.postprocess.upscale import MissingUpscalerWeights, UpscalerCatalog
from webui_api.weights import FetchPolicy, WeightFolders, WeightsFetcher, WeightsRegistry


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")


def test_present_realesrgan_file_is_listed_under_a1111_name(tmp_path):
    models = tmp_path / "models"
    path = write_esrgan(models / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    catalog = UpscalerCatalog.scan(models)
    assert "R-ESRGAN 4x+" in catalog.names() and "RealESRGAN_x4plus" not in catalog.names()
    entry = catalog.find("R-ESRGAN 4x+")
    assert entry.api_item()["model_path"] == str(path) and not entry.needs_fetch
    assert catalog.find("RealESRGAN_x4plus") == entry  # the stem a client may have kept from before
    assert catalog.upscale(_image(), "R-ESRGAN 4x+", 2).size == (32, 32)


def test_esrgan_builtin_listed_only_while_folder_is_empty(tmp_path):
    models = tmp_path / "models"
    assert "ESRGAN_4x" in UpscalerCatalog.scan(models).names()
    write_esrgan(models / "ESRGAN" / "ESRGAN_4x.pth")  # what A1111's download is saved as
    names = UpscalerCatalog.scan(models).names()
    assert names.count("ESRGAN_4x") == 1
    write_esrgan(models / "ESRGAN" / "4x-Other.pth")
    assert "4x-Other" in UpscalerCatalog.scan(models).names()


def test_downloaded_swinir_answers_to_its_builtin_name(tmp_path):
    models = tmp_path / "models"
    path = write_esrgan(models / "SwinIR" / "SwinIR_4x.pth")
    catalog = UpscalerCatalog.scan(models)
    assert "SwinIR_4x" in catalog.names() and "SwinIR 4x" not in catalog.names()  # as A1111 lists it then
    assert catalog.find("SwinIR 4x").path == path


def test_scunet_and_dat_builtins(tmp_path):
    models = tmp_path / "models"
    names = UpscalerCatalog.scan(models).names()
    assert {"ScuNET GAN", "ScuNET PSNR", "DAT x2", "DAT x3", "DAT x4"} <= set(names)
    assert UpscalerCatalog.scan(models).find("ScuNET GAN").path == models / "ScuNET" / "ScuNET.pth"
    write_esrgan(models / "DAT" / "DAT_x2.pth", scale=2)
    catalog = UpscalerCatalog.scan(models, options={"dat_enabled_models": ["DAT x2"]})
    assert [n for n in catalog.names() if "DAT" in n] == ["DAT x2", "DAT_x2"]
    assert catalog.find("DAT x2").path == models / "DAT" / "DAT_x2.pth"
    assert not catalog.find("DAT x2").needs_fetch


def test_builtins_hidden_by_options_still_resolve(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path, options={"realesrgan_enabled_models": [], "dat_enabled_models": []})
    assert not [n for n in catalog.names() if n.startswith("R-ESRGAN") or n.startswith("DAT")]
    assert catalog.find("R-ESRGAN 2x+").weights == "R-ESRGAN 2x+"
    assert catalog.find("dat x3").scale == 3


def test_weights_needed_lists_missing_builtin_files_only(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path)
    assert catalog.weights_needed(["R-ESRGAN 4x+", "Lanczos", None, "ESRGAN_4x", "R-ESRGAN 4x+"]) == [
        "R-ESRGAN 4x+", "ESRGAN_4x"]
    write_esrgan(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    assert UpscalerCatalog.scan(tmp_path).weights_needed(["R-ESRGAN 4x+"]) == []


def test_missing_builtin_without_fetcher_names_the_fetch_command(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path)
    with pytest.raises(MissingUpscalerWeights, match='webui-api models fetch "R-ESRGAN 4x\\+"'):
        catalog.upscale(_image(), "R-ESRGAN 4x+", 2)


def test_missing_builtin_is_fetched_on_first_use(tmp_path):
    data = tiny_esrgan_bytes(tmp_path)
    registry, entry = pinned_to(WeightsRegistry.builtin(), "R-ESRGAN 4x+", data)
    models = tmp_path / "models"
    with serve_mirror(MirrorState(files={origin_path(entry): data})) as mirror:
        fetcher = WeightsFetcher(registry, WeightFolders(models), FetchPolicy(offline=False, mirror=mirror))
        catalog = UpscalerCatalog.scan(models, registry=registry)
        catalog.fetch = fetcher.ensure
        assert catalog.upscale(_image(), "R-ESRGAN 4x+", 4).size == (64, 64)
    assert (models / "RealESRGAN" / "RealESRGAN_x4plus.pth").read_bytes() == data


def test_docs_table_lists_every_pinned_file():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for entry in WeightsRegistry.builtin():
        assert f"| `{entry.name}` | {entry.kind} | `{entry.folder}/{entry.filename}` |" in docs, entry.name
