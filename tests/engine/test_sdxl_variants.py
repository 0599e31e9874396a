"""SDXL-family variants: v-prediction and zero-terminal-SNR files told by their marker keys
(NoobAI-style `v_pred` / `ztsnr`) or a `.yaml` beside the file, A1111's `sd_noise_schedule`
"Zero Terminal SNR" as a per-job ᾱ (checked against diffusers' rescale), and clip skip for
Pony/Illustrious-style files left to the request (no per-model default)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job, with_options
from tests.engine.ldm_checkpoints import build_networks, write_checkpoint
from webui_api.engine.facade import Engine
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.models import scaled_linear_alphas_cumprod
from webui_api.engine.noise_schedule import TERMINAL_ALPHA_BAR, rescale_zero_terminal_snr
from webui_api.progress import CancelToken

MARKER = torch.zeros(0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One tiny SDXL network saved as a plain file, a NoobAI-style v-pred + ztsnr file, and a
    v-pred file whose `.yaml` says eps (the yaml wins), plus a Pony-named copy."""
    root = tmp_path_factory.mktemp("Stable-diffusion")
    nets = build_networks("sdxl", seed=2)
    write_checkpoint(root / "xl.safetensors", nets)
    write_checkpoint(root / "noob-vpred.safetensors", nets, v_pred=MARKER, ztsnr=MARKER)
    write_checkpoint(root / "vpred-eps-yaml.safetensors", nets, v_pred=MARKER)
    (root / "vpred-eps-yaml.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    write_checkpoint(root / "ponyDiffusionV6XL.safetensors", nets)
    return root


@pytest.fixture(scope="module")
def engine(folder):
    return Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(folder,)))


def _run(engine: Engine, title: str, options=None, **job_fields):
    job = replace(make_job(width=64, height=64, steps=3, cfg_scale=5.0, options=options or {}), model_title=title)
    job = replace(job, **job_fields)
    return engine.txt2img(job, RecordingObserver(), CancelToken())


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def test_marker_keys_set_v_prediction_and_zero_terminal_snr(engine):
    plain = engine.load("xl.safetensors")
    assert plain.prediction_type == "epsilon" and not plain.zero_terminal_snr
    noob = engine.load("noob-vpred.safetensors")
    assert noob.prediction_type == "v_prediction" and noob.architecture == "sdxl-v" and noob.zero_terminal_snr
    overridden = engine.load("vpred-eps-yaml.safetensors")
    assert overridden.prediction_type == "epsilon"  # the .yaml beside the file wins over the key


def test_rescale_matches_a1111_and_diffusers():
    from diffusers import DDPMScheduler

    alphas = scaled_linear_alphas_cumprod()
    ours = rescale_zero_terminal_snr(alphas)
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=True).alphas_cumprod
    assert torch.allclose(ours[:-1], reference[:-1].float(), rtol=1e-4, atol=1e-7)
    assert float(ours[-1]) == pytest.approx(TERMINAL_ALPHA_BAR) and float(ours[0]) == pytest.approx(float(alphas[0]))
    assert ours.dtype == torch.float32


def test_zero_terminal_snr_option_is_per_job_and_written_to_infotext(engine):
    default = _run(engine, "xl.safetensors")
    ztsnr = _run(engine, "xl.safetensors", {"sd_noise_schedule": "Zero Terminal SNR"})
    assert ztsnr.extra_generation_params["Noise Schedule"] == "Zero Terminal SNR"
    assert "Noise Schedule" not in default.extra_generation_params
    assert not np.array_equal(_pixels(default), _pixels(ztsnr))
    assert torch.equal(engine.load("xl.safetensors").alphas_cumprod, scaled_linear_alphas_cumprod())  # not mutated
    assert np.array_equal(_pixels(default), _pixels(_run(engine, "xl.safetensors")))


def test_ztsnr_file_gets_the_rescale_by_default(engine):
    result = _run(engine, "noob-vpred.safetensors")
    assert result.extra_generation_params["Noise Schedule"] == "Zero Terminal SNR"
    explicit = _run(engine, "noob-vpred.safetensors", {"sd_noise_schedule": "Zero Terminal SNR"})
    assert np.array_equal(_pixels(result), _pixels(explicit))


def test_pony_clip_skip_is_the_requests(engine):
    """No per-model clip-skip default: a Pony-named file computes what the same weights under
    another name compute, and (A1111 1.10, SDXL) clip skip only reaches CLIP-L with sdxl_clip_l_skip
    (then CLIP-L reads hidden_states[-clip_skip] instead of the penultimate layer)."""
    pony = _run(engine, "ponyDiffusionV6XL.safetensors")
    assert np.array_equal(_pixels(pony), _pixels(_run(engine, "xl.safetensors")))
    skip2 = _run(engine, "ponyDiffusionV6XL.safetensors", clip_skip=2)
    assert np.array_equal(_pixels(pony), _pixels(skip2))
    l_skip2 = _run(engine, "ponyDiffusionV6XL.safetensors", {"sdxl_clip_l_skip": True}, clip_skip=2)
    assert np.array_equal(_pixels(pony), _pixels(l_skip2))  # -2 is the penultimate layer anyway
    l_skip1 = _run(engine, "ponyDiffusionV6XL.safetensors", {"sdxl_clip_l_skip": True}, clip_skip=1)
    assert not np.array_equal(_pixels(pony), _pixels(l_skip1))


def test_with_options_helper_still_applies(engine):
    """The option reaches the engine through the same path the API uses (override_settings)."""
    job = with_options(replace(make_job(width=64, height=64, steps=2), model_title="xl.safetensors"),
                       {"sd_noise_schedule": "Zero Terminal SNR"})
    assert job.engine_options.sd_noise_schedule == "Zero Terminal SNR"
