"""Class 1: every file the server writes stays inside the data dir (or an output folder the
operator configured); override_settings obeys the same restrictions as POST /options."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from tests.api.payloads import webuiapi_txt2img
from webui_api.paths import UnsafePath, is_confined, resolve_inside
from webui_api.postprocess.saving import TXT2IMG_SAMPLES, NameFacts, save_image


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("value", ["../x", "a/../../x", "/etc/x", "..\\x", "C:\\x", "a/..", "..", "\\\\server\\share"])
def test_paths_that_leave_their_folder_are_not_confined(value):
    assert not is_confined(value)


@pytest.mark.parametrize("value", ["outputs/x", "x", "[date]/[seed]", "a..b", "..x/y"])
def test_relative_paths_are_confined(value):
    assert is_confined(value)


def test_resolve_inside_refuses_every_escape(tmp_path):
    assert resolve_inside(tmp_path, "a", "b/c.png") == tmp_path / "a" / "b" / "c.png"
    for parts in (("..", "x"), ("a", "../../x"), ("/etc/passwd",), ("a", tmp_path.parent / "x")):
        with pytest.raises(UnsafePath):
            resolve_inside(tmp_path, *parts)


@pytest.mark.parametrize("options", [
    {"samples_filename_pattern": "../../../../../../../escape-[seed]"},
    {"directories_filename_pattern": "../../../../../escape"},
    {"outdir_txt2img_samples": "../escape"},
])
def test_a_configured_pattern_that_escapes_is_refused_at_write_time(tmp_path, options):
    """Even a bad value already in config.json (no API check ran) cannot write outside."""
    data_dir = tmp_path / "data"
    facts = NameFacts(7, "cat", 8, 8, datetime(2026, 1, 2))
    options = {"save_to_dirs": True, "outdir_txt2img_samples": "outputs/txt2img-images", **options}
    with pytest.raises(UnsafePath):
        save_image(Image.new("RGB", (8, 8)), TXT2IMG_SAMPLES, facts, "info", options, data_dir)
    assert _files(tmp_path) == set()


def test_an_absolute_output_folder_set_by_the_operator_is_its_own_root(tmp_path):
    outside = tmp_path / "elsewhere"
    facts = NameFacts(7, "cat", 8, 8, datetime(2026, 1, 2))
    path = save_image(Image.new("RGB", (8, 8)), TXT2IMG_SAMPLES, facts, None,
                      {"outdir_txt2img_samples": str(outside), "save_to_dirs": False}, tmp_path / "data")
    assert path.parent == outside
    with pytest.raises(UnsafePath):
        save_image(Image.new("RGB", (8, 8)), TXT2IMG_SAMPLES, facts, None,
                   {"outdir_txt2img_samples": str(outside), "samples_filename_pattern": "../../../[seed]",
                    "save_to_dirs": False}, tmp_path / "data")


@pytest.mark.parametrize("override", [
    {"samples_filename_pattern": "../../../escape-[seed]"},
    {"samples_filename_pattern": "/tmp/escape-[seed]"},
    {"directories_filename_pattern": "../../escape"},
    {"outdir_txt2img_samples": "/tmp/escape"},
    {"outdir_samples": "../../escape"},
    {"outdir_txt2img_grids": "/tmp/escape-grids"},
])
def test_override_settings_cannot_write_outside_the_data_dir(client, tmp_path, override):
    before = _files(tmp_path.parent)
    response = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(save_images=True, override_settings=override))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "detail", "body", "errors"}
    assert next(iter(override)) in response.json()["detail"]
    assert _files(tmp_path.parent) - before == set()  # nothing written anywhere


def test_hide_ui_dir_config_ignores_path_overrides_like_post_options(make_client, tmp_path):
    client = make_client(hide_ui_dir_config=True)
    payload = webuiapi_txt2img(save_images=True, override_settings={"outdir_txt2img_samples": "chosen-by-request",
                                                                    "save_to_dirs": False})
    assert client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    assert not (tmp_path / "chosen-by-request").exists()
    assert list((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))  # the configured folder


@pytest.mark.parametrize("flags", [
    {"freeze_settings": True}, {"freeze_specific_settings": ("CLIP_stop_at_last_layers",)},
    {"freeze_settings_in_sections": ("sd",)},
])
def test_frozen_settings_cannot_be_changed_per_request(make_client, flags):
    client = make_client(**flags)
    payload = webuiapi_txt2img(override_settings={"CLIP_stop_at_last_layers": 2})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400 and "frozen" in response.json()["detail"]
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 400
    same = webuiapi_txt2img(override_settings={"CLIP_stop_at_last_layers": 1})  # unchanged: allowed, like A1111
    assert client.post("/sdapi/v1/txt2img", json=same).status_code == 200


@pytest.mark.parametrize("update", [
    {"samples_filename_pattern": "../[seed]"}, {"directories_filename_pattern": "/abs/[date]"},
    {"outdir_txt2img_samples": "../../outside"}, {"outdir_save": "a/../../b"},
])
def test_post_options_refuses_paths_that_climb_out(client, update):
    response = client.post("/sdapi/v1/options", json=update)
    assert response.status_code == 400
    key = next(iter(update))
    assert client.get("/sdapi/v1/options").json()[key] != update[key]


def test_post_options_takes_an_absolute_output_folder_from_the_operator(client, tmp_path):
    folder = tmp_path / "operator-chosen"
    update = {"outdir_txt2img_samples": str(folder), "save_to_dirs": False}
    assert client.post("/sdapi/v1/options", json=update).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(save_images=True)).status_code == 200
    assert list(folder.glob("*.png"))


def test_post_options_refuses_an_unknown_vae_and_later_requests_still_work(client):
    response = client.post("/sdapi/v1/options", json={"sd_vae": "no-such-vae.safetensors"})
    assert response.status_code == 404 and "no-such-vae" in response.json()["detail"]
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
    assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img()).status_code == 200


@pytest.mark.parametrize(("pattern", "prompt"), [
    ("[prompt_spaces]", "../../../../../escape"),
    ("[prompt]", "..\\..\\..\\escape"),
    ("[datetime<../../../%Y>]", "cat"),
    ("[hasprompt<../../x|../../y>]", "cat"),
])
def test_tag_values_cannot_climb_out_of_the_folder(client, tmp_path, pattern, prompt):
    before = _files(tmp_path.parent)
    payload = webuiapi_txt2img(prompt=prompt, save_images=True,
                               override_settings={"samples_filename_pattern": pattern, "save_to_dirs": False})
    status = client.post("/sdapi/v1/txt2img", json=payload).status_code
    written = _files(tmp_path.parent) - before
    folder = tmp_path / "outputs" / "txt2img-images"
    assert all(folder in path.parents for path in written)
    if ".." in pattern:  # ".." in the pattern's own text: refused before any work
        assert status == 400 and not written
    else:  # ".." only in the values the tags fill in: sanitised into one file name in the folder
        assert status == 200 and [path.parent for path in written] == [folder]
