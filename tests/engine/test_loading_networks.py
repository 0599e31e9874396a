"""LoRA / LoCon: prompt tags, the /sdapi/v1/loras catalog, weight deltas, and per-job
application that leaves no trace (the next job equals the baseline bit for bit)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch

from tests.engine.helpers import RecordingObserver, engine_options, make_job, with_options
from tests.engine.ldm_checkpoints import RANK, build_networks, kohya_sd1_lora, lora_pair, write_checkpoint
from webui_api.engine.facade import Engine
from webui_api.engine.job_networks import job_networks, with_default_lora
from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.hashes import HashCache, addnet_hash
from webui_api.engine.networks import (
    ExtraNetworkTag,
    LoadedNetwork,
    NetworkCall,
    NetworkLibrary,
    apply_networks,
    group_network_keys,
    lora_calls,
    lora_delta,
    parse_prompt_networks,
)
from webui_api.errors import BadRequest, NotFound, NotImplementedFeature
from webui_api.progress import CancelToken


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    nets = build_networks("sd1", seed=1)
    write_checkpoint(root / "models" / "Stable-diffusion" / "base.safetensors", nets)
    lora_dir = root / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    safetensors.torch.save_file(
        kohya_sd1_lora(nets.unet, nets.text_encoder),
        str(lora_dir / "style_v2.safetensors"),
        metadata={
            "ss_output_name": "style",
            "ss_network_dim": "4",
            "ss_sd_model_name": "base",
            "ss_tag_frequency": '{"a": {"cat": 2}}',
        },
    )
    torch.save(kohya_sd1_lora(nets.unet, nets.text_encoder, seed=3), lora_dir / "other.pt")
    return root


@pytest.fixture(scope="module")
def engine(data):
    paths = ModelPaths(
        data_dir=data, ckpt_dirs=(data / "models" / "Stable-diffusion",), lora_dirs=(data / "models" / "Lora",)
    )
    return Engine(device="cpu", dtype="float32", paths=paths)


def _run(engine: Engine, prompt: str = "a cat", **kwargs):
    return engine.txt2img(
        make_job(prompts=(prompt,), seeds=(4,), steps=2, **kwargs), RecordingObserver(), CancelToken()
    )


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def _weights(model) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.clone() for name, module in model.modules().items() for k, v in module.state_dict().items()
    }


# -- tags --------------------------------------------------------------------------------


def test_extra_network_tags_are_stripped_and_parsed():
    text, tags = parse_prompt_networks("a <lora:style:0.8> cat, <hypernet:h:1> <lyco:locon:te=0.2:unet=0.7>")
    assert text == "a  cat,  "
    assert [tag.kind for tag in tags] == ["lora", "hypernet", "lyco"]
    assert lora_calls(tags) == [NetworkCall("style", 0.8, 0.8), NetworkCall("locon", 0.2, 0.7)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x", NetworkCall("x", 1.0, 1.0)),
        ("x:0.5:0.25", NetworkCall("x", 0.5, 0.25)),
        ("x:0.5:0.25:8", NetworkCall("x", 0.5, 0.25, 8)),
        ("x:1:dyn=2:unet=0", NetworkCall("x", 1.0, 0.0, 2)),
    ],
)
def test_a1111_argument_rules(text, expected):
    assert lora_calls([ExtraNetworkTag.parse("lora", text)]) == [expected]


def test_bad_tag_arguments_are_400():
    with pytest.raises(BadRequest, match="te must be a number.*'heavy'"):
        lora_calls([ExtraNetworkTag.parse("lora", "x:heavy")])


def test_batches_naming_different_networks_are_refused():
    job = make_job(prompts=("<lora:a:1> cat", "<lora:b:1> dog"), seeds=(1, 2), n_iter=2)
    with pytest.raises(NotImplementedFeature):
        job_networks(job)
    same = make_job(prompts=("<lora:a:1> cat", "<lora:a:1> dog"), seeds=(1, 2), n_iter=2)
    assert job_networks(same) == ((" cat", " dog"), [NetworkCall("a")])


# -- catalog -----------------------------------------------------------------------------


def test_lora_listing_is_a1111s(engine, data):
    items = [network.api_item() for network in engine.loras()]
    assert [item["name"] for item in items] == ["other", "style_v2"]
    style = items[1]
    assert style["alias"] == "style" and style["path"] == str(data / "models" / "Lora" / "style_v2.safetensors")
    order = list(style["metadata"])  # A1111's display order first, then the file's own order
    assert order[:2] == ["ss_sd_model_name", "ss_tag_frequency"] and set(order[2:]) == {
        "ss_network_dim",
        "ss_output_name",
    }
    assert style["metadata"]["ss_tag_frequency"] == {"a": {"cat": 2}}  # JSON strings decoded, as A1111 does
    assert items[0]["alias"] == "other" and items[0]["metadata"] == {}


def test_lookup_by_name_or_alias_and_unknown_names(engine):
    library = engine.networks.library
    assert library.find("style").name == library.find("style_v2").name == "style_v2"
    for name in ("missing", "../Lora/style_v2", "None"):
        with pytest.raises(NotFound):
            library.find(name)


def test_refresh_finds_new_files(tmp_path):
    library = NetworkLibrary(ModelPaths(lora_dirs=(tmp_path,)), HashCache(None))
    assert library.files() == []
    safetensors.torch.save_file({"x.alpha": torch.tensor(1.0)}, str(tmp_path / "new.safetensors"))
    library.refresh()
    assert [entry.name for entry in library.files()] == ["new"]


# -- deltas ------------------------------------------------------------------------------


def test_linear_conv_and_cp_deltas():
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g)
    weight = torch.zeros(5, 6)
    expected = (up @ down) * (2.0 / 4)
    assert torch.allclose(
        lora_delta({"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}, weight, None), expected
    )
    assert torch.allclose(lora_delta({"lora_A.weight": down, "lora_B.weight": up}, weight, None), up @ down)
    assert torch.allclose(lora_delta({"lora_down.weight": down, "lora_up.weight": up}, weight, 2), up[:, :2] @ down[:2])
    conv_down, conv_up = torch.randn(4, 3, 3, 3, generator=g), torch.randn(5, 4, 1, 1, generator=g)
    conv = lora_delta({"lora_down.weight": conv_down, "lora_up.weight": conv_up}, torch.zeros(5, 3, 3, 3), None)
    assert torch.allclose(
        conv, torch.nn.functional.conv2d(conv_down.permute(1, 0, 2, 3), conv_up).permute(1, 0, 2, 3), atol=1e-5
    )
    mid = torch.randn(4, 4, 3, 3, generator=g)
    cp = lora_delta(
        {"lora_down.weight": torch.randn(4, 3, 1, 1, generator=g), "lora_up.weight": conv_up, "lora_mid.weight": mid},
        torch.zeros(5, 3, 3, 3),
        None,
    )
    assert cp.shape == (5, 3, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        lora_delta({"lora_down.weight": down, "lora_up.weight": up}, torch.zeros(7, 7), None)


# -- per job -----------------------------------------------------------------------------


def test_lora_changes_the_image_and_leaves_no_trace(engine):
    baseline = _run(engine)
    weights_before = _weights(engine.loaded)
    with_lora = _run(engine, "a cat <lora:style:1>")
    assert not np.array_equal(_pixels(baseline), _pixels(with_lora))
    after = _run(engine)
    assert np.array_equal(_pixels(baseline), _pixels(after))
    weights_after = _weights(engine.loaded)
    assert all(torch.equal(weights_before[k], weights_after[k]) for k in weights_before)


def test_lora_infotext_and_prompt_keep_the_tag(engine, data):
    result = _run(engine, "a cat <lora:style:0.7>")
    expected_hash = addnet_hash(data / "models" / "Lora" / "style_v2.safetensors")[:12]
    assert result.extra_generation_params["Lora hashes"] == f"style: {expected_hash}"
    assert result.images[0].prompt == "a cat <lora:style:0.7>"
    both = _run(engine, "a cat <lora:style:0.7> <lora:other:0.2>")
    assert both.extra_generation_params["Lora hashes"].startswith(f"style: {expected_hash}, other: ")


def test_text_encoder_only_and_unet_only_weights(engine):
    baseline = _pixels(_run(engine))
    te_only = _pixels(_run(engine, "a cat <lora:style:1:0>"))
    unet_only = _pixels(_run(engine, "a cat <lora:style:0:1>"))
    nothing = _pixels(_run(engine, "a cat <lora:style:0:0>"))
    assert np.array_equal(nothing, baseline)
    assert not np.array_equal(te_only, baseline) and not np.array_equal(unet_only, baseline)
    assert not np.array_equal(te_only, unet_only)


def test_missing_lora_is_skipped_like_a1111_and_nothing_changes(engine):
    """A1111 logs "Networks not found" and generates without it (200); no Lora hashes for it."""
    before = _weights(engine.load())
    result = _run(engine, "a cat <lora:nope:1>")
    assert _pixels(result).tolist() == _pixels(_run(engine, "a cat")).tolist()
    assert "Lora hashes" not in result.extra_generation_params
    assert result.images[0].prompt == "a cat <lora:nope:1>"
    assert all(torch.equal(before[k], v) for k, v in _weights(engine.loaded).items())


def test_foreign_and_unsupported_networks_are_refused_and_rolled_back(engine, tmp_path):
    model = engine.load()
    before = _weights(model)
    good = group_network_keys(kohya_sd1_lora(model.unet, model.text_encoder))
    foreign = {
        "lora_unet_input_blocks_99_1_proj_in": {
            "lora_down.weight": torch.zeros(4, 8),
            "lora_up.weight": torch.zeros(8, 4),
        }
    }
    loha = {"lora_unet_mid_block_attentions_0_proj_out": {"hada_w1_a": torch.zeros(2, 2)}}
    for groups, words in (
        (foreign, "none of its 1 layers match"),
        ({**good, **loha}, "LoHa networks are not supported"),
    ):
        network = LoadedNetwork(NetworkCall("x"), engine.loras()[0], groups)
        with pytest.raises(UnusableModelFile, match=words):
            apply_networks(model, [network])
        assert all(torch.equal(before[k], v) for k, v in _weights(model).items())


def test_sdxl_kohya_names_and_peft_names_reach_the_right_modules():
    nets = build_networks("sdxl", seed=2)
    model = type(
        "Model", (), {"unet": nets.unet, "text_encoder": nets.text_encoder, "text_encoder_2": nets.text_encoder_2}
    )()
    layout = ldm_keys.UNetLayout.from_config(nets.unet.config)
    path = "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v"
    original = ldm_keys.unet_key_to_ldm(path + ".weight", layout)[len(ldm_keys.UNET_PREFIX) : -len(".weight")]
    assert original == "input_blocks.3.1.transformer_blocks.1.attn2.to_v"  # one resnet per level in the tiny UNet
    weight = nets.unet.get_submodule(path).weight
    g = torch.Generator().manual_seed(0)
    state = {
        f"lora_unet_{original.replace('.', '_')}.{part}": t
        for part, t in lora_pair(g, tuple(weight.shape), (weight.shape[1],)).items()
    }
    te2 = nets.text_encoder_2.get_submodule("text_model.encoder.layers.0.mlp.fc1").weight
    state.update(
        {
            f"lora_te2_text_model_encoder_layers_0_mlp_fc1.{p}": t
            for p, t in lora_pair(g, tuple(te2.shape), (te2.shape[1],)).items()
        }
    )
    peft_target = nets.unet.get_submodule("up_blocks.0.attentions.0.proj_out").weight
    state["unet.up_blocks.0.attentions.0.proj_out.lora_A.weight"] = torch.randn(RANK, peft_target.shape[1], generator=g)
    state["unet.up_blocks.0.attentions.0.proj_out.lora_B.weight"] = torch.randn(peft_target.shape[0], RANK, generator=g)
    originals = [t.clone() for t in (weight, te2, peft_target)]
    entry = type("Entry", (), {"filename": "x.safetensors", "name": "x"})()
    patch = apply_networks(model, [LoadedNetwork(NetworkCall("x"), entry, group_network_keys(state))])
    assert all(not torch.equal(t, o) for t, o in zip((weight, te2, peft_target), originals, strict=True))
    patch.restore()
    assert all(torch.equal(t, o) for t, o in zip((weight, te2, peft_target), originals, strict=True))


def test_pickled_lora_loads_with_weights_only(engine):
    baseline = _pixels(_run(engine))
    assert not np.array_equal(_pixels(_run(engine, "a cat <lora:other:1>")), baseline)


def test_batch_prompts_are_all_stripped(engine):
    job = make_job(prompts=("a cat <lora:style:1>",), seeds=(1, 2), batch_size=2, steps=1)
    result = engine.txt2img(
        replace(job, prompts=("a cat <lora:style:1>", "a dog <lora:style:1>")), RecordingObserver(), CancelToken()
    )
    assert [image.prompt for image in result.images] == ["a cat <lora:style:1>", "a dog <lora:style:1>"]


# -- disable_extra_networks and sd_lora ------------------------------------------------------


def test_disabled_extra_networks_strip_the_tags_and_apply_nothing(engine):
    disabled = {"disable_extra_networks": True}
    job = make_job(prompts=("<lora:a:1> cat", "<lora:b:1> dog"), seeds=(1, 2), n_iter=2, options=disabled)
    assert job_networks(job) == ((" cat", " dog"), [])
    baseline = _run(engine)
    result = _run(engine, "a cat<lora:style:1>", options=disabled)
    assert np.array_equal(_pixels(result), _pixels(baseline))
    assert "Lora hashes" not in result.extra_generation_params
    assert result.images[0].prompt == "a cat<lora:style:1>"
    with_lora = _run(engine, "a cat<lora:style:1>", options={"disable_extra_networks": False})
    assert not np.array_equal(_pixels(with_lora), _pixels(baseline))


def test_sd_lora_appends_the_default_network_to_every_prompt():
    job = make_job(
        prompts=("a cat", "a dog"), seeds=(1, 2), batch_size=2, options={"extra_networks_default_multiplier": 0.5}
    )
    assert with_default_lora(job, "style").prompts == ("a cat<lora:style:0.5>", "a dog<lora:style:0.5>")
    assert with_default_lora(job, None) is job
    named = replace(job, prompts=("a cat <lyco:style:0.2>", "a dog"))
    assert with_default_lora(named, "style") is named
    disabled = with_options(job, {"disable_extra_networks": True})
    assert with_default_lora(disabled, "style") is disabled


def test_sd_lora_option_applies_the_network_and_shows_in_infotext(engine, data):
    explicit = _run(engine, "a cat<lora:style_v2:1.0>")
    by_option = _run(engine, options={"sd_lora": "style_v2", "extra_networks_default_multiplier": 1.0})
    assert np.array_equal(_pixels(by_option), _pixels(explicit))
    assert by_option.images[0].prompt == "a cat<lora:style_v2:1.0>"
    assert by_option.extra_generation_params["Lora hashes"].startswith("style_v2: ")
    # A1111 looks the option up by file name only: an alias ("style") or an unknown name is ignored
    assert engine.networks.default_lora(engine_options({"sd_lora": "style"})) is None
    assert engine.networks.default_lora(engine_options({"sd_lora": "None"})) is None
    unknown = _run(engine, options={"sd_lora": "missing"})
    assert np.array_equal(_pixels(unknown), _pixels(_run(engine)))
