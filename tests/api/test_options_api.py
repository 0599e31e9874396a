"""GET/POST /sdapi/v1/options as clients use them."""

from __future__ import annotations

import json


def test_get_returns_every_key_with_a1111_typing(client):
    options = client.get("/sdapi/v1/options").json()
    assert len(options) > 200
    assert options["samples_format"] == "png"
    assert options["CLIP_stop_at_last_layers"] == 1.0
    assert options["eta_noise_seed_delta"] == 0
    assert options["sd_model_checkpoint"].startswith("embedded-tiny-sd1-random")


def test_a1111_options_write_test(client):
    """A1111's own test_options_write: flip send_seed and read it back."""
    before = client.get("/sdapi/v1/options").json()["send_seed"]
    assert client.post("/sdapi/v1/options", json={"send_seed": not before}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["send_seed"] == (not before)


def test_whole_dict_round_trip_is_accepted(client):
    """Open WebUI posts back the whole dict it just got, with one key changed."""
    options = client.get("/sdapi/v1/options").json()
    options["jpeg_quality"] = 90
    response = client.post("/sdapi/v1/options", json=options)
    assert response.status_code == 200, response.text
    assert response.json() is None
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 90.0


def test_post_persists_config_json(client, tmp_path):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 3})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["show_progress_every_n_steps"] == 3


def test_selecting_the_loaded_checkpoint_by_any_alias(client):
    model = client.get("/sdapi/v1/sd-models").json()[0]
    for alias in (model["title"], model["model_name"], model["hash"]):
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": alias}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == model["title"]


def test_unknown_checkpoint_is_refused_and_nothing_changes(client):
    before = client.get("/sdapi/v1/options").json()
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors", "jpeg_quality": 10})
    assert 400 <= response.status_code < 500
    assert "nope.safetensors" in response.json()["errors"] + response.json()["detail"]
    assert client.get("/sdapi/v1/options").json() == before


def test_unknown_key_is_a_4xx(client):
    response = client.post("/sdapi/v1/options", json={"no_such_option_anywhere": 1})
    assert 400 <= response.status_code < 500
    assert "no_such_option_anywhere" in response.text


def test_non_object_body_is_a_4xx(client):
    assert client.post("/sdapi/v1/options", json=[1, 2]).status_code == 400
