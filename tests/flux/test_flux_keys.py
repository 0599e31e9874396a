"""Our BFL -> diffusers key map for Flux.1, checked tensor by tensor against diffusers' own
single-file converter (the oracle), and the sizes read from the keys."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from tests.flux.files import TINY, FluxSizes, bfl_transformer_shapes, random_state
from webui_api.engine.loading import flux_keys


def _thin(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Full first dimensions (what every split and swap acts on), second dimensions cut to 1:
    the full-width published layout at a few kilobytes."""
    return {key: (shape[0], 1) if len(shape) == 2 else shape for key, shape in shapes.items()}


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bfl", "all-in-one"])
def test_key_map_matches_diffusers_converter_at_full_width(guidance: bool, prefix: str) -> None:
    sizes = FluxSizes(double=2, single=3, guidance=guidance)
    state = random_state(_thin(bfl_transformer_shapes(sizes)), seed=1)
    oracle = convert_flux_transformer_checkpoint_to_diffusers({prefix + k: v.clone() for k, v in state.items()})
    ours = flux_keys.bfl_to_diffusers(state, hidden=sizes.hidden)
    assert sorted(ours) == sorted(oracle)
    for key, tensor in oracle.items():
        assert torch.equal(ours[key], tensor), key


def test_config_reads_depth_and_widths_from_keys() -> None:
    shapes = bfl_transformer_shapes(FluxSizes(double=3, single=5, guidance=False))
    config = flux_keys.transformer_config(shapes)
    assert config["num_layers"] == 3 and config["num_single_layers"] == 5
    assert config["num_attention_heads"] == 24 and config["attention_head_dim"] == 128
    assert config["joint_attention_dim"] == 4096 and config["pooled_projection_dim"] == 768
    assert config["guidance_embeds"] is False
    assert config["axes_dims_rope"] == [16, 56, 56]
    assert flux_keys.transformer_config(bfl_transformer_shapes(FluxSizes()))["num_single_layers"] == 38


def test_tiny_map_loads_strictly_into_diffusers_module() -> None:
    from diffusers import FluxTransformer2DModel

    state = random_state(bfl_transformer_shapes(TINY))
    config = flux_keys.transformer_config({k: tuple(v.shape) for k, v in state.items()})
    module = FluxTransformer2DModel(**config)
    module.load_state_dict(flux_keys.bfl_to_diffusers(state, hidden=TINY.hidden), strict=True)


def test_layouts() -> None:
    shapes = bfl_transformer_shapes(TINY)
    assert flux_keys.is_flux(shapes)
    bare = flux_keys.flux_layout(shapes)
    assert bare.transformer_prefix == "" and bare.vae_prefix is None and not bare.has_t5xxl
    packed = {"model.diffusion_model." + k: v for k, v in shapes.items()}
    packed |= {"vae.decoder.conv_in.weight": (4, 16, 3, 3), "text_encoders.t5xxl.transformer.shared.weight": (8, 4)}
    layout = flux_keys.flux_layout(packed)
    assert (layout.transformer_prefix, layout.vae_prefix, layout.has_t5xxl, layout.has_clip_l) == (
        "model.diffusion_model.", "vae.", True, False,
    )
    assert flux_keys.transformer_shapes(packed, layout.transformer_prefix) == shapes


def test_unknown_key_is_refused() -> None:
    with pytest.raises(flux_keys.UnmappedKey):
        flux_keys.bfl_to_diffusers({"double_blocks.0.img_attn.lora_up.weight": torch.zeros(2, 2)}, hidden=2)


def test_gapped_block_numbers_are_refused() -> None:
    shapes = {k.replace("double_blocks.1.", "double_blocks.3."): v for k, v in bfl_transformer_shapes(TINY).items()}
    with pytest.raises(ValueError, match="numbered"):
        flux_keys.transformer_config(shapes)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bfl", "all-in-one"])
@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_published_full_size_layout_fits_diffusers_module(prefix: str, guidance: bool) -> None:
    """The published shapes (19 double + 38 single blocks, width 3072), as meta tensors: the
    real loader converts and checks every key and shape against the empty module."""
    from pathlib import Path

    from webui_api.engine.loading.flux_checkpoint import transformer_component

    shapes = bfl_transformer_shapes(FluxSizes(guidance=guidance))
    state = {prefix + key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    component, config = transformer_component(Path("flux1.safetensors"), state, prefix)
    assert (config["num_layers"], config["num_single_layers"], config["guidance_embeds"]) == (19, 38, guidance)
    assert len(component.state) == len(component.module.state_dict())
