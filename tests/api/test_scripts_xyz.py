"""script_name "x/y/z plot": grids first, cells in A1111's order, axis values in infotexts."""

from __future__ import annotations

import json

import pytest

from tests.api.payloads import a1111_img2img_payload, a1111_test_payload
from tests.api.test_img2img import decode, gradient, png_b64

TITLE = "x/y/z plot"
STEPS, SEED, CFG, NOTHING = 4, 1, 6, 0  # txt2img axis indexes


def xyz_args(x=(STEPS, "1-3"), y=(SEED, "10, 20"), z=(NOTHING, ""), legend=True, lone=True, subs=False, **flags):
    args = [part for axis in (x, y, z) for part in (axis[0], axis[1], list(axis[2]) if len(axis) > 2 else [])]
    args += [legend, lone, subs]
    args += [flags.get("no_fixed_seeds", False), *flags.get("vary", (False, False, False)), flags.get("margin", 0),
             flags.get("csv_mode", False)]
    return args


def run(client, args, **overrides):
    payload = a1111_test_payload(**{"script_name": TITLE, "script_args": args, "steps": 2, "seed": 5, "width": 32,
                                    "height": 32, **overrides})
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_steps_by_seed_gives_the_grid_then_every_cell(client):
    response = run(client, xyz_args())
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1 + 6
    grid = decode(body["images"][0])
    assert grid.width > 3 * 32 and grid.height > 2 * 32  # 3 x 2 cells plus the legend bands
    assert "parameters" not in grid.info
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 7
    head = info["infotexts"][0]
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-3, Y Type: Seed" in head
    assert 'Y Values: "10, 20"' in head and 'Fixed Y Values: "10, 20"' in head
    cells = info["infotexts"][1:]
    expected = [(steps, seed) for seed in (10, 20) for steps in (1, 2, 3)]  # x varies fastest
    for text, (steps, seed) in zip(cells, expected, strict=True):
        assert f"Steps: {steps}," in text and f"Seed: {seed}," in text and "Script:" not in text
    assert info["all_seeds"] == [seed for _, seed in expected]
    assert decode(body["images"][1]).info["parameters"] == cells[0]


def test_default_flags_return_only_the_grid(client):
    body = run(client, xyz_args(lone=False, legend=False)).json()
    assert len(body["images"]) == 1
    assert decode(body["images"][0]).size == (3 * 32, 2 * 32)


def test_z_axis_sub_grids_and_main_grid(client):
    body = run(
        client, xyz_args(x=(CFG, "3, 9"), y=(NOTHING, ""), z=(STEPS, "1, 2"), legend=False, lone=False, subs=True)
    ).json()
    sizes = [decode(image).size for image in body["images"]]
    assert sizes == [(2 * 64, 32), (64, 32), (64, 32)]  # main grid = both sub-grids side by side
    info = json.loads(body["info"])
    assert "Z Type: Steps" in info["infotexts"][0] and "Z Type" not in info["infotexts"][1]


def test_sampler_axis_takes_the_dropdown_and_vary_seeds(client):
    x = (9, "", ["Euler", "Euler a"])
    body = run(client, xyz_args(x=x, y=(NOTHING, ""), vary=(True, False, False), legend=False)).json()
    texts = json.loads(body["info"])["infotexts"]
    assert "X Values: \"Euler,Euler a\"" in texts[0] or "X Values: Euler,Euler a" in texts[0]
    assert "Sampler: Euler," in texts[1] and "Seed: 5," in texts[1]
    assert "Sampler: Euler a," in texts[2] and "Seed: 6," in texts[2]


def test_prompt_search_and_replace(client):
    body = run(client, xyz_args(x=(7, "example, sample, other"), y=(NOTHING, ""), legend=False)).json()
    prompts = [text.split("\n")[0] for text in json.loads(body["info"])["infotexts"][1:]]
    assert prompts == ["example prompt", "sample prompt", "other prompt"]


def test_size_axis_and_checkpoint_axis(client):
    title = client.get("/sdapi/v1/sd-models").json()[0]["title"]
    body = run(client, xyz_args(x=("Size", "32x32, 48x32"), y=("Checkpoint name", "", [title]), legend=False)).json()
    assert [decode(image).size for image in body["images"][1:]] == [(32, 32), (48, 32)]
    assert decode(body["images"][0]).size == (2 * 48, 32)  # cells take the largest size


def test_img2img_denoising_axis(client):
    payload = a1111_img2img_payload(
        init_images=[png_b64(gradient())],
        script_name=TITLE,
        steps=2,
        seed=3,
        script_args=xyz_args(x=("Denoising", "0.25-0.75 [2]"), y=(NOTHING, ""), legend=False),
    )
    body = client.post("/sdapi/v1/img2img", json=payload).json()
    texts = json.loads(body["info"])["infotexts"]
    assert "Denoising strength: 0.25" in texts[1] and "Denoising strength: 0.75" in texts[2]


@pytest.mark.parametrize("args, fragment", [
    (xyz_args(x=(99, "1")), "out of range"),
    (xyz_args(x=("FP8 mode", "Enable")), "not supported"),
    (xyz_args(x=(STEPS, "1, many")), "not a valid int"),
    (xyz_args(x=(STEPS, "")), "has no values"),
    (xyz_args(x=(9, "Warp drive", []), csv_mode=True), "unknown sampler"),
    (xyz_args(x=(7, "missing, other")), "Prompt S/R did not find"),
    (xyz_args(x=("Size", "big")), "Size values"),
    (xyz_args(x=(STEPS, "0, 1")), "steps"),
    (xyz_args(x=(STEPS, "1-100000000")), "at most"),
    (xyz_args(x=("Checkpoint name", "", ["nope"])), "unknown checkpoint"),
    ([{"axis": "steps"}], "X type"),
    (xyz_args(margin=-4), "grid margins"),
])
def test_bad_script_args_are_422(client, args, fragment):
    response = run(client, args)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_save_images_writes_the_returned_grid_and_cells(client, tmp_path):
    assert run(client, xyz_args(y=(NOTHING, "")), save_images=True).status_code == 200
    grids = list((tmp_path / "outputs" / "txt2img-grids").rglob("grid-*.png"))
    samples = list((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(grids) == 1 and len(samples) == 3
