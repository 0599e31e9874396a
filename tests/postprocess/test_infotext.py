"""Infotext writing and parsing, checked against A1111 v1.10 behaviour (API reference section 6)."""

from __future__ import annotations

import pytest

from webui_api.errors import BadRequest
from webui_api.postprocess.infotext import (
    INFOTEXT_TO_OPTION,
    create_infotext,
    override_settings_from_infotext,
    parse_infotext,
    quote,
)
from webui_api.styles import PromptStyle

EXAMPLE_TEXT = (
    "a photo of a cat, <lora:add_detail:0.5>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", '
    "Version: v1.10.1"
)
EXAMPLE_PARAMS = {
    "Steps": 20,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Image CFG scale": None,
    "Seed": 1234,
    "Face restoration": None,
    "Size": "512x768",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Clip skip": 2,
    "Lora hashes": "add_detail: 7c6bad76eb54",
    "Version": "v1.10.1",
}
EXAMPLE_PARSED = {
    "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7.0", "Seed": "1234",
    "Size-1": "512", "Size-2": "768", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
    "Clip skip": "2", "Lora hashes": "add_detail: 7c6bad76eb54", "Version": "v1.10.1",
}
# Defaults A1111 adds when a key is absent (API reference 2.6), in A1111's order.
DEFAULTS = {
    "Hires resize-1": 0, "Hires resize-2": 0,
    "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
    "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
    "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
    "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def test_create_example_matches_reference_text():
    text = create_infotext("a photo of a cat, <lora:add_detail:0.5>", "blurry, lowres", EXAMPLE_PARAMS)
    assert text == EXAMPLE_TEXT


def test_parse_example_gives_reference_dict_and_defaults_in_order():
    expected = {
        **EXAMPLE_PARSED,
        "Prompt": "a photo of a cat, <lora:add_detail:0.5>",
        "Negative prompt": "blurry, lowres",
        **{k: v for k, v in DEFAULTS.items() if k != "Schedule type"},
    }
    parsed = parse_infotext(EXAMPLE_TEXT)
    assert parsed == expected
    assert list(parsed) == list(expected)  # JSON key order of /png-info follows A1111


def test_parse_mixed_types_of_defaults():
    parsed = parse_infotext("just a prompt")
    assert parsed["Prompt"] == "just a prompt"
    assert parsed["Negative prompt"] == ""
    assert parsed["Clip skip"] == "1"
    assert parsed["Masked area padding"] == 32 and parsed["Schedule rho"] == 0
    assert parsed["Refiner switch by sampling steps"] is False
    assert "Emphasis" not in parsed and "Steps" not in parsed


# --------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("key: value", '"key: value"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("back\\slash, x", '"back\\\\slash, x"'),
        ("猫, é", '"猫, é"'),  # non-ASCII kept raw, not \u-escaped
        ('no "special" chars', 'no "special" chars'),  # quotes alone do not force quoting
        (7.0, "7.0"),
        (0.5, "0.5"),
        (True, "True"),
        (1234, "1234"),
    ],
)
def test_quote(value, written):
    assert quote(value) == written


def test_create_skips_none_writes_key_equal_value_as_key_and_strips():
    text = create_infotext("  prompt  ", "", {"Steps": 5, "Tiling": None, "Hires fix": "Hires fix", "Eta": 0.0})
    assert text == "prompt  \nSteps: 5, Hires fix, Eta: 0.0"


def test_create_omits_negative_line_and_keeps_multiline_prompt():
    text = create_infotext("line one\nline two", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0})
    assert text == "line one\nline two\nSteps: 20, Sampler: Euler a, CFG scale: 7.0"


def test_create_with_no_params_is_just_the_prompt():
    assert create_infotext("cat", "dog", {}) == "cat\nNegative prompt: dog"


@pytest.mark.parametrize("value", ["a, b: c", 'q "x", y', "line\nbreak, z", "猫: 犬", "tab\there, ok"])
def test_quoted_values_round_trip(value):
    text = create_infotext("p", "", {"Steps": 1, "Sampler": "Euler", "Hires prompt": value})
    assert parse_infotext(text)["Hires prompt"] == value


