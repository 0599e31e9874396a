"""SD3 LoRA in the three key formats (Kohya, MMDiT names, diffusers/PEFT): each merges exactly
W + w * (up @ down) * alpha / rank into the diffusers modules (fused qkv split by rows, the last
block's pre-only modulation with its halves swapped as the loader swaps them), text-encoder
layers take the te weight, unknown layers are logged and skipped, weights come back bit exactly,
and through the engine a `<lora:...>` tag changes the image (weight 0 does not) and is hashed."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.engine.helpers import RecordingObserver, make_job
from tests.sd3.files import TINY, tiny_parts, write_models
from webui_api.engine.facade import Engine
from webui_api.engine.families.sd3_lora import apply_sd3_networks
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.networks import LoadedNetwork, NetworkCall, NetworkFile, group_network_keys
from webui_api.errors import BadRequest
from webui_api.progress import CancelToken

RANK = 2
H = TINY.hidden
ALPHA = 4.0


def _pair(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, RANK, generator=g) * 0.1, torch.randn(RANK, inp, generator=g) * 0.1


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture()
def engine(tmp_path, parts):
    paths = write_models(tmp_path, parts)
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    model_paths = ModelPaths(ckpt_dirs=(paths["ckpt_dir"],), vae_dirs=(paths["vae_dir"],),
                             text_encoder_dirs=(paths["te_dir"],), lora_dirs=(lora_dir,))
    return Engine(device="cpu", dtype="float32", paths=model_paths), lora_dir


def _network(state: dict, unet: float = 1.0, te: float = 1.0) -> LoadedNetwork:
    call = NetworkCall("test", te_multiplier=te, unet_multiplier=unet)
    return LoadedNetwork(call, NetworkFile("test", "test", "test.safetensors"), group_network_keys(state))


def _state(layout: str, qkv: tuple, mod: tuple) -> tuple[dict, float]:
    """A LoRA on block 0's image qkv and the last block's (pre-only) context modulation."""
    (up, down), (mod_up, mod_down) = qkv, mod
    if layout == "kohya":
        state = {}
        for name, (u, d) in (("joint_blocks_0_x_block_attn_qkv", qkv),
                             ("joint_blocks_1_context_block_adaLN_modulation_1", mod)):
            state |= {f"lora_unet_{name}.lora_up.weight": u, f"lora_unet_{name}.lora_down.weight": d,
                      f"lora_unet_{name}.alpha": torch.tensor(ALPHA)}
        return state, ALPHA / RANK
    if layout == "mmdit":
        return {"diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_B.weight": up,
                "diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_A.weight": down,
                "diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.lora_B.weight": mod_up,
                "diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.lora_A.weight": mod_down}, 1.0
    state = {}
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        state[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"] = up[i * H : (i + 1) * H]
        state[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"] = down
    swapped = torch.cat([mod_up[H:], mod_up[:H]])  # diffusers' (scale, shift) order
    state["transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"] = swapped
    state["transformer.transformer_blocks.1.norm1_context.linear.lora_A.weight"] = mod_down
    return state, 1.0


@pytest.mark.parametrize("layout", ["kohya", "mmdit", "diffusers"])
def test_formats_merge_the_hand_computed_delta_and_restore(engine, layout):
    eng, _ = engine
    model = eng.load("sd3.safetensors")
    qkv, mod = _pair(3 * H, H, seed=1), _pair(2 * H, H, seed=2)
    state, scale = _state(layout, qkv, mod)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    patch = apply_sd3_networks(model, [_network(state, unet=0.5)])
    after = model.unet.state_dict()
    delta = (qkv[0] @ qkv[1]) * scale * 0.5
    key = "transformer_blocks.0.attn.to_k.weight"
    assert torch.allclose(after[key], before[key] + delta[H : 2 * H], atol=1e-6)
    mod_delta = (mod[0] @ mod[1]) * scale * 0.5  # MMDiT order (shift, scale); diffusers holds (scale, shift)
    key = "transformer_blocks.1.norm1_context.linear.weight"
    assert torch.allclose(after[key][:H], before[key][:H] + mod_delta[H:], atol=1e-6)
    assert torch.allclose(after[key][H:], before[key][H:] + mod_delta[:H], atol=1e-6)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"transformer_blocks.0.attn.to_{x}.weight" for x in "qkv"} | {key}
    patch.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())


def test_text_encoder_layers_take_the_te_weight_and_unknown_layers_are_logged(engine, caplog):
    eng, _ = engine
    model = eng.load("sd3.safetensors")
    fc1 = model.text_encoder_2.get_submodule("text_model.encoder.layers.0.mlp.fc1")
    t5_q = model.text_encoder_3.get_submodule("encoder.block.0.layer.0.SelfAttention.q")
    g_up, g_down = _pair(fc1.weight.shape[0], fc1.weight.shape[1], seed=4)
    t_up, t_down = _pair(t5_q.weight.shape[0], t5_q.weight.shape[1], seed=5)
    state = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": g_up,
             "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": g_down,
             "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": t_up,
             "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": t_down,
             "lora_unet_no_such_block.lora_up.weight": torch.zeros(4, RANK),
             "lora_unet_no_such_block.lora_down.weight": torch.zeros(RANK, 4)}
    fc1_before, q_before = fc1.weight.detach().clone(), t5_q.weight.detach().clone()
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        patch = apply_sd3_networks(model, [_network(state, unet=1.0, te=0.25)])
    assert torch.allclose(fc1.weight, fc1_before + 0.25 * g_up @ g_down, atol=1e-6)
    assert torch.allclose(t5_q.weight, q_before + 0.25 * t_up @ t_down, atol=1e-6)
    assert all(torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())
    assert "lora_unet_no_such_block" in caplog.text and "1 layers match nothing" in caplog.text
    patch.restore()
    assert torch.equal(fc1.weight, fc1_before) and torch.equal(t5_q.weight, q_before)


def test_a_layer_that_does_not_fit_is_a_400_and_nothing_stays_changed(engine):
    eng, _ = engine
    model = eng.load("sd3.safetensors")
    good_up, good_down = _pair(3 * H, H, seed=6)
    state = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": good_up,
             "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": good_down,
             "lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_up.weight": torch.ones(3, RANK),
             "lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_down.weight": torch.ones(RANK, H)}
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with pytest.raises(BadRequest, match="does not fit this SD3 model"):
        apply_sd3_networks(model, [_network(state)])
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())


def test_lora_tag_changes_the_image_weight_zero_does_not_and_is_hashed(engine):
    eng, lora_dir = engine
    up, down = _pair(3 * H, H, seed=3)
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": up * 10,
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": down.contiguous()},
              str(Path(lora_dir) / "sd3-style.safetensors"))
    eng.refresh_loras()
    base = replace(make_job(width=32, height=32, steps=2, cfg_scale=1.0), model_title="sd3.safetensors")
    image = lambda job: np.asarray(eng.txt2img(job, RecordingObserver(), CancelToken()).images[0].image)  # noqa: E731
    plain = image(base)
    styled = eng.txt2img(replace(base, prompts=("a cat <lora:sd3-style:1>",)), RecordingObserver(), CancelToken())
    assert not np.array_equal(plain, np.asarray(styled.images[0].image))
    assert "sd3-style: " in styled.extra_generation_params.get("Lora hashes", "")
    assert np.array_equal(plain, image(replace(base, prompts=("a cat <lora:sd3-style:0>",))))
    assert np.array_equal(plain, image(base))  # restored after the job
