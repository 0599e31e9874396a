"""The embedded tiny model: deterministic weights, A1111-style checkpoint info, SD1 schedule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from samplers.schedules import sigma_table
from webui_api.engine.models import (
    EMBEDDED_MODEL_NAME,
    CheckpointInfo,
    build_embedded_model,
    embedded_checkpoint_info,
    scaled_linear_alphas_cumprod,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
HASH_SNIPPET = "from webui_api.engine.models import embedded_checkpoint_info as f; print(f().sha256)"


def test_hash_is_stable_within_a_process():
    first, second = embedded_checkpoint_info(), embedded_checkpoint_info()
    assert first == second
    assert len(first.sha256) == 64 and first.hash == first.sha256[:10]


def test_hash_is_stable_across_processes():
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", HASH_SNIPPET], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == embedded_checkpoint_info().sha256


def test_checkpoint_info_fields():
    info = embedded_checkpoint_info()
    assert info.model_name == EMBEDDED_MODEL_NAME
    assert info.title == f"{EMBEDDED_MODEL_NAME} (random weights, images are noise) [{info.hash}]"
    assert info.filename == "<embedded>"
    assert info.config is None


def test_aliases_cover_a1111_ids():
    info = CheckpointInfo(
        title="sub/model.safetensors [0123456789]",
        model_name="sub_model",
        hash="0123456789",
        sha256="0123456789" + "a" * 54,
        filename="/models/Stable-diffusion/sub/model.safetensors",
        config=None,
    )
    aliases = info.aliases()
    for expected in (
        info.title,
        "sub_model",
        "sub/model.safetensors",
        "model.safetensors",
        "model",
        "0123456789",
        info.sha256,
        "model [0123456789]",
    ):
        assert expected in aliases
    assert len(aliases) == len(set(aliases))


def test_building_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    build_embedded_model()
    assert torch.equal(before, torch.get_rng_state())


def test_model_components_and_dtype(tiny_model):
    assert tiny_model.unet.config.in_channels == 4 and tiny_model.unet.config.cross_attention_dim == 32
    assert len(tiny_model.vae.config.block_out_channels) == 4  # 8x downscale
    assert tiny_model.text_encoder.config.vocab_size == 49408
    assert tiny_model.alphas_cumprod.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tiny_model.unet.parameters())


def test_half_precision_build_keeps_alphas_fp32_and_position_ids_int():
    model = build_embedded_model("cpu", torch.float16)
    assert next(model.unet.parameters()).dtype == torch.float16
    assert model.alphas_cumprod.dtype == torch.float32
    buffers = dict(model.text_encoder.named_buffers())
    assert all(b.dtype == torch.int64 for name, b in buffers.items() if "position_ids" in name)


def test_scaled_linear_sigma_range_matches_a1111():
    sigmas = sigma_table(scaled_linear_alphas_cumprod())
    assert abs(float(sigmas[0]) - 0.029167533) < 1e-7
    assert abs(float(sigmas[-1]) - 14.614642) < 1e-5
