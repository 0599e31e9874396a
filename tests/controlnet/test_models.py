"""ControlNet files: found, titled and matched like the extension; loaded in both formats."""

from __future__ import annotations

import pytest
import torch

from webui_api.controlnet.catalog import ControlNetCatalog, UnknownControlNetModel
from webui_api.engine.control_models import controlnet_config, load_controlnet
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.hashes import legacy_model_hash

from .helpers import TINY_CONTROLNET, original_state, tiny_controlnet, write_original


def test_catalog_lists_files_and_diffusers_folders_with_legacy_hash_titles(controlnet_dir):
    catalog = ControlNetCatalog((controlnet_dir,))
    names = [entry.name for entry in catalog.files()]
    assert names == ["tiny_canny", "tiny_canny_diffusers", "tiny_depth"]
    canny = catalog.files()[0]
    assert canny.title == f"tiny_canny [{legacy_model_hash(controlnet_dir / 'tiny_canny.safetensors')}]"
    assert len(canny.hash) == 8


def test_names_match_by_title_bare_name_any_case_and_shortest_substring(controlnet_dir):
    catalog = ControlNetCatalog((controlnet_dir,))
    canny = catalog.files()[0]
    assert catalog.find(canny.title) == canny
    assert catalog.find("TINY_CANNY [00000000]") == canny  # stale hash: the name still matches
    assert catalog.find("canny") == canny  # shortest name containing it
    assert catalog.find("depth").name == "tiny_depth"
    with pytest.raises(UnknownControlNetModel) as err:
        catalog.find("openpose")
    assert err.value.status_code == 404 and "tiny_canny [" in err.value.detail


def test_original_layout_and_diffusers_folder_load_the_same_weights(controlnet_dir):
    catalog = ControlNetCatalog((controlnet_dir,))
    single = load_controlnet(catalog.find("tiny_canny"))
    folder = load_controlnet(catalog.find("tiny_canny_diffusers"))
    reference = tiny_controlnet(1).state_dict()
    for loaded in (single, folder):
        state = loaded.module.state_dict()
        assert set(state) == set(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert single.family == folder.family == "tiny" and single.residual_count == 7


def test_config_is_read_from_shapes():
    shapes = {k: tuple(v.shape) for k, v in original_state(tiny_controlnet(3)).items()}
    config, family = controlnet_config(shapes)
    assert family == "tiny"
    for key in ("layers_per_block", "cross_attention_dim", "norm_num_groups", "attention_head_dim"):
        assert config[key] == TINY_CONTROLNET[key]
    assert tuple(config["block_out_channels"]) == TINY_CONTROLNET["block_out_channels"]
    assert tuple(config["down_block_types"]) == TINY_CONTROLNET["down_block_types"]
    assert (
        tuple(config["conditioning_embedding_out_channels"]) == TINY_CONTROLNET["conditioning_embedding_out_channels"]
    )


def test_a_file_that_is_not_a_controlnet_is_a_clear_4xx(tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "ControlNet"
    root.mkdir()
    save_file({"weight": torch.zeros(2)}, str(root / "junk.safetensors"))
    entry = ControlNetCatalog((root,)).find("junk")
    with pytest.raises(UnusableModelFile) as err:
        load_controlnet(entry)
    assert err.value.status_code == 400 and "junk.safetensors" in err.value.detail


def test_engine_keeps_a_small_lru(cn_engine):
    library = cn_engine.controlnets
    for name in ("tiny_canny", "tiny_depth", "tiny_canny_diffusers"):
        library.get(name, torch.device("cpu"), torch.float32)
    assert len(library.cached()) == library.limit == 2
    assert library.cached()[-1].startswith("tiny_canny_diffusers")


@pytest.mark.slow
def test_full_size_sd15_controlnet_in_original_layout_loads_and_gives_residuals(tmp_path):
    """A random-weight SD1.5 ControlNet (diffusers' default config) written with cldm names
    loads through the real loader and yields 12 down residuals plus the middle one."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from webui_api.controlnet.catalog import ControlNetCatalog as Catalog

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = ControlNetModel(cross_attention_dim=768).half()
    state = original_state(source, prefix="control_model.")
    for key in (
        "control_model.input_hint_block.14.weight",
        "control_model.zero_convs.11.0.weight",
        "control_model.middle_block_out.0.weight",
        "control_model.input_blocks.11.0.out_layers.3.weight",
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "control_model.time_embed.2.weight",
    ):
        assert key in state
    root = tmp_path / "ControlNet"
    root.mkdir()
    save_file(state, str(root / "control_sd15_random.safetensors"))
    del source, state
    loaded = load_controlnet(Catalog((root,)).find("control_sd15_random"))
    assert loaded.family == "sd1" and loaded.module.config.attention_head_dim == 8
    module = loaded.module.float()
    with torch.no_grad():
        down, mid = module(
            torch.randn(1, 4, 32, 32),
            torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 77, 768),
            controlnet_cond=torch.rand(1, 3, 256, 256),
            return_dict=False,
        )
    assert [tuple(d.shape[1:]) for d in down] == [(320, 32, 32)] * 3 + [
        (320, 16, 16),
        (640, 16, 16),
        (640, 16, 16),
        (640, 8, 8),
        (1280, 8, 8),
        (1280, 8, 8),
        (1280, 4, 4),
        (1280, 4, 4),
        (1280, 4, 4),
    ]
    assert tuple(mid.shape) == (1, 1280, 4, 4)


def test_diffusers_named_single_file_loads(tmp_path):
    """SDXL ControlNets are often shipped as one file with diffusers' names."""
    from safetensors.torch import save_file

    root = tmp_path / "ControlNet"
    root.mkdir()
    source = tiny_controlnet(4)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(root / "diffusers_named.safetensors"))
    loaded = load_controlnet(ControlNetCatalog((root,)).find("diffusers_named"))
    reference = source.state_dict()
    assert all(torch.equal(loaded.module.state_dict()[k], reference[k]) for k in reference)


TINY_SDXL = {
    "in_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "transformer_layers_per_block": (2, 2),
    "cross_attention_dim": 64,
    "attention_head_dim": (1, 1),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 32 + 6 * 256,
    "conditioning_embedding_out_channels": (8, 8, 16, 16),
}


def test_sdxl_style_controlnet_is_recognised_and_runs_with_added_conditions(tmp_path):
    root = tmp_path / "ControlNet"
    write_original(tiny_controlnet(5, TINY_SDXL), root / "tiny_xl_canny.safetensors")
    loaded = load_controlnet(ControlNetCatalog((root,)).find("tiny_xl"))
    config = loaded.module.config
    assert loaded.family == "sdxl" and config.addition_embed_type == "text_time"
    assert (
        tuple(config.transformer_layers_per_block) == (2, 2)
        and config.projection_class_embeddings_input_dim == 32 + 6 * 256
    )
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    down, mid = loaded.module(
        torch.randn(1, 4, 8, 8),
        torch.tensor([10.0]),
        encoder_hidden_states=torch.randn(1, 77, 64),
        controlnet_cond=torch.rand(1, 3, 64, 64),
        added_cond_kwargs=added,
        return_dict=False,
    )
    assert len(down) + 1 == loaded.residual_count == 5 and mid.abs().sum() > 0
