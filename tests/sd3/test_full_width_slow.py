"""SD3 / SD3.5 single files at the published widths with one block of each kind, through the
real loaders and the engine: SD3.5 large with its text encoders packed in the file, SD3.5 medium
(MMDiT-X) with the encoders as module files, and SD3 medium with CLIP-L/G packed and no T5.

Published sizes (Stability's MMDiT files and the diffusers configs of the same models): 64-wide
heads everywhere; SD3.5 large width 2432 (38 heads, 38 blocks), qk-norm, 192x192 position table;
SD3.5 medium width 1536 (24 heads, 24 blocks), qk-norm, dual attention in blocks 0..12, 384x384
position table; SD3 medium width 1536, no qk-norm, 192x192 table; context 4096 (T5), pooled 2048
(CLIP-L 768 + CLIP-G 1280), 16 latent channels, patch 2. CLIP-L: width 768, MLP 3072, 12 heads;
CLIP-G: width 1280, MLP 5120, 20 heads; both with their text projection; T5-XXL: width 4096,
gated MLP 10240, 64 heads. VAE widths 128/256/512/512, 2 resnets per level.

Depth is what varies: the MMDiT keeps one block of each kind (an ordinary joint block and the
last, context-pre-only one; SD3.5 medium also one dual-attention block), CLIP-L and CLIP-G two
layers (SD3 reads the penultimate one), T5 one layer with its vocabulary cut to the test
tokenizer's 42 rows (the layout lets it vary; its width stays 4096). The VAE is full.

Files are stored in bfloat16 and loaded into a float32 CPU engine. Measured one test per
process on two shared, busy cores: SD3.5 large 64 s / 6.2 GB peak RSS, SD3.5 medium 87 s / 6.4 GB
(its 384x384 position table alone is 0.9 GB in float32), SD3 without T5 30 s / 3.6 GB (SD3.5
large 32 s on a quiet machine); a little over the 6 GB aimed at (cutting more would drop a
block kind or CLIP's penultimate layer). Run them one at a time (`-m slow`, `-k`)."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import T5_VOCAB, clip_shapes, cpu_engine, t5_shapes, tiled_state, vae_shapes, write_t5_tokenizer
from tests.sd3.files import MMDiTSizes, mmdit_shapes
from webui_api.engine.loading import sd3_keys
from webui_api.progress import CancelToken

pytestmark = pytest.mark.slow

SD35_LARGE = MMDiTSizes(depth=2, heads=38, qk_norm=True)
SD35_MEDIUM = MMDiTSizes(depth=3, heads=24, qk_norm=True, dual=(0,), max_positions=384)
SD3_MEDIUM = MMDiTSizes(depth=2, heads=24)
STORED = torch.bfloat16
ENCODERS = ("clip_l", "clip_g", "t5xxl")


def _part_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    if kind == "vae":
        return vae_shapes((128, 256, 512, 512), layers=2)
    if kind == "clip_l":
        return clip_shapes(768, 3072, heads=12, layers=2, projection=True)
    if kind == "clip_g":
        return clip_shapes(1280, 5120, heads=20, layers=2, projection=True)
    return t5_shapes(4096, 10240, heads=64, layers=1, vocab=T5_VOCAB)


def _write(root: Path, sizes: MMDiTSizes, packed: tuple[str, ...], separate: tuple[str, ...]) -> dict[str, Path]:
    """The single file (MMDiT, VAE and the `packed` encoders) in Stable-diffusion, the `separate`
    encoders in text_encoder; parts are drawn one at a time."""
    folders = {"ckpt_dir": root / "Stable-diffusion", "vae_dir": root / "VAE", "te_dir": root / "text_encoder"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(folders["te_dir"] / "t5-tokenizer")
    state = {sd3_keys.PREFIX + k: v for k, v in tiled_state(mmdit_shapes(sizes), dtype=STORED).items()}
    state |= {sd3_keys.VAE_PREFIX + k: v for k, v in tiled_state(_part_shapes("vae"), seed=5, dtype=STORED).items()}
    for seed, kind in enumerate(ENCODERS, start=10):
        if kind in packed:
            prefix = sd3_keys.TEXT_PREFIXES[kind]
            state |= {prefix + k: v for k, v in tiled_state(_part_shapes(kind), seed=seed, dtype=STORED).items()}
        elif kind in separate:
            encoder = tiled_state(_part_shapes(kind), seed=seed, dtype=STORED)
            save_file(encoder, str(folders["te_dir"] / f"{kind}.safetensors"))
            del encoder
    folders["checkpoint"] = folders["ckpt_dir"] / "sd3.safetensors"
    save_file(state, str(folders["checkpoint"]))
    del state
    gc.collect()
    return folders


def _file_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def _assert_detected(model, sizes: MMDiTSizes, architecture: str) -> None:
    config = model.unet.config
    assert model.family == "sd3" and model.architecture == architecture and model.flow_shift == 3.0
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (sizes.depth, sizes.heads, 64)
    assert tuple(config.dual_attention_layers) == sizes.dual
    assert config.pos_embed_max_size == sizes.max_positions
    assert (config.joint_attention_dim, config.pooled_projection_dim) == (4096, 2048)
    assert model.dtype == torch.float32 and model.unet.dtype == torch.float32
    assert model.text_encoder.config.hidden_size == 768 and model.text_encoder_2.config.hidden_size == 1280
    assert list(model.vae.config.block_out_channels) == [128, 256, 512, 512]


def _assert_mmdit_took_every_tensor(model, checkpoint: Path, depth: int) -> None:
    """The key map is total: the file's MMDiT tensors, renamed and split, are exactly the module's
    tensors (no missing, no unexpected key) and each value is the file's, upcast. Read one
    tensor at a time: a second copy of the transformer would double the test's peak."""
    loaded = model.unet.state_dict()
    seen: list[str] = []
    with safe_open(str(checkpoint), framework="pt") as f:
        for file_key in f.keys():
            if not file_key.startswith(sd3_keys.PREFIX):
                continue
            stored = f.get_tensor(file_key)
            for key, value in sd3_keys.mmdit_to_diffusers({file_key[len(sd3_keys.PREFIX):]: stored}, depth).items():
                assert torch.equal(loaded[key], value.to(torch.float32)), key
                seen.append(key)
    assert sorted(seen) == sorted(loaded)


