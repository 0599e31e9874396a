"""A1111's "Approx NN" live previews (the default show_progress_type): a tiny random-weight
VAE-approx file in A1111's format, the fallback when it is missing, and first-use fetching."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.facade import Engine
from webui_api.engine.models import build_embedded_model
from webui_api.engine.previews import PreviewDecoders, live_preview
from webui_api.engine.vae_approx import VAEApprox, load_vae_approx
from webui_api.progress import CancelToken

# The state-dict keys and shapes of A1111 v1.10.1 modules/sd_vae_approx.VAEApprox (4 latent
# channels), as its shipped models/VAE-approx/model.pt holds them.
A1111_SD1_KEYS = {
    "conv1.weight": (8, 4, 7, 7), "conv1.bias": (8,),
    "conv2.weight": (16, 8, 5, 5), "conv2.bias": (16,),
    "conv3.weight": (32, 16, 3, 3), "conv3.bias": (32,),
    "conv4.weight": (64, 32, 3, 3), "conv4.bias": (64,),
    "conv5.weight": (32, 64, 3, 3), "conv5.bias": (32,),
    "conv6.weight": (16, 32, 3, 3), "conv6.bias": (16,),
    "conv7.weight": (8, 16, 3, 3), "conv7.bias": (8,),
    "conv8.weight": (3, 8, 3, 3), "conv8.bias": (3,),
}


def write_vae_approx(folder: Path, name: str = "model.pt", latent_channels: int = 4, seed: int = 0) -> VAEApprox:
    """A random VAE-approx network saved as A1111 saves it (a plain state dict)."""
    torch.manual_seed(seed)
    network = VAEApprox(latent_channels)
    for param in network.parameters():
        torch.nn.init.normal_(param, std=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / name)
    return network.eval()


def test_state_dict_keys_are_a1111s() -> None:
    assert {key: tuple(value.shape) for key, value in VAEApprox(4).state_dict().items()} == A1111_SD1_KEYS
    assert VAEApprox(16).state_dict()["conv1.weight"].shape == (8, 16, 7, 7)  # SD3's 16-channel latents


def test_output_is_twice_the_latent_size_with_a1111s_layers(tmp_path: Path) -> None:
    original = write_vae_approx(tmp_path)
    loaded = load_vae_approx(tmp_path / "model.pt", torch.device("cpu"), torch.float32)
    latent = torch.randn(1, 4, 6, 10)
    with torch.no_grad():
        out = loaded(latent)
        torch.testing.assert_close(out, original(latent), rtol=0, atol=0)
        # A1111's forward written out: nearest 2x, zero pad 11, conv + leaky ReLU(0.1) eight times
        x = torch.nn.functional.pad(torch.nn.functional.interpolate(latent, scale_factor=2.0), (11,) * 4)
        for index in range(1, 9):
            x = torch.nn.functional.leaky_relu(getattr(original, f"conv{index}")(x), 0.1)
    assert out.shape == (1, 3, 12, 20)
    torch.testing.assert_close(out, x)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    torch.save({"decoder.weight": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="VAE-approx"):
        load_vae_approx(tmp_path / "model.pt", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def model():
    return build_embedded_model()


def test_approx_nn_preview_decodes_at_half_image_size(tmp_path: Path, model) -> None:
    network = write_vae_approx(tmp_path / "VAE-approx")
    model.preview_decoders = PreviewDecoders(None, tmp_path / "VAE-approx")
    latent = torch.randn(1, 4, 8, 8)
    preview = live_preview(model, "Approx NN", latent)
    assert (preview.size, preview.mode) == ((16, 16), "RGB")
    cheap = live_preview(model, "Approx cheap", latent)
    assert cheap.size == (8, 8)
    with torch.no_grad():
        expected = network(latent)[0].clamp(-1, 1)
    pixels = torch.from_numpy(np.asarray(preview, dtype=np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(pixels / 255 * 2 - 1, expected, atol=2 / 255 * 2, rtol=0)


def test_missing_file_falls_back_to_approx_cheap_with_a_log_line(tmp_path: Path, model, caplog) -> None:
    model.preview_decoders = PreviewDecoders(None, tmp_path / "VAE-approx")
    latent = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="webui_api.engine.previews"):
        first = live_preview(model, "Approx NN", latent)
        live_preview(model, "Approx NN", latent)
    assert first.tobytes() == live_preview(model, "Approx cheap", latent).tobytes()
    assert [r.getMessage() for r in caplog.records if "Approx NN" in r.getMessage()] == [
        f"Approx NN previews need model.pt in {tmp_path / 'VAE-approx'}; showing Approx cheap previews instead"
    ]


def test_the_engine_shows_approx_nn_previews_by_default(tmp_path: Path) -> None:
    approx = tmp_path / "models" / "VAE-approx"
    write_vae_approx(approx)
    engine = Engine(device="cpu", vae_approx_dir=approx)
    engine.load()
    observer = RecordingObserver(render_previews=True)
    engine.txt2img(make_job(steps=2), observer, CancelToken())
    assert {image.size for image in observer.previews} == {(16, 16)}  # 8x8 latents, A1111's default kind


def test_approx_nn_previews_ask_for_the_files_they_lack(tmp_path: Path) -> None:
    from tests.factories import settings_for_tests
    from webui_api.weights.registry import VAE_APPROX_FILES
    from webui_api.weights.runtime import job_weights

    settings = settings_for_tests(tmp_path)
    default_job = SimpleNamespace(options={}, hires=None, restore_faces=False, preview_every_n_steps=10)
    assert job_weights(settings, default_job).optional == ("vaeapprox-sd1", "vaeapprox-sdxl")
    write_vae_approx(settings.models_dir / "VAE-approx")
    assert job_weights(settings, default_job).optional == ("vaeapprox-sdxl",)
    no_previews = SimpleNamespace(options={}, hires=None, restore_faces=False, preview_every_n_steps=0)
    assert job_weights(settings, no_previews).optional == ()
    pinned = {entry.name: entry for entry in VAE_APPROX_FILES}
    assert (pinned["vaeapprox-sd1"].folder, pinned["vaeapprox-sd1"].filename) == ("VAE-approx", "model.pt")
    assert pinned["vaeapprox-sd1"].verified and not pinned["vaeapprox-sdxl"].verified


def test_offline_missing_file_is_skipped_not_refused(tmp_path: Path) -> None:
    import asyncio

    from tests.factories import settings_for_tests
    from webui_api.weights.fetcher import WeightsFetcher
    from webui_api.weights.runtime import job_weights, prefetch

    settings = settings_for_tests(tmp_path)
    assert settings.weights_offline
    fetcher = WeightsFetcher.from_settings(settings)
    default_job = SimpleNamespace(options={}, hires=None, restore_faces=False, preview_every_n_steps=10)
    asyncio.run(prefetch(fetcher, job_weights(settings, default_job)))  # no error, nothing fetched
    assert not (settings.models_dir / "VAE-approx" / "model.pt").exists()


def test_full_previews_become_approx_nn_while_the_model_is_offloaded() -> None:
    """A1111 (sd_samplers_common.samples_to_images_tensor): with --medvram/--lowvram "Full" shows
    "Approx NN" unless live_preview_allow_lowvram_full."""
    from webui_api.engine.previews import preview_kind
    from webui_api.engine_options import EngineOptions

    offloaded, resident = SimpleNamespace(offloaded=True), SimpleNamespace(offloaded=False)
    full = EngineOptions.from_options({"show_progress_type": "Full"})
    assert preview_kind(full, offloaded) == "Approx NN"
    assert preview_kind(full, resident) == "Full"
    allowed = EngineOptions.from_options({"show_progress_type": "Full", "live_preview_allow_lowvram_full": True})
    assert preview_kind(allowed, offloaded) == "Full"
    assert preview_kind(EngineOptions.from_options({"show_progress_type": "TAESD"}), offloaded) == "TAESD"
