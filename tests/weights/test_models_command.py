"""`webui-api models list|fetch`: the table, fetching into A1111's folders from a loopback
mirror, refusals, and HF_HUB_OFFLINE read into the settings."""

from __future__ import annotations

import io

import pytest

from tests.weights.mirror import MirrorState, serve_mirror
from tests.weights.tiny_files import origin_path, pinned_to
from webui_api.cli import main, parse_args
from webui_api.weights import WeightsRegistry, command


def run(argv: list[str], registry: WeightsRegistry | None = None, environ: dict[str, str] | None = None):
    settings, rest = parse_args(argv, environ=environ or {})
    out, err = io.StringIO(), io.StringIO()
    status = command.run(rest, settings, out, err, registry)
    return status, out.getvalue(), err.getvalue()


def test_list_shows_every_pinned_file_with_folder_size_licence_and_status(tmp_path):
    (tmp_path / "models" / "GFPGAN").mkdir(parents=True)
    (tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"x")
    status, out, _ = run(["list", "--data-dir", str(tmp_path)])
    assert status == 0
    lines = {line.split("  ")[0]: line for line in out.splitlines()[1:]}
    assert {"ESRGAN_4x", "R-ESRGAN 4x+", "SwinIR 4x", "ScuNET GAN", "DAT x4", "GFPGAN", "CodeFormer",
            "facexlib detection", "BLIP caption", "CLIP ViT-L/14", "deepdanbooru", "taesd_decoder",
            "v1-5-pruned-emaonly"} <= set(lines)
    assert str(tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth") in lines["R-ESRGAN 4x+"]
    assert "BSD-3-Clause" in lines["R-ESRGAN 4x+"] and "63.9 MB" in lines["R-ESRGAN 4x+"]
    assert lines["GFPGAN"].endswith("present") and lines["CodeFormer"].endswith("missing")
    assert "unknown" in lines["deepdanbooru"]  # no pinned sha256


def test_list_follows_folder_flags(tmp_path):
    status, out, _ = run(["list", "--data-dir", str(tmp_path), "--esrgan-models-path", str(tmp_path / "esr"),
                          "--kind", "upscaler"])
    assert status == 0 and str(tmp_path / "esr" / "ESRGAN_4x.pth") in out and "GFPGAN" not in out


def test_fetch_downloads_into_the_a1111_folder_with_progress(tmp_path):
    data = b"tiny weights" * 1000
    registry, entry = pinned_to(WeightsRegistry.builtin(), "DAT x2", data)
    with serve_mirror(MirrorState(files={origin_path(entry): data})) as mirror:
        status, out, err = run(["fetch", "DAT x2", "--data-dir", str(tmp_path), "--models-mirror", mirror], registry)
        again = run(["fetch", "DAT x2", "--data-dir", str(tmp_path), "--models-mirror", mirror], registry)
    assert status == 0, err
    assert (tmp_path / "models" / "DAT" / "DAT_x2.pth").read_bytes() == data
    assert f"fetched: DAT x2 -> {tmp_path / 'models' / 'DAT' / 'DAT_x2.pth'}" in out
    assert "DAT x2:" in err and "100.0%" in err  # the progress line
    assert again[0] == 0 and "present: DAT x2" in again[1]


def test_fetch_refusals_exit_nonzero_with_the_reason(tmp_path):
    status, _, err = run(["fetch", "deepdanbooru", "--data-dir", str(tmp_path), "--models-mirror", "http://127.0.0.1:9"])
    assert status == 1 and "--allow-unverified" in err
    status, _, err = run(["fetch", "R-ESRGAN 4x+", "--data-dir", str(tmp_path), "--offline"])
    assert status == 1 and "downloads are off" in err
    status, _, err = run(["fetch", "No Such Upscaler", "--data-dir", str(tmp_path)])
    assert status == 1 and "no pinned weights named" in err
    assert not (tmp_path / "models").exists()


def test_fetch_needs_a_name(tmp_path):
    assert run(["fetch", "--data-dir", str(tmp_path)])[0] == 2


def test_hf_hub_offline_turns_downloads_off():
    assert parse_args([], environ={"HF_HUB_OFFLINE": "1"})[0].weights_offline is True
    assert parse_args([], environ={})[0].weights_offline is False
    assert parse_args(["--offline"], environ={})[0].weights_offline is True
    settings = parse_args(["--models-mirror", "http://127.0.0.1:8000/m", "--allow-unverified"], environ={})[0]
    assert settings.models_mirror == "http://127.0.0.1:8000/m" and settings.allow_unverified_weights


def test_main_dispatches_the_models_subcommand(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["models", "list", "--data-dir", str(tmp_path), "--kind", "checkpoint"])
    assert done.value.code == 0
    assert "v1-5-pruned-emaonly.safetensors" in capsys.readouterr().out