def _assert_one_step_is_finite(engine) -> None:
    """A 1-step 64x64 txt2img (CFG 1: one MMDiT pass, CFG is covered by the tiny tests); the
    MMDiT's output in it is finite and not constant (watched with a forward hook: the PNG alone
    would hide NaNs)."""
    outputs: list[torch.Tensor] = []

    def watch(module, args, output) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output.sample).detach().clone())

    hook = engine.loaded.unet.register_forward_hook(watch)
    try:
        job = replace(make_job(width=64, height=64, steps=1, cfg_scale=1.0), model_title="sd3.safetensors")
        result = engine.txt2img(job, RecordingObserver(), CancelToken())
    finally:
        hook.remove()
    assert len(outputs) == 1 and torch.isfinite(outputs[0]).all() and float(outputs[0].std()) > 0
    pixels = np.asarray(result.images[0].image)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_sd35_large_with_packed_text_encoders(tmp_path):
    folders = _write(tmp_path, SD35_LARGE, packed=ENCODERS, separate=())
    engine = cpu_engine(folders)
    model = engine.load("sd3.safetensors")
    _assert_detected(model, SD35_LARGE, "sd3.5-large")
    assert model.module_files == () and model.text_encoder_3.config.d_model == 4096
    _assert_mmdit_took_every_tensor(model, folders["checkpoint"], SD35_LARGE.depth)
    projection = _file_tensor(folders["checkpoint"], sd3_keys.TEXT_PREFIXES["clip_g"] + "text_projection.weight")
    assert torch.equal(model.text_encoder_2.state_dict()["text_projection.weight"], projection.float())
    _assert_one_step_is_finite(engine)


def test_sd35_medium_mmdit_x_with_module_files(tmp_path):
    folders = _write(tmp_path, SD35_MEDIUM, packed=(), separate=ENCODERS)
    engine = cpu_engine(folders)
    model = engine.load("sd3.safetensors")
    _assert_detected(model, SD35_MEDIUM, "sd3.5-medium")
    assert len(model.module_files) == 3 and model.text_encoder_3 is not None
    _assert_mmdit_took_every_tensor(model, folders["checkpoint"], SD35_MEDIUM.depth)
    _assert_one_step_is_finite(engine)


def test_sd3_medium_without_t5(tmp_path):
    folders = _write(tmp_path, SD3_MEDIUM, packed=("clip_l", "clip_g"), separate=())
    engine = cpu_engine(folders)
    model = engine.load("sd3.safetensors")
    _assert_detected(model, SD3_MEDIUM, "sd3")
    assert model.text_encoder_3 is None and model.module_files == ()
    _assert_mmdit_took_every_tensor(model, folders["checkpoint"], SD3_MEDIUM.depth)
    _assert_one_step_is_finite(engine)
