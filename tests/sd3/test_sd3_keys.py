"""Our MMDiT -> diffusers key map, tensor by tensor against diffusers' own single-file converter,
for SD3, SD3.5 large (qk-norm) and SD3.5 medium (MMDiT-X dual attention); sizes from the keys."""

from __future__ import annotations

import pytest
import torch

from tests.flux.files import random_state
from tests.sd3.files import TINY, TINY_35_LARGE, TINY_35_MEDIUM, MMDiTSizes, mmdit_shapes
from webui_api.engine.loading import sd3_keys


@pytest.mark.parametrize("sizes", [TINY, TINY_35_LARGE, TINY_35_MEDIUM], ids=["sd3", "sd3.5-large", "sd3.5-medium"])
def test_key_map_matches_diffusers_converter(sizes: MMDiTSizes):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = random_state(mmdit_shapes(sizes))
    ours = sd3_keys.mmdit_to_diffusers(state, sizes.depth)
    prefixed = {"model.diffusion_model." + k: v for k, v in state.items()}
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(prefixed)
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("sizes", [TINY, TINY_35_LARGE, TINY_35_MEDIUM], ids=["sd3", "sd3.5-large", "sd3.5-medium"])
def test_config_from_keys_builds_a_model_that_takes_every_tensor(sizes: MMDiTSizes):
    from diffusers import SD3Transformer2DModel

    shapes = mmdit_shapes(sizes)
    config = sd3_keys.transformer_config(shapes)
    assert config["num_layers"] == sizes.depth and config["attention_head_dim"] == sizes.head_dim
    assert config["dual_attention_layers"] == sizes.dual
    assert config["qk_norm"] == ("rms_norm" if sizes.qk_norm else None)
    model = SD3Transformer2DModel(**config)
    converted = sd3_keys.mmdit_to_diffusers(random_state(shapes), sizes.depth)
    missing, unexpected = model.load_state_dict(converted, strict=True), None
    assert unexpected is None and not missing.missing_keys


def test_published_sizes_are_read_from_the_keys():
    medium = sd3_keys.transformer_config(mmdit_shapes(MMDiTSizes()))
    assert (medium["num_attention_heads"], medium["attention_head_dim"], medium["pos_embed_max_size"]) == (24, 64, 192)
    assert sd3_keys.variant(medium) == "sd3"
    large = sd3_keys.transformer_config(mmdit_shapes(MMDiTSizes(depth=38, qk_norm=True)))
    assert large["caption_projection_dim"] == 2432 and sd3_keys.variant(large) == "sd3.5-large"
    dual = tuple(range(13))
    m35 = sd3_keys.transformer_config(mmdit_shapes(MMDiTSizes(depth=24, qk_norm=True, dual=dual, max_positions=384)))
    assert m35["dual_attention_layers"] == dual and sd3_keys.variant(m35) == "sd3.5-medium"


def test_unknown_key_is_refused():
    with pytest.raises(sd3_keys.UnmappedKey):
        sd3_keys.mmdit_to_diffusers({"joint_blocks.0.x_block.attn.mystery.weight": torch.zeros(1)}, 1)


def test_layout_finds_packed_encoders():
    shapes = {"model.diffusion_model." + sd3_keys.MARKER: (3, 1), "first_stage_model.decoder.conv_in.weight": (1,),
              "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": (1,)}
    layout = sd3_keys.sd3_layout(shapes)
    assert sd3_keys.is_sd3(shapes) and layout.vae_prefix == "first_stage_model."
    assert layout.transformer_prefix == "model.diffusion_model." and list(layout.text_prefixes) == ["clip_g"]


@pytest.mark.parametrize("qk_norm", [False, True], ids=["sd3", "sd3.5"])
def test_heads_come_from_the_width_not_the_block_count(qk_norm: bool):
    """A file with fewer blocks than heads (here 2 blocks at SD3.5 large's width 2432 = 38 x 64)
    keeps 64-wide heads: heads follow the width, as Forge's MMDiT reads them (width // 64)."""
    shapes = mmdit_shapes(MMDiTSizes(depth=2, heads=38, qk_norm=qk_norm))
    config = sd3_keys.transformer_config(shapes)
    assert (config["num_layers"], config["num_attention_heads"], config["attention_head_dim"]) == (2, 38, 64)
