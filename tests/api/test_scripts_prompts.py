"""script_name "prompts from file or textbox": one generation per line, arg lines honoured."""

from __future__ import annotations

import json

import pytest

from tests.api.payloads import a1111_img2img_payload, a1111_test_payload
from tests.api.test_img2img import decode, gradient, png_b64

TITLE = "prompts from file or textbox"


def run(client, args, **overrides):
    payload = a1111_test_payload(**{"script_name": TITLE, "script_args": args, "steps": 2, "seed": 5, **overrides})
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_three_lines_give_three_images_with_their_prompts(client):
    text = 'a cat\n--prompt "a dog" --steps 3 --seed 42 --width 32\n\nbird'
    response = run(client, [False, False, "start", text])
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 3
    info = json.loads(body["info"])
    texts = info["infotexts"]
    assert [t.split("\n")[0] for t in texts] == ["a cat example prompt", "a dog example prompt", "bird example prompt"]
    assert "Steps: 3" in texts[1] and "Seed: 42" in texts[1] and "Size: 32x64" in texts[1]
    assert "Steps: 2" in texts[0] and "Seed: 5" in texts[0] and "Seed: 5" in texts[2]
    assert decode(body["images"][1]).size == (32, 64)
    assert decode(body["images"][0]).info["parameters"] == texts[0]
    assert info["all_prompts"] == ["a cat example prompt", "a dog example prompt", "bird example prompt"]
    assert info["prompt"] == "example prompt" and info["index_of_first_image"] == 0


def test_end_position_and_iterated_seeds(client):
    body = run(client, [True, False, "end", "red\nblue"], batch_size=2).json()
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["example prompt red"] * 2 + ["example prompt blue"] * 2
    assert info["all_seeds"] == [5, 6, 7, 8]  # the second line starts batch_size * n_iter later


def test_same_random_seed_for_all_lines(client):
    info = json.loads(run(client, [False, True, "start", "red\nblue"], seed=-1).json()["info"])
    assert info["all_seeds"][0] == info["all_seeds"][1]


def test_img2img_tab(client):
    payload = a1111_img2img_payload(init_images=[png_b64(gradient())], script_name=TITLE,
                                    script_args=[False, False, "start", "one\ntwo"], steps=2)
    body = client.post("/sdapi/v1/img2img", json=payload).json()
    assert len(body["images"]) == 2 and body["parameters"]["init_images"] is None
    assert "Denoising strength: 0.75" in json.loads(body["info"])["infotexts"][1]


@pytest.mark.parametrize("args", [
    [False, False, "middle", "a cat"],
    [False, False, "start", "--sd_model no-such-model"],
    [False, False, "start", ""],
    ["yes please", False, "start", "a cat"],
])
def test_bad_script_args_are_4xx(client, args):
    response = run(client, args)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(("line", "prompt", "sampler", "width"), [
    ("--steps many", "--steps many example prompt", "Euler a", 64),  # A1111: the line becomes the prompt
    ("--width 33", "example prompt", "Euler a", 33),  # any width, rendered at 32 as A1111
    ("--sampler_name Nonexistent", "example prompt", "DPM++ 2M", 64),  # A1111's fallback sampler
])
def test_lines_a1111_accepts_answer_200(client, line, prompt, sampler, width):
    import json

    response = run(client, [False, False, "start", line])
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["all_prompts"][0], info["sampler_name"], info["width"]) == (prompt, sampler, width)
