"""Flux.1 single files at the published width with one block of each kind, through the real
loaders and the engine: BFL transformer-only files (dev with `guidance_in`, schnell without)
with their module files, the all-in-one layout, a float8_e4m3fn file and a Q8_0 GGUF file.

Published sizes (BFL's flux1-dev/schnell transformer, ae.safetensors, CLIP-L, T5-XXL v1.1):
transformer width 3072 (24 heads of 128), 64 input channels, T5 context 4096, CLIP pooled 768,
MLP 4x; VAE widths 128/256/512/512 with 2 resnets per level and 16 latent channels; CLIP-L
width 768, MLP 3072, 12 heads, vocabulary 49408; T5-XXL width 4096, gated MLP 10240, 64 heads.
Depth is what varies here: 1 double and 1 single block, CLIP-L with 1 layer, T5 with 1 layer,
and T5's vocabulary cut to the test tokenizer's 42 rows (the 32128 x 4096 table alone is 0.5 GB
in float32 and the layout lets the vocabulary vary; its width stays 4096). The VAE is full.

Files are stored in bfloat16 (float8 / Q8_0 for those layouts) and loaded into a float32 CPU
engine (the transformer alone is 2.2 GB there). Measured one test per process on two shared,
busy cores (load 6-12): 88-170 s each (about 30 s once the machine was quiet), peak RSS
5.0-6.0 GB. Run them one at a time (`-m slow`,
`-k`)."""

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
from tests.flux.files import (
    T5_VOCAB,
    FluxSizes,
    bfl_transformer_shapes,
    clip_shapes,
    cpu_engine,
    t5_shapes,
    tiled_state,
    vae_shapes,
    write_t5_tokenizer,
)
from webui_api.engine.loading import flux_keys
from webui_api.progress import CancelToken

pytestmark = pytest.mark.slow

DEV = FluxSizes(double=1, single=1)  # published widths, one block of each kind
SCHNELL = replace(DEV, guidance=False)
STORED = torch.bfloat16


def _encoder_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    return {
        "vae": vae_shapes((128, 256, 512, 512), layers=2),
        "clip_l": clip_shapes(768, 3072, heads=12, layers=1, projection=False),
        "t5xxl": t5_shapes(4096, 10240, heads=64, layers=1, vocab=T5_VOCAB),
    }


def _folders(root: Path) -> dict[str, Path]:
    folders = {"ckpt_dir": root / "Stable-diffusion", "vae_dir": root / "VAE", "te_dir": root / "text_encoder"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(folders["te_dir"] / "t5-tokenizer")
    return folders


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _write_modules(folders: dict[str, Path], dtype: torch.dtype = STORED) -> None:
    """ae, clip_l and t5xxl files in models/VAE and models/text_encoder, one at a time."""
    for seed, (kind, shapes) in enumerate(_encoder_shapes().items(), start=10):
        folder = folders["vae_dir"] if kind == "vae" else folders["te_dir"]
        _save(tiled_state(shapes, seed=seed, dtype=dtype), folder / f"{kind}.safetensors")


def _write_all_in_one(folders: dict[str, Path], sizes: FluxSizes, transformer_dtype: torch.dtype,
                      t5_dtype: torch.dtype = STORED) -> Path:
    state = {"model.diffusion_model." + k: v
             for k, v in tiled_state(bfl_transformer_shapes(sizes), dtype=transformer_dtype).items()}
    prefixes = {"vae": "vae.", "clip_l": "text_encoders.clip_l.transformer.",
                "t5xxl": "text_encoders.t5xxl.transformer."}
    for seed, (kind, shapes) in enumerate(_encoder_shapes().items(), start=10):
        dtype = t5_dtype if kind == "t5xxl" else STORED
        state |= {prefixes[kind] + k: v for k, v in tiled_state(shapes, seed=seed, dtype=dtype).items()}
    return _save(state, folders["ckpt_dir"] / "flux-aio.safetensors")


def _file_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def _assert_transformer_took_every_tensor(model, checkpoint: Path, prefix: str = "") -> None:
    """The key map is total: the file's transformer tensors, renamed and split, are exactly the
    module's tensors (no missing, no unexpected key) and each value is the file's, upcast. Read
    one tensor at a time: a second copy of the transformer would double the test's peak."""
    loaded = model.unet.state_dict()
    seen: list[str] = []
    with safe_open(str(checkpoint), framework="pt") as f:
        for file_key in f.keys():
            name = file_key[len(prefix):]
            if not file_key.startswith(prefix) or not flux_keys.is_transformer_key(name):
                continue
            for key, value in flux_keys.bfl_to_diffusers({name: f.get_tensor(file_key)}, hidden=DEV.hidden).items():
                assert torch.equal(loaded[key], value.to(torch.float32)), key
                seen.append(key)
    assert sorted(seen) == sorted(loaded)


def _assert_one_step_is_finite(engine, title: str) -> None:
    """A 1-step 64x64 txt2img through the engine; the transformer's output in it is finite and
    not constant (watched with a forward hook: the PNG alone would hide NaNs)."""
    outputs: list[torch.Tensor] = []

    def watch(module, args, output) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output.sample).detach().clone())

    hook = engine.loaded.unet.register_forward_hook(watch)
    try:
        job = replace(make_job(width=64, height=64, steps=1, cfg_scale=1.0), model_title=title)
        result = engine.txt2img(job, RecordingObserver(), CancelToken())
    finally:
        hook.remove()
    assert len(outputs) == 1 and torch.isfinite(outputs[0]).all() and float(outputs[0].std()) > 0
    pixels = np.asarray(result.images[0].image)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def _assert_detected(model, architecture: str) -> None:
    config = model.unet.config
    assert model.family == "flux" and model.architecture == architecture
    assert (config.num_layers, config.num_single_layers) == (1, 1)
    assert (config.num_attention_heads, config.attention_head_dim) == (24, 128)
    assert (config.joint_attention_dim, config.pooled_projection_dim, config.in_channels) == (4096, 768, 64)
    assert model.dtype == torch.float32 and model.unet.dtype == torch.float32
    assert model.text_encoder_2.config.d_model == 4096 and model.text_encoder_2.config.num_layers == 1
    assert model.text_encoder.config.hidden_size == 768
    assert list(model.vae.config.block_out_channels) == [128, 256, 512, 512]