# --------------------------------------------------------------------------- parser edge cases


def test_last_line_with_fewer_than_three_entries_is_prompt_text():
    parsed = parse_infotext("a cat\nstyle: photo, lens: 50mm")
    assert parsed["Prompt"] == "a cat\nstyle: photo, lens: 50mm"
    assert "style" not in parsed and "lens" not in parsed


def test_last_line_with_three_entries_is_parameters():
    parsed = parse_infotext("a cat\nstyle: photo, lens: 50mm, film: kodak")
    assert parsed["Prompt"] == "a cat"
    assert (parsed["style"], parsed["lens"], parsed["film"]) == ("photo", "50mm", "kodak")


def test_multiline_prompt_and_negative_prompt():
    text = "line 1\n  line 2  \nNegative prompt: bad 1\nbad 2\nSteps: 20, Sampler: Euler, Seed: 1"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line 1\nline 2"
    assert parsed["Negative prompt"] == "bad 1\nbad 2"


def test_only_negative_prompt():
    parsed = parse_infotext("Negative prompt: ugly\nSteps: 20, Sampler: Euler, Seed: 1")
    assert parsed["Prompt"] == "" and parsed["Negative prompt"] == "ugly"


def test_size_values_split_and_other_x_values_do_not():
    parsed = parse_infotext("p\nSize: 640x480, Seed resize from: 64x32, Hires upscaler: 4x-UltraSharp")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("640", "480")
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("64", "32")
    assert parsed["Hires upscaler"] == "4x-UltraSharp"
    assert "Size" not in parsed


def test_quoted_value_that_is_not_json_is_kept_raw():
    parsed = parse_infotext('p\nSteps: 20, Sampler: Euler, Weird: "bad \\q escape"')
    assert parsed["Weird"] == '"bad \\q escape"'


def test_empty_values_are_dropped_and_bare_values_may_hold_colons():
    parsed = parse_infotext("p\nSteps: 20, Empty: , Time: 12:30, Sampler: Euler")
    assert "Empty" not in parsed
    assert parsed["Time"] == "12:30"


def test_clip_skip_present_keeps_its_position_and_string_value():
    parsed = parse_infotext("p\nSteps: 20, Clip skip: 2, Seed: 1")
    assert list(parsed)[:3] == ["Steps", "Clip skip", "Seed"]
    assert parsed["Clip skip"] == "2"


def test_emphasis_added_only_for_weighted_prompts():
    params = "\nSteps: 20, Sampler: Euler, Seed: 1"
    assert parse_infotext("a (cat:1.2)" + params)["Emphasis"] == "Original"
    assert parse_infotext("a [cat]" + params)["Emphasis"] == "Original"
    assert parse_infotext("a cat\nNegative prompt: (ugly)" + params)["Emphasis"] == "Original"
    assert "Emphasis" not in parse_infotext("a (cat:1.0) \\(escaped\\) BREAK dog" + params)
    assert parse_infotext("a (cat)\nSteps: 20, Sampler: Euler, Emphasis: No norm")["Emphasis"] == "No norm"


def test_hires_prompt_equal_to_prompt_becomes_empty_and_sets_both():
    parsed = parse_infotext("cat\nNegative prompt: ugly\nSteps: 20, Seed: 1, Hires prompt: cat")
    assert parsed["Hires prompt"] == "" and parsed["Hires negative prompt"] == ""
    parsed = parse_infotext("cat\nSteps: 20, Seed: 1, Hires prompt: dog")
    assert parsed["Hires prompt"] == "dog"


def test_backcompat_flags_from_old_versions():
    old = parse_infotext("a [b:c:5]\nSteps: 20, Sampler: DDIM, Refiner: x, Version: v1.5.1")
    assert old["Old prompt editing timelines"] is True
    assert old["Pad conds v0"] is True
    assert old["Downcast alphas_cumprod"] is True
    assert old["Refiner switch by sampling steps"] is True
    mid = parse_infotext("p\nSteps: 20, Sampler: Euler, Version: v1.7.0-224-gabcdef1")
    assert mid["Downcast alphas_cumprod"] is True
    new = parse_infotext("p\nSteps: 20, Sampler: DDIM, Version: v1.7.0-225-gabcdef1")
    assert "Downcast alphas_cumprod" not in new and "Pad conds v0" not in new
    fork = parse_infotext("p\nSteps: 20, Sampler: Euler, Version: f2.0.1v1.10.1-previous-1-g1")
    assert "Downcast alphas_cumprod" not in fork


