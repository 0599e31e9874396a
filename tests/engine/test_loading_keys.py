"""Original-layout key names: our rules against diffusers' own converters, key counts of the
real architectures, shape inference against the bundled configs, OpenCLIP fusing."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine.loading import infer, ldm_keys
from webui_api.engine.loading.architectures import ARCHITECTURES, load_config
from webui_api.engine.loading.builder import empty_text_encoder, empty_unet, empty_vae, expected_shapes

UNET_CONFIGS = ["unet-sd1", "unet-sd2", "unet-sdxl", "unet-sdxl-refiner"]
# tensors per network in the released checkpoints (what a wrong mapping would miscount)
KEY_COUNTS = {"unet-sd1": 686, "unet-sd2": 686, "unet-sdxl": 1680, "unet-sdxl-refiner": 1220, "vae-sd": 248}
PARAMETER_COUNTS = {
    "unet-sd1": 859_520_964,
    "unet-sdxl": 2_567_463_684,
    "vae-sd": 83_653_863,
    "text-clip-l": 123_060_480,
}


def _ldm_unet_shapes(name: str) -> dict[str, tuple[int, ...]]:
    config = load_config(name)
    layout = ldm_keys.UNetLayout.from_config(config)
    return {ldm_keys.unet_key_to_ldm(k, layout): v for k, v in expected_shapes(empty_unet(config)).items()}


@pytest.mark.parametrize("name", UNET_CONFIGS)
def test_unet_rules_agree_with_diffusers_converter(name):
    """Tag every tensor with its index, rename with our rules, convert back with diffusers'
    own single-file converter: every tag must land on the key it came from."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = load_config(name)
    keys = list(expected_shapes(empty_unet(config)))
    layout = ldm_keys.UNetLayout.from_config(config)
    tagged = {ldm_keys.unet_key_to_ldm(key, layout): torch.tensor([float(i)]) for i, key in enumerate(keys)}
    assert len(tagged) == len(keys) == KEY_COUNTS[name]
    converted = convert_ldm_unet_checkpoint(dict(tagged), dict(config))
    assert {key: float(converted[key]) for key in keys} == {key: float(i) for i, key in enumerate(keys)}


def test_vae_rules_agree_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = load_config("vae-sd")
    shapes = expected_shapes(empty_vae(config))
    tagged = {}
    for i, (key, shape) in enumerate(shapes.items()):
        stored = shape + (1, 1) if ".mid_block.attentions.0.to_" in key and key.endswith("weight") else shape
        tagged[ldm_keys.vae_key_to_ldm(key, 4)[len(ldm_keys.VAE_PREFIX) :]] = torch.full(stored, float(i))
    assert len(tagged) == KEY_COUNTS["vae-sd"]
    converted = convert_ldm_vae_checkpoint(dict(tagged), dict(config))
    for i, (key, shape) in enumerate(shapes.items()):
        assert tuple(converted[key].shape) == shape and float(converted[key].flatten()[0]) == i, key


@pytest.mark.parametrize(
    "key, expected",
    [
        ("conv_in.weight", "model.diffusion_model.input_blocks.0.0.weight"),
        ("down_blocks.0.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight"),
        ("down_blocks.1.attentions.1.proj_in.weight", "model.diffusion_model.input_blocks.5.1.proj_in.weight"),
        ("mid_block.resnets.1.conv2.bias", "model.diffusion_model.middle_block.2.out_layers.3.bias"),
        ("up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.1.conv.weight"),
        ("up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight"),
        (
            "up_blocks.3.resnets.2.conv_shortcut.weight",
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        ),
        ("conv_out.weight", "model.diffusion_model.out.2.weight"),
        ("time_embedding.linear_2.bias", "model.diffusion_model.time_embed.2.bias"),
    ],
)
def test_well_known_sd1_unet_names(key, expected):
    """Names every SD1.5 checkpoint on disk has (written down independently of the rules)."""
    layout = ldm_keys.UNetLayout.from_config(load_config("unet-sd1"))
    assert ldm_keys.unet_key_to_ldm(key, layout) == expected


