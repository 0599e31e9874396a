"""Prompt syntax, styles, infotext and seeds through POST /sdapi/v1/txt2img on the tiny model.

Images of the embedded model are noise, but deterministic noise: two requests that must
condition identically give byte-identical images, and any difference in conditioning shows.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

BASE = {
    "prompt": "a cat",
    "negative_prompt": "",
    "seed": 5,
    "steps": 3,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
}


def generate(client, **fields):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["images"], json.loads(body["info"]), body["parameters"]


def pixels(client, **fields) -> list[bytes]:
    """The decoded pixels (PNG bytes differ with the embedded infotext)."""
    return [Image.open(io.BytesIO(base64.b64decode(b64))).tobytes() for b64 in generate(client, **fields)[0]]


def infotext(client, **fields) -> str:
    return generate(client, **fields)[1]["infotexts"][0]


def model_keys(client) -> str:
    model = client.get("/sdapi/v1/sd-models").json()[0]
    return f"Model hash: {model['hash']}, Model: {model['model_name']}"


# --------------------------------------------------------------------------- the infotext line

INFOTEXT_TABLE = [
    (
        {},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, Version: "
        "v1.10.1",
    ),
    (
        {"subseed": 7, "subseed_strength": 0.5},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, "
        "Variation seed: 7, Variation seed strength: 0.5, Version: v1.10.1",
    ),
    (
        {"seed_resize_from_w": 96, "seed_resize_from_h": 64, "cfg_scale": 5},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 5.0, Seed: 5, Size: 64x64, {model}, "
        "Seed resize from: 96x64, Version: v1.10.1",
    ),
    (
        {"override_settings": {"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"}},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, "
        "Clip skip: 2, RNG: CPU, Version: v1.10.1",
    ),
    (
        {"sampler_name": "Euler a", "eta": 0, "override_settings": {"eta_noise_seed_delta": 31337}},
        "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, "
        "ENSD: 31337, Eta: 0.0, Version: v1.10.1",
    ),
    (
        {"prompt": "a (cat)", "override_settings": {"emphasis": "No norm"}},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, "
        "Emphasis: No norm, Version: v1.10.1",
    ),
    (  # the edit's variants ("a", "b") hold no bracket, so A1111 writes no Emphasis key
        {"prompt": "[a:b:1]", "override_settings": {"emphasis": "Ignore"}},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, Version: "
        "v1.10.1",
    ),
    (
        {
            "prompt": "[a:b:1.0]",
            "sampler_name": "Euler a",
            "eta": 0.5,
            "override_settings": {"use_old_scheduling": True, "emphasis": "None"},
            "negative_prompt": "(x)",
        },
        "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, "
        "Old prompt editing timelines: True, Emphasis: None, Eta: 0.5, Version: v1.10.1",
    ),
    (
        {"prompt": "[a:b:2]", "override_settings": {"use_old_scheduling": True}},
        "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 64x64, {model}, Version: "
        "v1.10.1",
    ),
]


@pytest.mark.parametrize("fields, line", INFOTEXT_TABLE)
def test_infotext_lines(client, fields, line):
    text = infotext(client, **fields)
    prompt = fields.get("prompt", "a cat")
    negative = fields.get("negative_prompt", "")
    expected = (
        prompt + (f"\nNegative prompt: {negative}" if negative else "") + "\n" + line.format(model=model_keys(client))
    )
    assert text == expected


def test_infotext_keys_accumulate_over_batches_like_a1111(client):
    _, info, _ = generate(
        client,
        prompt=["plain", "plain", "(x)", "plain"],
        batch_size=2,
        n_iter=2,
        override_settings={"emphasis": "No norm"},
    )
    has_key = ["Emphasis: No norm" in text for text in info["infotexts"]]
    assert has_key == [False, False, True, True]
    assert info["extra_generation_params"] == {"Emphasis": "No norm"}


# --------------------------------------------------------------------------- prompt syntax reaches the model


def test_prompt_editing_changes_the_image_and_degenerate_edits_do_not(client):
    cat = pixels(client, prompt="a cat")
    dog = pixels(client, prompt="a dog")
    assert cat != dog
    assert pixels(client, prompt="a [cat:dog:100]") == cat  # never switches
    assert pixels(client, prompt="a [dog:cat:0]") == cat  # switches before the first step
    assert pixels(client, prompt="a [cat:cat:1]") == cat  # same text in both variants
    edited = pixels(client, prompt="a [cat:dog:1]")
    assert edited not in (cat, dog)


def test_emphasis_and_break_reach_the_model(client):
    cat = pixels(client, prompt="a cat")
    assert pixels(client, prompt="a (cat:1.0)") == cat
    assert pixels(client, prompt="a (cat:1.5)") != cat
    assert pixels(client, prompt="a \\(cat\\)") != cat
    assert pixels(client, prompt="a BREAK cat") != cat


def test_a_single_and_weight_scales_guidance(client):
    assert pixels(client, prompt="a cat:1.0") == pixels(client, prompt="a cat")
    assert pixels(client, prompt="a cat :2", cfg_scale=3.5) == pixels(client, prompt="a cat", cfg_scale=7)


def test_several_and_parts_are_composed(client):
    both = pixels(client, prompt="a cat AND a dog")
    assert both != pixels(client, prompt="a cat") and both != pixels(client, prompt="a dog")
    assert pixels(client, prompt="a cat AND a dog:0.5") != both
    assert pixels(client, prompt="a cat AND a dog") == both


@pytest.mark.parametrize(
    "prompt, fragment",
    [("a (cat:1.1.1)", "'1.1.1' at character 7"), ("[" * 151 + "x", "151 levels deep")],
)
def test_malformed_prompts_are_400_with_position(client, prompt, fragment):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": prompt})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]


def test_malformed_weight_inside_an_edit_is_found_by_the_engine(client):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "(x:[1.1:2.2:1].1)"})
    assert response.status_code == 400, response.text
    assert "'1.1.1'" in response.json()["detail"]


def test_unbalanced_and_stray_brackets_are_text(client):
    for prompt in ("a [unbalanced", "a (b", "x) ]: |", "a \\[b:c:1\\]"):
        generate(client, prompt=prompt)


def test_unknown_emphasis_mode_is_a_400(client):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"emphasis": "Loud"}})
    assert response.status_code == 400, response.text


# --------------------------------------------------------------------------- styles


@pytest.fixture()
def styled_client(make_client, tmp_path):
    (tmp_path / "styles.csv").write_text(
        "name,prompt,negative_prompt\n"
        '"wrap","masterpiece, {prompt}, 4k","lowres"\n'
        '"tail","oil painting",""\n'
        '"# comment","ignored","ignored"\n',
        encoding="utf-8",
    )
    return make_client()


def test_styles_merge_into_prompts_in_request_order(styled_client):
    _, info, params = generate(
        styled_client, prompt=" a cat ", negative_prompt="blurry", styles=["wrap", "tail", "missing"]
    )
    assert info["all_prompts"] == ["masterpiece,  a cat , 4k, oil painting"]
    assert info["all_negative_prompts"] == ["blurry, lowres"]
    assert info["styles"] == ["wrap", "tail", "missing"] and params["styles"] == ["wrap", "tail", "missing"]
    assert info["infotexts"][0].startswith("masterpiece,  a cat , 4k, oil painting\nNegative prompt: blurry, lowres\n")


def test_styled_prompt_conditions_like_the_written_out_prompt(styled_client):
    styled = generate(styled_client, prompt="a cat", styles=["tail"])[0]
    assert styled == generate(styled_client, prompt="a cat, oil painting")[0]


def test_prompt_styles_listing_skips_comments(styled_client):
    names = [s["name"] for s in styled_client.get("/sdapi/v1/prompt-styles").json()]
    assert names == ["wrap", "tail"]


# --------------------------------------------------------------------------- the infotext request field


def test_infotext_round_trip_reproduces_the_image(client):
    images, info, _ = generate(
        client, prompt="a [cat:dog:2]", negative_prompt="ugly", seed=77, steps=4, cfg_scale=5.5, sampler_name="Euler a",
        subseed=9, subseed_strength=0.25, override_settings={"CLIP_stop_at_last_layers": 2},
    )
    response = client.post("/sdapi/v1/txt2img", json={"infotext": info["infotexts"][0]})
    assert response.status_code == 200, response.text
    body = response.json()
    again = json.loads(body["info"])
    assert body["images"] == images
    assert again["infotexts"] == info["infotexts"]
    params = body["parameters"]
    assert (params["prompt"], params["negative_prompt"], params["seed"], params["steps"]) == (
        "a [cat:dog:2]",
        "ugly",
        77,
        4,
    )
    assert (params["sampler_name"], params["scheduler"], params["cfg_scale"]) == ("Euler a", "Automatic", 5.5)
    assert params["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert again["clip_skip"] == 2


def test_infotext_fills_only_fields_not_sent(client):
    text = "a dog\nNegative prompt: ugly\nSteps: 3, Sampler: Euler, CFG scale: 4.0, Seed: 11, Size: 64x64, Clip skip: 2"
    response = client.post(
        "/sdapi/v1/txt2img",
        json={"infotext": text, "seed": 12, "prompt": None, "override_settings": {"CLIP_stop_at_last_layers": 3}},
    )
    assert response.status_code == 200, response.text
    params = response.json()["parameters"]
    assert params["seed"] == 12  # sent: kept
    assert params["prompt"] is None or params["prompt"] == ""  # sent as null: kept (A1111: fields_set)
    assert params["negative_prompt"] == "ugly" and params["cfg_scale"] == 4.0 and params["steps"] == 3
    assert params["override_settings"] == {"CLIP_stop_at_last_layers": 3}  # the request's own override wins


def test_infotext_seed_resize_keeps_a1111s_swap(client):
    text = "x\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Seed resize from: 96x64"
    params = client.post("/sdapi/v1/txt2img", json={"infotext": text}).json()["parameters"]
    assert (params["seed_resize_from_h"], params["seed_resize_from_w"]) == (96, 64)


def test_infotext_without_sampler_uses_a1111s_default_and_splits_legacy_names(client):
    plain = client.post("/sdapi/v1/txt2img", json={"infotext": "x\nSteps: 3, Seed: 1, Size: 64x64"}).json()
    assert plain["parameters"]["sampler_name"] == "DPM++ 2M"
    legacy = client.post(
        "/sdapi/v1/txt2img", json={"infotext": "x\nSteps: 3, Sampler: Euler a Karras, Seed: 1, Size: 64x64"}
    )
    params = legacy.json()["parameters"]
    assert (params["sampler_name"], params["scheduler"]) == ("Euler a", "Karras")


def test_infotext_with_bad_values_is_a_400(client):
    response = client.post("/sdapi/v1/txt2img", json={"infotext": "x\nSteps: 3.5, Seed: 1, Size: 64x64"})
    assert response.status_code == 400, response.text
    assert "Steps" in response.json()["detail"]


def test_infotext_styles_are_found_and_reapplied(styled_client):
    images, info, _ = generate(styled_client, prompt="a cat", styles=["tail"], negative_prompt="")
    response = styled_client.post("/sdapi/v1/txt2img", json={"infotext": info["infotexts"][0]})
    body = response.json()
    assert body["parameters"]["styles"] == ["tail"] and body["parameters"]["prompt"] == "a cat"
    assert body["images"] == images


def test_png_info_reads_our_images(client):
    images, info, _ = generate(client, prompt="a (cat:1.2)", override_settings={"emphasis": "No norm"})
    body = client.post("/sdapi/v1/png-info", json={"image": images[0]}).json()
    assert body["info"] == info["infotexts"][0]
    assert body["parameters"]["Prompt"] == "a (cat:1.2)" and body["parameters"]["Emphasis"] == "No norm"


# --------------------------------------------------------------------------- units behind the fields above


@pytest.mark.parametrize(
    "style, prompt, merged",
    [
        ("masterpiece, {prompt}", "a cat", "masterpiece, a cat"),
        ("{prompt}, {prompt}", "x", "x, x"),  # every placeholder is replaced
        ("{prompt}", "  keep spaces ", "  keep spaces "),  # placeholder styles do not strip
        ("oil painting", "  a cat  ", "a cat, oil painting"),
        ("  oil painting ", "", "oil painting"),
        ("", "  a cat ", "a cat"),  # an empty (or unknown) style only strips
    ],
)
def test_merge_style(style, prompt, merged):
    from webui_api.styles import merge_style

    assert merge_style(style, prompt) == merged


def test_apply_styles_negative_side_and_unknown_names():
    from webui_api.styles import PromptStyle, apply_styles, unknown_styles

    styles = [PromptStyle("a", "{prompt}, sharp", "blurry, {prompt}"), PromptStyle("b", "", "lowres")]
    assert apply_styles("cat", ["a", "b", "zzz"], styles) == "cat, sharp"
    assert apply_styles("ugly", ["a", "b"], styles, negative=True) == "blurry, ugly, lowres"
    assert unknown_styles(["a", "zzz"], styles) == ["zzz"]


def test_infotext_fields_follow_a1111s_paste_fields():
    from webui_api.job_builder import infotext_fields
    from webui_api.postprocess.infotext import parse_infotext

    text = (
        "p\nNegative prompt: n\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3, "
        "Size: 512x768, Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Latent, Variation seed: 4, "
        "Variation seed strength: 0.1"
    )
    fields = infotext_fields(parse_infotext(text))
    assert fields["prompt"] == "p" and fields["negative_prompt"] == "n"
    assert (fields["steps"], fields["seed"], fields["width"], fields["height"]) == (20, 3, 512, 768)
    assert (fields["sampler_name"], fields["scheduler"]) == ("DPM++ 2M", "Automatic")  # Karras is its default
    assert fields["enable_hr"] is True and fields["hr_scale"] == 2.0 and fields["denoising_strength"] == 0.4
    assert (fields["subseed"], fields["subseed_strength"]) == (4, 0.1)
    assert fields["hr_sampler_name"] == "Use same sampler" and "styles" not in fields


def test_textual_inversion_from_the_embeddings_folder(make_client, tmp_path, engine):
    # the session engine only provides the token table; the server under test has its own engine
    """An embedding file in the data dir's embeddings/ is used when its name is in the prompt:
    vectors equal to the token vectors of "dog house" make "zzqx" render like those words."""
    from safetensors.torch import save_file

    encoder = engine.load().text_encoder
    table = getattr(encoder, "text_model", encoder).embeddings.token_embedding.weight
    tokenizer = engine.load().tokenizer
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("dog", "house")]
    (tmp_path / "embeddings").mkdir()
    save_file(
        {"emb_params": table[ids].detach().clone().contiguous()}, str(tmp_path / "embeddings" / "zzqx.safetensors")
    )
    client = make_client(own_engine=True)
    assert "zzqx" in client.get("/sdapi/v1/embeddings").json()["loaded"]
    assert pixels(client, prompt="a zzqx cat") == pixels(client, prompt="a dog house cat")
    assert pixels(client, prompt="a zzqx cat") != pixels(client, prompt="a cat")


def test_ti_hashes_in_the_infotext(make_client, tmp_path, engine):
    """A1111's `TI hashes: "name: sha256[:12]"` for the embeddings the prompts use
    (textual_inversion_add_hashes_to_infotext, on by default)."""
    import hashlib
    import json

    import torch
    from safetensors.torch import save_file

    (tmp_path / "embeddings").mkdir()
    width = engine.load().text_encoder.config.hidden_size
    for name in ("zzqx", "unusedemb"):
        save_file({"emb_params": torch.randn(2, width)}, str(tmp_path / "embeddings" / f"{name}.safetensors"))
    sha = hashlib.sha256((tmp_path / "embeddings" / "zzqx.safetensors").read_bytes()).hexdigest()
    client = make_client(own_engine=True)
    payload = {"prompt": "a (zzqx:1.2) cat", "negative_prompt": "zzqx", "steps": 2, "width": 64, "height": 64}
    infotext = json.loads(client.post("/sdapi/v1/txt2img", json=payload).json()["info"])["infotexts"][0]
    assert f'TI hashes: "zzqx: {sha[:12]}"' in infotext
    client.post("/sdapi/v1/options", json={"textual_inversion_add_hashes_to_infotext": False})
    infotext = json.loads(client.post("/sdapi/v1/txt2img", json=payload).json()["info"])["infotexts"][0]
    assert "TI hashes" not in infotext
    plain = {**payload, "prompt": "a cat", "negative_prompt": ""}
    client.post("/sdapi/v1/options", json={"textual_inversion_add_hashes_to_infotext": True})
    assert "TI hashes" not in json.loads(client.post("/sdapi/v1/txt2img", json=plain).json()["info"])["infotexts"][0]