@pytest.mark.parametrize("sizes", [DEV, SCHNELL], ids=["dev", "schnell"])
def test_bfl_transformer_file_with_module_files(tmp_path, sizes):
    folders = _folders(tmp_path)
    checkpoint = _save(tiled_state(bfl_transformer_shapes(sizes), dtype=STORED),
                       folders["ckpt_dir"] / "flux-bfl.safetensors")
    _write_modules(folders)
    gc.collect()
    engine = cpu_engine(folders)
    model = engine.load(checkpoint.name)
    _assert_detected(model, "flux-dev" if sizes.guidance else "flux-schnell")
    assert model.flow_shift == (1.15 if sizes.guidance else 1.0)
    assert len(model.module_files) == 3
    _assert_transformer_took_every_tensor(model, checkpoint)
    _assert_one_step_is_finite(engine, checkpoint.name)


def test_all_in_one_file(tmp_path):
    folders = _folders(tmp_path)
    checkpoint = _write_all_in_one(folders, DEV, STORED)
    gc.collect()
    engine = cpu_engine(folders)
    model = engine.load(checkpoint.name)
    _assert_detected(model, "flux-dev")
    assert model.module_files == ()  # every part from the one file
    _assert_transformer_took_every_tensor(model, checkpoint, "model.diffusion_model.")
    shared = _file_tensor(checkpoint, "text_encoders.t5xxl.transformer.shared.weight")
    assert torch.equal(model.text_encoder_2.state_dict()["shared.weight"], shared.float())
    _assert_one_step_is_finite(engine, checkpoint.name)


def test_float8_e4m3fn_file(tmp_path):
    """The fp8 all-in-one layout people download: transformer and T5 in float8_e4m3fn, upcast at load
    (exactly: every fp8 value is a float32 value)."""
    folders = _folders(tmp_path)
    checkpoint = _write_all_in_one(folders, DEV, torch.float8_e4m3fn, t5_dtype=torch.float8_e4m3fn)
    with safe_open(str(checkpoint), framework="pt") as f:
        assert f.get_slice("model.diffusion_model.img_in.weight").get_dtype() == "F8_E4M3"
    gc.collect()
    engine = cpu_engine(folders)
    model = engine.load(checkpoint.name)
    _assert_detected(model, "flux-dev")
    _assert_transformer_took_every_tensor(model, checkpoint, "model.diffusion_model.")
    key = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    stored = _file_tensor(checkpoint, "text_encoders.t5xxl.transformer." + key)
    assert stored.dtype == torch.float8_e4m3fn
    assert torch.equal(model.text_encoder_2.state_dict()[key], stored.float())
    _assert_one_step_is_finite(engine, checkpoint.name)


def _write_gguf_q8(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """City96-style Flux GGUF: BFL names, 2-D weights Q8_0, the rest float32. Returns the
    dequantized value of each tensor (what the loader must produce)."""
    import gguf
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch="flux")
    q8 = gguf.GGMLQuantizationType.Q8_0
    expected: dict[str, np.ndarray] = {}
    for key, tensor in tiled_state(shapes, dtype=STORED).items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[1] % 32 == 0:
            packed = quants.quantize(values, q8)
            writer.add_tensor(key, packed, raw_dtype=q8)
            if key in ("img_in.weight", "double_blocks.0.img_mlp.0.weight", "single_blocks.0.linear1.weight"):
                expected[key] = quants.dequantize(packed, q8)
        else:
            writer.add_tensor(key, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_gguf_q8_file(tmp_path):
    """The Q8_0 matrices stay packed (QuantizedLinear, decoded per call); each decodes to exactly
    what the gguf package's reference dequantizes, and the keys still cover the whole module."""
    pytest.importorskip("gguf")
    from webui_api.engine.quantized_linear import QuantizedLinear

    folders = _folders(tmp_path)
    checkpoint = folders["ckpt_dir"] / "flux-q8.gguf"
    expected = _write_gguf_q8(checkpoint, bfl_transformer_shapes(DEV))
    _write_modules(folders)
    gc.collect()
    engine = cpu_engine(folders)
    model = engine.load(checkpoint.name)
    _assert_detected(model, "flux-dev")
    unet = model.unet
    assert not any(isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0 for m in unet.modules())
    all_keys = flux_keys.bfl_to_diffusers(
        {k: torch.empty(s, device="meta") for k, s in bfl_transformer_shapes(DEV).items()}, hidden=DEV.hidden)
    held = {key.replace(".packed_weight", ".weight") for key in unet.state_dict()}
    assert held == set(all_keys)
    mapped = flux_keys.bfl_to_diffusers({k: torch.from_numpy(v) for k, v in expected.items()}, hidden=DEV.hidden)
    for key, value in mapped.items():
        layer = unet.get_submodule(key.removesuffix(".weight"))
        assert isinstance(layer, QuantizedLinear), key
        assert torch.equal(layer.dequantized_weight(), value), key
    _assert_one_step_is_finite(engine, checkpoint.name)