def test_old_first_pass_size_converts_to_hires_resize():
    parsed = parse_infotext("p\nSteps: 20, Size: 1024x1024, First pass size: 0x0")
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 512)
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 1024)


def test_hypernet_becomes_a_prompt_tag():
    parsed = parse_infotext("cat\nSteps: 20, Hypernet: anime, Hypernet strength: 0.5")
    assert parsed["Prompt"] == "cat<hypernet:anime:0.5>"


def test_fp8_adds_cache_default_and_skip_fields_remove_keys():
    parsed = parse_infotext("p\nSteps: 20, Seed: 1, FP8 weight: Enable", skip_fields=["Seed"])
    assert parsed["Cache FP16 weight for LoRA"] is False
    assert "Seed" not in parsed


# --------------------------------------------------------------------------- options


def test_infotext_to_option_table_has_reference_entries():
    assert INFOTEXT_TO_OPTION["Clip skip"] == "CLIP_stop_at_last_layers"
    assert INFOTEXT_TO_OPTION["Model hash"] == "sd_model_checkpoint"
    assert INFOTEXT_TO_OPTION["Eta"] == "eta_ancestral"
    assert INFOTEXT_TO_OPTION["Schedule rho"] == "rho"
    assert INFOTEXT_TO_OPTION["VAE Decoder"] == "sd_vae_decode_method"
    with pytest.raises(TypeError):
        INFOTEXT_TO_OPTION["Clip skip"] = "x"  # type: ignore[index]


OPTIONS = {
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0,
    "randn_source": "GPU",
    "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
    "disable_weights_auto_swap": True,
    "tiling": False,
    "s_noise": 1.0,
}


def test_override_settings_only_differing_options_with_option_types():
    params = parse_infotext("p\nSteps: 20, Clip skip: 2, ENSD: 31337, Eta: 1.0, RNG: CPU, Sigma noise: 0.9")
    overrides = override_settings_from_infotext(params, OPTIONS)
    assert overrides["CLIP_stop_at_last_layers"] == 2 and isinstance(overrides["CLIP_stop_at_last_layers"], int)
    assert overrides["eta_noise_seed_delta"] == 31337
    assert overrides["randn_source"] == "CPU"
    assert overrides["s_noise"] == pytest.approx(0.9) and isinstance(overrides["s_noise"], float)
    assert "eta_ancestral" not in overrides  # 1.0 equals the current value
    assert set(overrides) == {"CLIP_stop_at_last_layers", "eta_noise_seed_delta", "randn_source", "s_noise"}


def test_override_model_hash_only_when_auto_swap_allowed():
    params = {"Model hash": "abcdef1234"}
    assert override_settings_from_infotext(params, OPTIONS) == {}
    allowed = {**OPTIONS, "disable_weights_auto_swap": False}
    assert override_settings_from_infotext(params, allowed) == {"sd_model_checkpoint": "abcdef1234"}


def test_override_bool_cast_keeps_a1111_quirk():
    assert override_settings_from_infotext({"Tiling": "True"}, OPTIONS) == {"tiling": True}
    assert override_settings_from_infotext({"Tiling": "False"}, OPTIONS) == {}


def test_override_ignores_defaults_that_match_and_unknown_options():
    params = parse_infotext("p\nSteps: 20, Sampler: Euler, Seed: 1")  # Clip skip "1", RNG "GPU" defaults
    assert override_settings_from_infotext(params, OPTIONS) == {}
    assert override_settings_from_infotext({"UniPC order": "2"}, OPTIONS) == {}


def test_override_bad_value_raises_with_context():
    with pytest.raises(BadRequest, match="Clip skip"):
        override_settings_from_infotext({"Clip skip": "two"}, OPTIONS)


