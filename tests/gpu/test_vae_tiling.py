"""--vae-tiling: tiled VAE decode/encode for large images, decided by mode and image size."""

from __future__ import annotations

import pytest
import torch

from webui_api.cli import parse_args
from webui_api.engine import vae_tiling as tiling
from webui_api.engine.facade import Engine
from webui_api.engine.img2img import _encode_tensor
from webui_api.engine.latents import decode_one
from webui_api.engine.model_store import ModelSetup
from webui_api.engine.models import build_embedded_model
from webui_api.engine.vae_tiling import AUTO_TILING_PIXELS, vae_tiling, wants_tiling

# Random weights on random latents: tiles see other GroupNorm statistics than the whole image and
# are blended over a quarter-tile overlap, so pixels near seams differ; on average a tiled decode
# stays within this much of the untiled one (images span about [-1, 1]).
MEAN_ABS_TOLERANCE = 0.1


def test_auto_tiles_only_above_the_pixel_threshold() -> None:
    assert not wants_tiling("auto", 1536, 1536)
    assert wants_tiling("auto", 1536, 1537)
    assert wants_tiling("auto", 2048, 2048) and not wants_tiling("auto", 1024, 1024)
    assert wants_tiling("on", 64, 64) and not wants_tiling("off", 8192, 8192)
    assert AUTO_TILING_PIXELS == 1536 * 1536
    with pytest.raises(ValueError, match="--vae-tiling"):
        wants_tiling("sometimes", 64, 64)
    with pytest.raises(ValueError, match="--vae-tiling"):
        ModelSetup(vae_tiling="yes")


@pytest.fixture()
def model():
    """The tiny model, its VAE tiling in proportions like SD's (a tile of 32 latent pixels, 256 image
    pixels; SD1's are 64 and 512), so a 512x512 image is tiled 3x3 with overlaps."""
    loaded = build_embedded_model()
    loaded.vae.tile_sample_min_size, loaded.vae.tile_latent_min_size = 256, 32
    return loaded


def test_tiled_decode_of_a_512_image_is_close_to_untiled(model) -> None:
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 64, 64)  # 512x512 pixels
    with torch.no_grad():
        model.vae_tiling = "off"
        untiled = decode_one(model, latent)
        model.vae_tiling = "on"
        tiled = decode_one(model, latent)
        model.vae_tiling = "auto"  # 512x512 is far below the threshold: not tiled
        auto = decode_one(model, latent)
    assert tiled.shape == untiled.shape == (3, 512, 512)
    difference = (tiled - untiled).abs()
    assert 0 < difference.mean() < MEAN_ABS_TOLERANCE
    torch.testing.assert_close(auto, untiled, rtol=0, atol=0)
    assert not model.vae.use_tiling  # the VAE's own switch is put back


def test_auto_switches_by_size(model, monkeypatch) -> None:
    torch.manual_seed(1)
    latent = torch.randn(1, 4, 64, 64)
    seen = []
    real_decode = model.vae.decode

    def recording_decode(*args, **kwargs):
        seen.append(model.vae.use_tiling)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(model.vae, "decode", recording_decode)
    model.vae_tiling = "auto"
    with torch.no_grad():
        decode_one(model, latent)
        monkeypatch.setattr(tiling, "AUTO_TILING_PIXELS", 256 * 256)  # now 512x512 is "large"
        decode_one(model, latent)
        decode_one(model, latent[..., :32, :32])  # 256x256: not above it
    assert seen == [False, True, False]


def test_tiled_encode_is_close_to_untiled(model) -> None:
    torch.manual_seed(2)
    image = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        model.vae_tiling = "off"
        untiled = _encode_tensor(model, image)
        model.vae_tiling = "on"
        tiled = _encode_tensor(model, image)
    assert tiled.shape == untiled.shape == (1, 4, 64, 64)
    assert 0 < (tiled - untiled).abs().mean() < MEAN_ABS_TOLERANCE * model.vae_scale_factor * 4


def test_switch_is_restored_after_a_failure(model) -> None:
    with pytest.raises(RuntimeError), vae_tiling(model.vae, True):
        assert model.vae.use_tiling
        raise RuntimeError("decode failed")
    assert not model.vae.use_tiling
    model.vae.enable_tiling()
    with vae_tiling(model.vae, False):
        assert not model.vae.use_tiling
    assert model.vae.use_tiling


def test_flag_reaches_the_models(tmp_path) -> None:
    settings, _ = parse_args(["--data-dir", str(tmp_path), "--vae-tiling", "on"], {})
    assert settings.vae_tiling == "on"
    engine = Engine.from_settings(settings)
    assert engine.models.setup.vae_tiling == "on"
    engine.load()
    assert engine.models.loaded.vae_tiling == "on"
    assert parse_args(["--data-dir", str(tmp_path)], {})[0].vae_tiling == "auto"
