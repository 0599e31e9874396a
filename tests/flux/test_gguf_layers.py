"""GGUF transformers keep their quantized matrices packed and decode each Linear's weight per call:
the torch kernels equal the gguf package's reference decoding for every supported type, the image
equals the dequantize-at-load one (a safetensors file of the decoded tensors), resident bytes are
about the file's, not float32's, and a LoRA is added to the decoded weight at call time (same image
as merging it into the decoded file), dropped after the job. Flux and SD3 both."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import cpu_engine, write_gguf
from tests.flux.files import tiny_parts as flux_parts
from tests.flux.files import write_models as write_flux
from tests.sd3.files import tiny_parts as sd3_parts
from tests.sd3.files import write_models as write_sd3
from webui_api.engine import ggml_dequant
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.gguf_files import read_gguf_state
from webui_api.engine.quantized_linear import QuantizedLinear
from webui_api.progress import CancelToken

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants  # noqa: E402

KERNEL_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
SCALE_FIELDS = {  # byte offsets of each block's fp16 scale / minimum fields
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2),
    "Q6_K": (208,),
}


@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_torch_kernels_decode_like_the_reference(name):
    qtype = getattr(GGMLQuantizationType, name)
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(7)
    rows, blocks = 5, 3
    raw = rng.integers(0, 256, size=(rows, blocks, size), dtype=np.uint8)
    for offset in SCALE_FIELDS[name]:  # random bytes are often inf/NaN as fp16: give scales sane values
        scales = rng.uniform(-0.2, 0.2, size=(rows, blocks)).astype(np.float16)
        raw[..., offset : offset + 2] = scales.view(np.uint8).reshape(rows, blocks, 2)
    raw = raw.reshape(rows, blocks * size)
    expected = quants.dequantize(raw, qtype)
    ours = ggml_dequant.dequantize(torch.from_numpy(raw), int(qtype), (rows, blocks * block), torch.float32)
    assert torch.equal(ours, torch.from_numpy(expected.astype(np.float32)))


FAMILIES = {  # tiny parts, a layer a LoRA on the first block's image qkv reaches, that LoRA's Kohya name
    "flux": (flux_parts, "transformer_blocks.0.attn.to_k", "lora_unet_double_blocks_0_img_attn_qkv"),
    "sd3": (sd3_parts, "transformer_blocks.0.attn.to_k", "lora_unet_joint_blocks_0_x_block_attn_qkv"),
}


def _models(root: Path, family: str, parts: dict, quantized: str) -> tuple[dict, Path]:
    """The family's models folder with the transformer as GGUF, and a second checkpoint holding
    the same tensors decoded to float32 (the dequantize-at-load reference) beside it."""
    if family == "flux":
        paths = write_flux(root, parts, "bfl")
    else:
        paths = write_sd3(root, parts, packed=())
    checkpoint = Path(paths["checkpoint"])
    transformer = parts["transformer"]
    prefix = "" if family == "flux" else "model.diffusion_model."
    write_gguf(checkpoint.with_suffix(".gguf"), {prefix + k: v for k, v in transformer.items()}, quantized)
    decoded = read_gguf_state(checkpoint.with_suffix(".gguf"))  # the dequantize-at-load reading
    if family == "sd3":
        vae = {"first_stage_model." + k: v.contiguous() for k, v in parts["vae"].items()}
        save_file({**decoded, **vae}, str(checkpoint))
        bare_vae = {k: v.contiguous() for k, v in parts["vae"].items()}  # the GGUF file's VAE: a module file
        save_file(bare_vae, str(Path(paths["vae_dir"]) / "sd3-vae.safetensors"))
    else:
        save_file(decoded, str(checkpoint))
    return paths, checkpoint


def _engine(paths: dict, lora_dir: Path):
    from webui_api.engine.facade import Engine

    model_paths = ModelPaths(ckpt_dirs=(paths["ckpt_dir"],), vae_dirs=(paths["vae_dir"],),
                             text_encoder_dirs=(paths["te_dir"],), lora_dirs=(lora_dir,))
    return Engine(device="cpu", dtype="float32", paths=model_paths)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def setup(request, tmp_path_factory):
    family = request.param
    make_parts, layer, lora_group = FAMILIES[family]
    root = tmp_path_factory.mktemp(family)
    paths, checkpoint = _models(root, family, make_parts(), "Q8_0")
    lora_dir = root / "Lora"
    lora_dir.mkdir()
    model = cpu_engine(paths).load(checkpoint.with_suffix(".gguf").name)
    hidden = model.unet.get_submodule(layer).in_features
    g = torch.Generator().manual_seed(3)
    save_file({f"{lora_group}.lora_up.weight": torch.randn(3 * hidden, 2, generator=g),
               f"{lora_group}.lora_down.weight": torch.randn(2, hidden, generator=g)},
              str(lora_dir / "style.safetensors"))
    return family, paths, checkpoint, lora_dir


def _image(engine, title: str, prompt: str = "a cat") -> np.ndarray:
    job = replace(make_job((prompt,), width=32, height=32, steps=2, cfg_scale=1.0), model_title=title)
    return np.asarray(engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image)


def test_layers_stay_packed_and_memory_is_near_the_file_size(setup):
    family, paths, checkpoint, lora_dir = setup
    model = _engine(paths, lora_dir).load(checkpoint.with_suffix(".gguf").name)
    packed = [m for m in model.unet.modules() if isinstance(m, QuantizedLinear)]
    assert len(packed) > 10 and not any(isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0
                                        for m in model.unet.modules())
    resident = sum(t.numel() * t.element_size() for t in [*model.unet.parameters(), *model.unet.buffers()])
    float32 = sum(m.in_features * m.out_features * 4 for m in packed) + sum(
        t.numel() * 4 for t in [*model.unet.parameters(), *model.unet.buffers()] if t.is_floating_point())
    gguf_bytes = checkpoint.with_suffix(".gguf").stat().st_size
    assert resident < 0.4 * float32  # Q8_0: 34 bytes per 32 weights instead of 128
    assert resident < 1.2 * gguf_bytes


def test_image_equals_the_dequantized_at_load_file(setup):
    family, paths, checkpoint, lora_dir = setup
    engine = _engine(paths, lora_dir)
    packed = _image(engine, checkpoint.with_suffix(".gguf").name)
    reference = _image(engine, checkpoint.name)
    assert np.abs(packed.astype(int) - reference.astype(int)).max() <= 1


def test_lora_is_added_after_decoding_and_dropped_after_the_job(setup):
    family, paths, checkpoint, lora_dir = setup
    engine = _engine(paths, lora_dir)
    title = checkpoint.with_suffix(".gguf").name
    plain = _image(engine, title)
    styled = _image(engine, title, "a cat <lora:style:0.7>")
    merged = _image(engine, checkpoint.name, "a cat <lora:style:0.7>")
    assert not np.array_equal(plain, styled)
    assert np.abs(styled.astype(int) - merged.astype(int)).max() <= 1
    assert np.array_equal(_image(engine, title), plain)
    layer = engine.loaded.unet.get_submodule(FAMILIES[family][1])
    assert isinstance(layer, QuantizedLinear) and layer.weight_delta is None


def test_a_packed_matrix_that_fits_no_layer_is_refused():
    """The build uses shape-only placeholders for packed matrices: one that lands in no Linear
    would leave a placeholder as a weight, so the file is refused instead."""
    from webui_api.engine.loading.files import UnusableModelFile
    from webui_api.engine.loading.flow_parts import keep_gguf_quantized
    from webui_api.engine.quantized_linear import PackedWeight

    model = torch.nn.Sequential(torch.nn.Linear(32, 4))
    good = PackedWeight(torch.zeros(4, 34, dtype=torch.uint8), int(GGMLQuantizationType.Q8_0))
    assert keep_gguf_quantized(Path("x.gguf"), model, {"0.weight": good}, dict) == 1
    assert isinstance(model[0], QuantizedLinear)
    wrong = PackedWeight(torch.zeros(5, 34, dtype=torch.uint8), int(GGMLQuantizationType.Q8_0))
    with pytest.raises(UnusableModelFile, match="do not fit a Linear layer"):
        keep_gguf_quantized(Path("x.gguf"), torch.nn.Sequential(torch.nn.Linear(32, 4)), {"0.weight": wrong}, dict)