def test_old_first_pass_size_with_zero_size_does_not_crash():
    parsed = parse_infotext("p\nSteps: 20, Size: 0x0, First pass size: 0x0")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("0", "0")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (0, 0)


def test_every_mapped_option_exists_with_the_declared_default_type():
    from webui_api.option_defaults import OPTIONS_BY_KEY
    from webui_api.postprocess.infotext import INFOTEXT_OPTIONS

    for entry in INFOTEXT_OPTIONS:
        default = OPTIONS_BY_KEY[entry.option].default
        assert (type(default) if default is not None else None) is entry.value_type, entry


# --------------------------------------------------------------------------- styles

STYLES = [
    PromptStyle("quality", "masterpiece, {prompt}", "lowres"),
    PromptStyle("film", "35mm film", ""),
]


def test_styles_are_cut_from_prompts_and_reported():
    text = "masterpiece, a cat, 35mm film\nNegative prompt: ugly, lowres\nSteps: 20, Sampler: Euler, Seed: 1"
    parsed = parse_infotext(text, styles=STYLES)
    assert parsed["Prompt"] == "a cat"
    assert parsed["Negative prompt"] == "ugly"
    assert parsed["Styles array"] == ["film", "quality"]  # in application order: the outermost is last


def test_styles_modes():
    text = "a cat, 35mm film\nSteps: 20, Sampler: Euler, Seed: 1"
    assert parse_infotext(text, styles=STYLES, infotext_styles="Discard")["Prompt"] == "a cat"
    assert "Styles array" not in parse_infotext(text, styles=STYLES, infotext_styles="Discard")
    assert parse_infotext(text, styles=STYLES, infotext_styles="Ignore")["Prompt"] == "a cat, 35mm film"
    assert parse_infotext("dog\nSteps: 20, Sampler: Euler, Seed: 1", styles=STYLES, infotext_styles="Apply")[
        "Styles array"
    ] == []
    with pytest.raises(ValueError, match="infotext_styles"):
        parse_infotext(text, infotext_styles="Sometimes")


def test_hires_prompt_with_different_styles_keeps_everything():
    text = "a cat, 35mm film\nSteps: 20, Seed: 1, Hires prompt: a dog"
    parsed = parse_infotext(text, styles=STYLES)
    assert parsed["Prompt"] == "a cat, 35mm film" and "Styles array" not in parsed
    assert parsed["Hires prompt"] == "a dog"


def test_forge_module_keys_become_vae_te_unless_already_selected():
    """Forge's parse_generation_parameters: "Module N" values (in order) -> "VAE/TE" when they
    differ from forge_additional_modules; A1111 infotexts without them are left alone."""
    text = "p\nSteps: 2, Sampler: Euler, Distilled CFG Scale: 3.0, Version: v1.10.1, Module 1: t5xxl, Module 2: ae"
    assert parse_infotext(text)["VAE/TE"] == ["t5xxl", "ae"]
    selected = ("/models/VAE/ae.safetensors", "t5xxl.safetensors")
    assert "VAE/TE" not in parse_infotext(text, current_modules=selected)
    assert "VAE/TE" not in parse_infotext("p\nSteps: 2, Sampler: Euler")


def test_vae_te_overrides_forge_additional_modules():
    overrides = override_settings_from_infotext({"VAE/TE": ["t5xxl", "ae"]}, {"forge_additional_modules": ()})
    assert overrides == {"forge_additional_modules": ("t5xxl", "ae")}


def test_beta_schedule_writes_its_parameters():
    """A1111 and Forge (sd_samplers_kdiffusion.py) add the beta_dist_* options for the Beta schedule."""
    from dataclasses import replace

    from tests.engine.helpers import make_job
    from webui_api.results import extra_generation_params

    job = make_job(scheduler="Beta")
    job = replace(job, engine_options=replace(job.engine_options, beta_dist_alpha=0.5))
    assert extra_generation_params(job) == {"Beta schedule alpha": 0.5, "Beta schedule beta": 0.6}
    assert "Beta schedule alpha" not in extra_generation_params(make_job(scheduler="Karras"))
