"""Class 10: the content policy (prompt filter, NSFW output check): off by default, per tier."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tests.security.helpers import TINY, assert_a1111_error, decode
from webui_api.serving.content_policy import ContentPolicyConfig, parse_rules

RULES = "# words and phrases\nforbidden\nvery bad thing\nre:secret\\d+\n"
KEYS = """
keys:
  - name: trusted
    key: trusted-key
    tier: high
  - name: public
    key: public-key
    tier: low
"""


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture()
def rules_file(tmp_path):
    path = tmp_path / "prompt-filter.txt"
    path.write_text(RULES)
    return path


def test_rules_match_words_phrases_and_regexes_case_insensitively():
    rules = parse_rules(RULES)
    assert [rule.line for rule in rules] == [2, 3, 4]
    word, phrase, regex = (rule.pattern for rule in rules)
    assert word.search("a FORBIDDEN fruit") and not word.search("unforbiddenly")
    assert phrase.search("a very   bad thing here") and not phrase.search("very bad")
    assert regex.search("SECRET42") and not regex.search("secret")


def test_a_bad_regex_names_its_line():
    with pytest.raises(ValueError, match="line 2"):
        parse_rules("fine\nre:(unclosed\n")
    with pytest.raises(ValueError):
        ContentPolicyConfig(nsfw_action="pixelate")
    with pytest.raises(ValueError):
        ContentPolicyConfig(tiers=frozenset({"vip"}))


def test_a_filtered_prompt_is_refused_naming_the_rule_and_audited(make_client, rules_file, tmp_path):
    audit = tmp_path / "audit.jsonl"
    client = make_client(content_policy=ContentPolicyConfig(prompt_filter=rules_file), audit_log=audit)
    refused = client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a cat and a Forbidden dog"})
    body = assert_a1111_error(refused, 400, "rule 2", "'forbidden'")
    assert body["error"] == "ContentPolicyViolation"
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert entry["status"] != "ok" and "ContentPolicyViolation" in entry["error"] and entry["route"] == "generation"
    assert entry["params"]["prompt"] == "a cat and a Forbidden dog"
    for prompt in (["fine", "secret7"], "a very bad thing"):  # list prompts and phrases
        assert client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": prompt, "batch_size": 2}).status_code == 400
    task = client.post("/agent-scheduler/v1/queue/txt2img", json={**TINY, "prompt": "forbidden"})
    assert_a1111_error(task, 400, "rule 2")
    script = client.post(
        "/sdapi/v1/txt2img",
        json={
            **TINY,
            "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", "fine\nsecret99"],
        },
    )
    assert_a1111_error(script, 400, "rule 4")
    negative = client.post("/sdapi/v1/txt2img", json={**TINY, "negative_prompt": "forbidden"})
    assert negative.status_code == 200  # negative prompts name what is not wanted


def test_the_rules_file_is_reloaded_when_it_changes(make_client, rules_file):
    client = make_client(content_policy=ContentPolicyConfig(prompt_filter=rules_file))
    assert client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a teapot"}).status_code == 200
    rules_file.write_text(RULES + "teapot\n")
    later = time.time() + 5
    os.utime(rules_file, (later, later))
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a teapot"}), 400, "teapot")
    rules_file.write_text("re:(broken\n")  # a broken edit keeps the last good rules
    os.utime(rules_file, (later + 5, later + 5))
    assert client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a teapot"}).status_code == 400
    assert client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a kettle"}).status_code == 200


def test_off_by_default(client):
    assert client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "forbidden"}).status_code == 200
    info = json.loads(client.post("/sdapi/v1/txt2img", json=TINY).json()["info"])
    assert "content_policy" not in info


def test_the_policy_applies_only_to_the_configured_tiers(make_client, rules_file, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    config = ContentPolicyConfig(prompt_filter=rules_file, tiers=frozenset({"low"}))
    client = make_client(content_policy=config, api_keys_file=keys)
    body = {**TINY, "prompt": "forbidden"}
    assert client.post("/sdapi/v1/txt2img", json=body, headers=bearer("trusted-key")).status_code == 200
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json=body, headers=bearer("public-key")), 400, "rule 2")


# --------------------------------------------------------------------------- NSFW check


def tiny_safety_checker(folder, flag_everything: bool = True):
    """A random-weight CompVis safety checker (CLIPVisionModel + projection + concept
    embeddings); thresholds of -2 make every cosine score positive: it flags everything."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )
    model = StableDiffusionSafetyChecker(config)
    threshold = -2.0 if flag_everything else 2.0
    with torch.no_grad():
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(threshold)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def flags_everything(tmp_path_factory):
    return tiny_safety_checker(tmp_path_factory.mktemp("safety-checker"))