def test_well_known_vae_and_clip_names():
    assert (
        ldm_keys.vae_key_to_ldm("decoder.up_blocks.0.resnets.0.conv1.weight", 4)
        == "first_stage_model.decoder.up.3.block.0.conv1.weight"
    )
    assert (
        ldm_keys.vae_key_to_ldm("encoder.mid_block.attentions.0.to_q.weight", 4)
        == "first_stage_model.encoder.mid.attn_1.q.weight"
    )
    assert ldm_keys.vae_key_to_ldm("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", 4) == (
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias"
    )
    assert ldm_keys.clip_key_to_ldm("encoder.layers.11.mlp.fc2.weight", "cond_stage_model.transformer.") == (
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"
    )
    assert ldm_keys.legacy_clip_key(
        "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.bias", "cond_stage_model.transformer."
    ) == ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.bias")


def test_unknown_keys_are_refused_loudly():
    layout = ldm_keys.UNetLayout.from_config(load_config("unet-sd1"))
    with pytest.raises(ldm_keys.KeyMappingError, match="mystery"):
        ldm_keys.unet_key_to_ldm("mystery.weight", layout)
    with pytest.raises(ldm_keys.KeyMappingError):
        ldm_keys.vae_key_to_ldm("encoder.mid_block.attentions.0.extra.weight", 4)


@pytest.mark.parametrize("name", PARAMETER_COUNTS)
def test_bundled_configs_have_the_released_sizes(name):
    if name.startswith("unet"):
        module = empty_unet(load_config(name))
    elif name.startswith("vae"):
        module = empty_vae(load_config(name))
    else:
        module = empty_text_encoder(load_config(name), False)
    assert sum(p.numel() for p in module.parameters()) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_inferred_unet_config_builds_the_bundled_architecture(family):
    """Sizes read from a released model's shapes give exactly the bundled network."""
    arch = ARCHITECTURES[family]
    config = load_config(arch.unet_config)
    inferred = infer.unet_config(_ldm_unet_shapes(arch.unet_config), config, arch.head_channels)
    assert expected_shapes(empty_unet(inferred)) == expected_shapes(empty_unet(config))
    assert inferred["attention_head_dim"] == config["attention_head_dim"]


def test_inferred_vae_and_text_configs_match_the_bundled_ones():
    vae = load_config("vae-sdxl")
    shapes = {ldm_keys.vae_key_to_ldm(k, 4): v for k, v in expected_shapes(empty_vae(vae)).items()}
    assert infer.vae_config(shapes, vae, ldm_keys.VAE_PREFIX) == vae
    clip = load_config("text-clip-l")
    prefix = "cond_stage_model.transformer."
    clip_shapes = {
        ldm_keys.clip_key_to_ldm(k, prefix): v for k, v in expected_shapes(empty_text_encoder(clip, False)).items()
    }
    assert infer.clip_text_config(clip_shapes, clip, prefix) == clip


def test_openclip_round_trip_and_fused_attention():
    config = {
        **load_config("text-openclip-g"),
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 1,
    }
    encoder = empty_text_encoder(config, True).to_empty(device="cpu")
    torch.manual_seed(0)
    hf = {k: torch.randn(v.shape) for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    prefix = "conditioner.embedders.1.model."
    original = ldm_keys.hf_to_openclip(hf, prefix)
    fused = original[prefix + "transformer.resblocks.1.attn.in_proj_weight"]
    assert fused.shape == (3 * 64, 64)
    assert torch.equal(fused[64:128], hf["text_model.encoder.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(original[prefix + "text_projection"], hf["text_projection.weight"].t())
    assert ldm_keys.openclip_layer_count(original, prefix) == 2
    back = ldm_keys.openclip_to_hf(original, prefix, 2, with_projection=True)
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)
