"""save_images: A1111's folders, numbering and file-name patterns."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import astuple
from datetime import datetime

import pytest
from PIL import Image

from webui_api.jobs import GeneratedImage, JobResult
from webui_api.option_defaults import OPTIONS_BY_KEY
from webui_api.postprocess.encode import read_image_info
from webui_api.postprocess.grid import grid_shape, image_grid, wants_grid
from webui_api.postprocess.saving import (
    TXT2IMG_GRIDS,
    NameFacts,
    apply_pattern,
    free_path,
    next_sequence_number,
    sanitize,
    save_image,
    save_samples,
)

NOW = datetime(2026, 11, 23, 5, 6, 7)
DEFAULTS = {key: option.fresh_default() for key, option in OPTIONS_BY_KEY.items()}


def _result(*seeds: int) -> JobResult:
    return JobResult([GeneratedImage(Image.new("RGB", (16, 8)), s, s + 1, "a cat, by x", "") for s in seeds])


def test_default_layout_is_dated_folder_and_counter_seed(tmp_path):
    paths = save_samples(_result(11, 12), ["info 1", "info 2"], DEFAULTS, tmp_path, now=NOW)
    folder = tmp_path / "outputs" / "txt2img-images" / "2026-11-23"
    assert paths == [folder / "00000-11.png", folder / "00001-12.png"]
    assert read_image_info(Image.open(paths[1]))[0] == "info 2"


def test_numbering_continues_after_the_highest_existing_counter(tmp_path):
    folder = tmp_path / "outputs" / "txt2img-images" / "2026-11-23"
    folder.mkdir(parents=True)
    (folder / "00007-99.png").write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    assert next_sequence_number(folder) == 8
    assert save_samples(_result(5), ["i"], DEFAULTS, tmp_path, now=NOW) == [folder / "00008-5.png"]


def test_patterns_formats_and_flat_folders(tmp_path):
    options = {**DEFAULTS, "save_to_dirs": False, "samples_format": "jpg", "outdir_samples": "mine"}
    assert save_samples(_result(3), ["i"], options, tmp_path, now=NOW) == [
        tmp_path / "mine" / "00000-3-a cat, by x.jpg"
    ]
    options = {**DEFAULTS, "samples_filename_pattern": "[seed]-[width]x[height]-[prompt]-[nope]"}
    path = save_samples(_result(4), ["i"], options, tmp_path, now=NOW)[0]
    assert path.name == "00000-4-16x8-a_cat,_by_x-[nope].png"


def test_grid_names_and_pattern_helpers(tmp_path):
    facts = NameFacts(1, "p", 4, 4, NOW)
    path = save_image(Image.new("RGB", (4, 4)), TXT2IMG_GRIDS, facts, "g", DEFAULTS, tmp_path)
    assert path == tmp_path / "outputs" / "txt2img-grids" / "2026-11-23" / "grid-0000.png"
    assert free_path(path.parent, "grid", "", "png").name == "grid-0001.png"
    assert (
        apply_pattern("[date]/[DATETIME]/[prompt_words]", NameFacts(1, "a, b!", 1, 1, NOW))
        == "2026-11-23/20261123050607/a b"
    )
    assert sanitize(" .a<b>:c/d. ", replace_spaces=False) == ".a_b__c_d"  # A1111 strips only a leading space
    assert sanitize(" a b. ") == "_a_b._"


def test_txt2img_save_images_writes_files(client, tmp_path):
    from tests.api.payloads import webuiapi_txt2img

    client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=77, batch_size=2))
    assert not (tmp_path / "outputs").exists()
    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=77, batch_size=2, save_images=True)).json()
    saved = sorted(p.name for p in (tmp_path / "outputs" / "txt2img-images").glob("*/*.png"))
    assert saved == ["00000-77.png", "00001-78.png"]
    assert [p.name for p in (tmp_path / "outputs" / "txt2img-grids").glob("*/*")] == ["grid-0000.png"]
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    assert info["infotexts"][0] == info["infotexts"][1] and len(info["infotexts"]) == 3
    grid = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    sample = Image.open(io.BytesIO(base64.b64decode(body["images"][1])))
    assert grid.size == (sample.width * 2, sample.height) and "parameters" not in grid.info


def test_single_image_has_no_grid_and_return_grid_off_only_saves(client, tmp_path):
    from tests.api.payloads import webuiapi_txt2img

    body = client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(save_images=True)).json()
    assert len(body["images"]) == 1 and json.loads(body["info"])["index_of_first_image"] == 0
    assert not (tmp_path / "outputs" / "txt2img-grids").exists()
    payload = webuiapi_txt2img(save_images=True, batch_size=2, override_settings={"return_grid": False})
    body = client.post("/sdapi/v1/txt2img", json=payload).json()
    assert len(body["images"]) == 2 and json.loads(body["info"])["index_of_first_image"] == 0
    assert len(list((tmp_path / "outputs" / "txt2img-grids").glob("*/grid-*.png"))) == 1


@pytest.mark.parametrize("count,options,shape", [
    (2, {}, (1, 2)), (3, {}, (2, 2)), (4, {}, (2, 2)), (5, {}, (2, 3)), (6, {"grid_prevent_empty_spots": True}, (2, 3)),
    (7, {"grid_prevent_empty_spots": True}, (1, 7)), (4, {"n_rows": 0}, (3, 2)), (4, {"n_rows": 9}, (4, 1)),
])
def test_grid_shape_follows_a1111(count, options, shape):
    assert astuple(grid_shape(count, 3, options)) == shape


def test_grid_pastes_row_by_row_and_wants_two_images():
    images = [Image.new("RGB", (2, 2), c) for c in ("red", "green", "blue")]
    grid = image_grid(images, grid_shape(3, 3, {}))
    assert grid.size == (4, 4) and grid.getpixel((3, 0)) == (0, 128, 0) and grid.getpixel((0, 3)) == (0, 0, 255)
    assert grid.getpixel((3, 3)) == (0, 0, 0)
    assert not wants_grid(1, {}) and wants_grid(1, {"grid_only_if_multiple": False}) and wants_grid(2, {})
    assert not wants_grid(2, {"return_grid": False, "grid_save": False})
