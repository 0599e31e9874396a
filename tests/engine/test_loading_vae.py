"""A1111's sd_vae resolution order, and VAE files in the layouts people keep them in."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.engine.ldm_checkpoints import tiny_vae, write_vae
from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.builder import build_vae
from webui_api.engine.loading.discovery import VaeFile
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.vae import resolve_vae, vae_config_for

VAES = [
    VaeFile("anime.vae.safetensors", "/m/Stable-diffusion/anime.vae.safetensors"),
    VaeFile("ft-mse.safetensors", "/m/VAE/ft-mse.safetensors"),
]


def _file(choice) -> str | None:
    return choice.file.model_name if choice.file else None


def test_automatic_prefers_a_vae_named_like_the_checkpoint():
    assert _file(resolve_vae("Automatic", "/m/Stable-diffusion/anime.safetensors", VAES)) == "anime.vae.safetensors"
    assert _file(resolve_vae("Automatic", "/m/Stable-diffusion/photo.safetensors", VAES)) is None
    assert _file(resolve_vae(None, "/m/Stable-diffusion/photo.safetensors", VAES)) is None


def test_an_explicit_choice_wins_unless_per_model_preferences_rule():
    anime = "/m/Stable-diffusion/anime.safetensors"
    assert _file(resolve_vae("ft-mse.safetensors", anime, VAES)) == "ft-mse.safetensors"
    assert _file(resolve_vae("None", anime, VAES)) is None
    assert _file(resolve_vae("ft-mse.safetensors", anime, VAES, overrides_per_model=False)) == "anime.vae.safetensors"
    photo = "/m/Stable-diffusion/photo.safetensors"
    assert _file(resolve_vae("ft-mse.safetensors", photo, VAES, overrides_per_model=False)) == "ft-mse.safetensors"


def test_vae_path_flag_overrides_everything():
    choice = resolve_vae("None", "/m/x.safetensors", VAES, vae_path=Path("/elsewhere/fixed.safetensors"))
    assert choice.file == VaeFile("fixed.safetensors", "/elsewhere/fixed.safetensors") and "--vae-path" in choice.source


def test_user_metadata_beside_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "photo.safetensors"
    checkpoint.with_suffix(".json").write_text('{"vae": "ft-mse.safetensors", "description": "x"}')
    assert _file(resolve_vae("Automatic", str(checkpoint), VAES)) == "ft-mse.safetensors"
    checkpoint.with_suffix(".json").write_text('{"vae": "None"}')
    assert _file(resolve_vae("Automatic", str(checkpoint), VAES)) is None


def test_unknown_and_path_like_names_fall_back_to_none_like_a1111():
    """A1111: "Couldn't find VAE named X; using None instead" (the checkpoint's own VAE)."""
    for name in ("missing.safetensors", "../VAE/ft-mse.safetensors", "/m/VAE/ft-mse.safetensors"):
        assert _file(resolve_vae(name, "/m/x.safetensors", VAES)) is None
        assert _file(resolve_vae(name, "/m/x.safetensors", VAES, overrides_per_model=False)) is None


def test_vae_files_with_and_without_the_checkpoint_prefix(tmp_path):
    source = tiny_vae(seed=3)
    plain = write_vae(tmp_path / "plain.safetensors", source)
    state = safetensors.torch.load_file(str(plain))
    for candidate in (state, {ldm_keys.VAE_PREFIX + k: v for k, v in state.items()}):
        loaded = build_vae(plain, {**candidate, "model_ema.decay": torch.tensor(0.9)}, vae_config_for("sd1"))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    assert build_vae(plain, state, vae_config_for("sdxl")).config.scaling_factor == 0.13025


def _same_weights(source, loaded) -> bool:
    return all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())


def test_diffusers_layout_vae_files_load(tmp_path):
    source = tiny_vae(seed=1)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    state = safetensors.torch.load_file(str(path))
    assert "encoder.down_blocks.0.resnets.0.conv1.weight" in state and ldm_keys.is_diffusers_vae(state)
    loaded = build_vae(path, state, vae_config_for("sd1"))
    assert _same_weights(source, loaded)
    assert dict(loaded.config)["block_out_channels"] == list(source.config.block_out_channels)


def test_legacy_diffusers_attention_names_and_conv_shaped_attention(tmp_path):
    source = tiny_vae(seed=2)
    legacy = {}
    for key, value in source.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value[..., None, None] if value.ndim == 2 and "attentions" in key else value
    assert any(".query." in key for key in legacy)
    assert _same_weights(source, build_vae(tmp_path / "old.bin", legacy, vae_config_for("sd1")))


def test_an_incomplete_diffusers_vae_names_what_is_missing(tmp_path):
    state = {k: v for k, v in tiny_vae(seed=1).state_dict().items() if "decoder.up_blocks.0.resnets.0" not in k}
    with pytest.raises(UnusableModelFile, match=r"decoder\.up\.\d\.block\.0"):
        build_vae(tmp_path / "x.safetensors", state, vae_config_for("sd1"))
