"""Flux LoRA in the three key formats: each merges exactly the delta it describes into the
diffusers modules (fused BFL projections split by rows), and weights come back bit exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import TINY, tiny_parts, write_models
from webui_api.engine.facade import Engine
from webui_api.engine.families.flux_lora import apply_flux_networks
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.networks import LoadedNetwork, NetworkCall, NetworkFile, group_network_keys
from webui_api.progress import CancelToken

RANK = 2
H = TINY.hidden


def _pair(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, RANK, generator=g) * 0.1, torch.randn(RANK, inp, generator=g) * 0.1


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture()
def engine(tmp_path, parts):
    paths = write_models(tmp_path, parts, "all-in-one")
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    model_paths = ModelPaths(
        ckpt_dirs=(paths["ckpt_dir"],), lora_dirs=(lora_dir,), text_encoder_dirs=(paths["te_dir"],)
    )
    return Engine(device="cpu", dtype="float32", paths=model_paths), lora_dir


def _network(state: dict, multiplier: float = 1.0) -> LoadedNetwork:
    call = NetworkCall("test", unet_multiplier=multiplier)
    return LoadedNetwork(call, NetworkFile("test", "test", "test.safetensors"), group_network_keys(state))


@pytest.mark.parametrize("layout", ["kohya", "bfl", "diffusers"])
def test_formats_merge_the_same_delta_and_restore(engine, layout):
    eng, _ = engine
    model = eng.load("flux-aio.safetensors")
    up, down = _pair(3 * H, H, seed=1)
    single_up, single_down = _pair(3 * H + 4 * H, H, seed=2)
    if layout == "kohya":
        state = {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
                 "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
                 "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(1.0),
                 "lora_unet_single_blocks_1_linear1.lora_up.weight": single_up,
                 "lora_unet_single_blocks_1_linear1.lora_down.weight": single_down,
                 "lora_unet_single_blocks_1_linear1.alpha": torch.tensor(1.0),
                 "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(2 * H, RANK),
                 "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(RANK, H)}
        scale = 1.0 / RANK
    elif layout == "bfl":
        state = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up,
                 "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down,
                 "diffusion_model.single_blocks.1.linear1.lora_B.weight": single_up,
                 "diffusion_model.single_blocks.1.linear1.lora_A.weight": single_down}
        scale = 1.0
    else:
        state = {}
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            state[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"] = up[i * H : (i + 1) * H]
            state[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"] = down
        for i, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")):
            rows = slice(i * H, (i + 1) * H) if i < 3 else slice(3 * H, None)
            state[f"transformer.single_transformer_blocks.1.{name}.lora_B.weight"] = single_up[rows]
            state[f"transformer.single_transformer_blocks.1.{name}.lora_A.weight"] = single_down
        scale = 1.0
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    patch = apply_flux_networks(model, [_network(state, multiplier=0.5)])
    after = model.unet.state_dict()
    qkv, single = (up @ down) * scale * 0.5, (single_up @ single_down) * scale * 0.5
    assert torch.allclose(after["transformer_blocks.0.attn.to_k.weight"],
                          before["transformer_blocks.0.attn.to_k.weight"] + qkv[H : 2 * H], atol=1e-6)
    assert torch.allclose(after["single_transformer_blocks.1.proj_mlp.weight"],
                          before["single_transformer_blocks.1.proj_mlp.weight"] + single[3 * H :], atol=1e-6)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"transformer_blocks.0.attn.to_{x}.weight" for x in "qkv"} | {
        f"single_transformer_blocks.1.{n}.weight" for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
    patch.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())


def test_lora_tag_in_prompt_changes_the_image_and_is_hashed(engine):
    eng, lora_dir = engine
    up, down = _pair(3 * H, H, seed=3)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up * 10,
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down.contiguous()},
              str(Path(lora_dir) / "flux-style.safetensors"))
    eng.refresh_loras()
    base = replace(make_job(width=32, height=32, steps=2, cfg_scale=1.0), model_title="flux-aio.safetensors")
    plain = eng.txt2img(base, RecordingObserver(), CancelToken())
    tagged = replace(base, prompts=("a cat <lora:flux-style:1>",))
    styled = eng.txt2img(tagged, RecordingObserver(), CancelToken())
    again = eng.txt2img(base, RecordingObserver(), CancelToken())
    image = lambda r: np.asarray(r.images[0].image)  # noqa: E731
    assert not np.array_equal(image(plain), image(styled))
    assert np.array_equal(image(plain), image(again))  # restored after the job
    assert "flux-style" in styled.extra_generation_params.get("Lora hashes", "")


def test_lora_on_float8_stored_weights_merges_in_float32_and_restores_exactly(engine):
    """forge_unet_storage_dtype float8: Forge's LoraLoader upcasts the stored weight, adds the
    delta in float32 and stores the sum back in the stored dtype; restore gives the float8 bytes back."""
    eng, _ = engine
    model = eng.models.load("flux-aio.safetensors", (), torch.float8_e4m3fn)
    key = "transformer_blocks.0.attn.to_k.weight"
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    assert before[key].dtype == torch.float8_e4m3fn
    up, down = _pair(3 * H, H, seed=4)
    state = {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up * 4,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down}
    patch = apply_flux_networks(model, [_network(state)])
    merged = model.unet.state_dict()[key]
    expected = (before[key].float() + ((up * 4) @ down)[H : 2 * H]).to(torch.float8_e4m3fn)  # no alpha: scale 1
    assert merged.dtype == torch.float8_e4m3fn
    assert torch.equal(merged.view(torch.uint8), expected.view(torch.uint8))
    assert not torch.equal(merged.view(torch.uint8), before[key].view(torch.uint8))
    patch.restore()
    for name, value in model.unet.state_dict().items():
        assert value.dtype == before[name].dtype
        assert torch.equal(value.view(torch.uint8), before[name].view(torch.uint8))


def test_lora_tag_on_float8_storage_changes_the_image_then_restores(engine):
    """Was a 501: the job's LoRA is merged into the float8 weights for the job only."""
    eng, lora_dir = engine
    up, down = _pair(3 * H, H, seed=5)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up * 10,
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down.contiguous()},
              str(Path(lora_dir) / "flux-fp8.safetensors"))
    eng.refresh_loras()
    base = replace(make_job(width=32, height=32, steps=2, cfg_scale=1.0), model_title="flux-aio.safetensors")
    base = replace(base, engine_options=replace(base.engine_options, forge_unet_storage_dtype="float8-e4m3fn"))
    plain = eng.txt2img(base, RecordingObserver(), CancelToken())
    styled = eng.txt2img(replace(base, prompts=("a cat <lora:flux-fp8:1>",)), RecordingObserver(), CancelToken())
    again = eng.txt2img(base, RecordingObserver(), CancelToken())
    image = lambda r: np.asarray(r.images[0].image)  # noqa: E731
    assert not np.array_equal(image(plain), image(styled))
    assert np.array_equal(image(plain), image(again))
    assert "flux-fp8" in styled.extra_generation_params.get("Lora hashes", "")
