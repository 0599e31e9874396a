"""Live previews per show_progress_type, with a tiny random-weight TAESD decoder in A1111's file format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.facade import Engine
from webui_api.engine.models import build_embedded_model
from webui_api.engine.previews import (
    PreviewDecoders,
    a1111_keys_to_decoder,
    live_preview,
    load_taesd_decoder,
    taesd_decoder,
)
from webui_api.progress import CancelToken


def write_taesd(folder: Path, name: str = "taesd_decoder.pth", seed: int = 0) -> torch.nn.Module:
    """A random TAESD decoder saved as A1111 keeps it: Sequential keys with the clamp at index 0."""
    torch.manual_seed(seed)
    decoder = taesd_decoder()
    for param in decoder.parameters():
        torch.nn.init.normal_(param, std=0.05)
    state = {}
    for key, value in decoder.state_dict().items():
        _, index, rest = key.split(".", 2)
        state[f"{int(index) + 1}.{rest}"] = value.clone()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return decoder.eval()


def test_a1111_file_loads_into_the_same_network(tmp_path: Path) -> None:
    original = write_taesd(tmp_path)
    loaded = load_taesd_decoder(tmp_path / "taesd_decoder.pth", torch.device("cpu"), torch.float32)
    latent = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latent), original(latent), rtol=0, atol=0)


def test_foreign_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        a1111_keys_to_decoder({"decoder.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError):
        a1111_keys_to_decoder({"0.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def model():
    return build_embedded_model()


def test_preview_kinds_and_sizes(tmp_path: Path, model) -> None:
    write_taesd(tmp_path)
    model.preview_decoders = PreviewDecoders(tmp_path)
    latent = torch.randn(1, 4, 8, 8)
    assert live_preview(model, "Approx cheap", latent).size == (8, 8)
    assert live_preview(model, "Approx NN", latent).size == (8, 8)  # no VAE-approx folder: Approx cheap
    taesd = live_preview(model, "TAESD", latent)
    full = live_preview(model, "Full", latent)
    assert taesd.size == (64, 64) and full.size == (64, 64)
    assert taesd.tobytes() != full.tobytes()


def test_missing_taesd_file_falls_back_to_approx_cheap(tmp_path: Path, model) -> None:
    model.preview_decoders = PreviewDecoders(tmp_path / "absent")
    latent = torch.randn(1, 4, 8, 8)
    assert live_preview(model, "TAESD", latent).tobytes() == live_preview(model, "Approx cheap", latent).tobytes()


def test_the_job_option_picks_the_preview(tmp_path: Path) -> None:
    write_taesd(tmp_path / "models" / "VAE-taesd")
    engine = Engine(device="cpu", taesd_dir=tmp_path / "models" / "VAE-taesd")
    engine.load()
    sizes = {}
    for kind in ("TAESD", "Approx cheap", "Full"):
        observer = RecordingObserver(render_previews=True)
        engine.txt2img(make_job(steps=2, options={"show_progress_type": kind}), observer, CancelToken())
        sizes[kind] = {image.size for image in observer.previews}
    assert sizes == {"TAESD": {(64, 64)}, "Approx cheap": {(8, 8)}, "Full": {(64, 64)}}


def test_taesd_previews_ask_for_the_decoders_they_lack(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tests.factories import settings_for_tests
    from webui_api.weights.registry import TAESD_FILES
    from webui_api.weights.runtime import job_weights

    settings = settings_for_tests(tmp_path)
    taesd_job = SimpleNamespace(options={"show_progress_type": "TAESD"}, hires=None, restore_faces=False)
    assert job_weights(settings, taesd_job).optional == ("taesd_decoder", "taesdxl_decoder")
    assert job_weights(settings, taesd_job).required == ()
    write_taesd(settings.models_dir / "VAE-taesd")
    assert job_weights(settings, taesd_job).optional == ("taesdxl_decoder",)
    plain_job = SimpleNamespace(options={"show_progress_type": "Approx cheap"}, hires=None, restore_faces=False)
    assert job_weights(settings, plain_job).optional == ()
    pinned = {entry.name: entry for entry in TAESD_FILES}
    for name in ("taesd_decoder", "taesdxl_decoder"):  # where PreviewDecoders looks, under the same names
        assert (pinned[name].folder, pinned[name].filename) == ("VAE-taesd", f"{name}.pth")