def test_flagged_outputs_are_blurred_and_marked(make_client, flags_everything):
    plain = make_client().post("/sdapi/v1/txt2img", json={**TINY, "batch_size": 2}).json()
    client = make_client(content_policy=ContentPolicyConfig(nsfw_model_dir=flags_everything))
    checked = client.post("/sdapi/v1/txt2img", json={**TINY, "batch_size": 2})
    assert checked.status_code == 200, checked.text[:300]
    answer = checked.json()
    info = json.loads(answer["info"])
    assert info["content_policy"] == {"nsfw": [True, True], "action": "blur"}
    for before, after in zip(plain["images"], answer["images"], strict=False):
        original, blurred = (
            np.asarray(decode(before).convert("RGB"), float),
            np.asarray(decode(after).convert("RGB"), float),
        )
        assert blurred.shape == original.shape and not np.array_equal(blurred, original)
        assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(original, axis=1)).mean() / 2  # smoothed
        assert decode(after).info.get("parameters") == decode(before).info.get("parameters")  # infotext kept


def test_replace_gives_black_images_and_scripts_and_tasks_are_checked_too(make_client, flags_everything):
    client = make_client(content_policy=ContentPolicyConfig(nsfw_model_dir=flags_everything, nsfw_action="replace"))
    answer = client.post("/sdapi/v1/txt2img", json=TINY).json()
    assert not np.asarray(decode(answer["images"][0])).any()
    assert json.loads(answer["info"])["content_policy"]["action"] == "replace"
    script = client.post(
        "/sdapi/v1/txt2img",
        json={
            **TINY,
            "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", "one\ntwo"],
        },
    ).json()
    assert all(not np.asarray(decode(image)).any() for image in script["images"])


def test_nsfw_check_per_tier_and_never_served_from_the_cache(make_client, flags_everything, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(KEYS)
    config = ContentPolicyConfig(nsfw_model_dir=flags_everything, nsfw_action="replace", tiers=frozenset({"low"}))
    client = make_client(content_policy=config, api_keys_file=keys, result_cache_mb=8)
    trusted = client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("trusted-key"))
    assert (
        "content_policy" not in json.loads(trusted.json()["info"])
        and np.asarray(decode(trusted.json()["images"][0])).any()
    )
    public = client.post("/sdapi/v1/txt2img", json=TINY, headers=bearer("public-key"))
    assert public.headers["X-Cache"] == "miss"  # the trusted caller's cached image is not handed out unchecked
    assert not np.asarray(decode(public.json()["images"][0])).any()


def test_a_classifier_that_flags_nothing_leaves_images_alone(make_client, tmp_path):
    folder = tiny_safety_checker(tmp_path / "lenient", flag_everything=False)
    plain = make_client().post("/sdapi/v1/txt2img", json=TINY).json()
    answer = (
        make_client(content_policy=ContentPolicyConfig(nsfw_model_dir=folder))
        .post("/sdapi/v1/txt2img", json=TINY)
        .json()
    )
    assert answer["images"] == plain["images"]
    assert json.loads(answer["info"])["content_policy"] == {"nsfw": [False], "action": None}
