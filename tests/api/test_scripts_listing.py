"""/sdapi/v1/scripts and /script-info list the built-in scripts in A1111's shapes; script_name
is checked per tab with A1111's 422."""

from __future__ import annotations

from tests.api.payloads import a1111_img2img_payload, a1111_test_payload


def test_scripts_lists_lower_cased_titles_per_tab(client):
    listing = client.get("/sdapi/v1/scripts").json()
    assert set(listing) == {"txt2img", "img2img"}
    assert {"prompts from file or textbox", "x/y/z plot"} <= set(listing["txt2img"])
    assert "sd upscale" not in listing["txt2img"]
    assert {"prompts from file or textbox", "x/y/z plot", "sd upscale"} <= set(listing["img2img"])


def test_script_info_has_a1111_shape(client):
    infos = client.get("/sdapi/v1/script-info").json()
    by_key = {(info["name"], info["is_img2img"]): info for info in infos}
    for info in infos:
        assert set(info) == {"name", "is_alwayson", "is_img2img", "args"}
        for arg in info["args"]:
            assert set(arg) == {"label", "value", "minimum", "maximum", "step", "choices"}
    assert ("sd upscale", False) not in by_key
    upscale = by_key[("sd upscale", True)]
    assert upscale["is_alwayson"] is False
    assert [arg["label"] for arg in upscale["args"]] == ["", "Tile overlap", "Upscaler", "Scale Factor"]
    overlap = upscale["args"][1]
    assert (overlap["value"], overlap["minimum"], overlap["maximum"], overlap["step"]) == (64, 0, 256, 16)
    upscalers = [item["name"] for item in client.get("/sdapi/v1/upscalers").json()]
    assert upscale["args"][2]["choices"] == upscalers
    xyz = by_key[("x/y/z plot", False)]
    assert len(xyz["args"]) == 18 and xyz["args"][0]["label"] == "X type" and xyz["args"][0]["value"] == "Seed"
    assert xyz["args"][0]["choices"][4] == "Steps"
    assert [arg["label"] for arg in by_key[("prompts from file or textbox", True)]["args"]] == [
        "Iterate seed every line",
        "Use same random seed for all lines",
        "Insert prompts at the",
        "List of prompt inputs",
    ]


def test_unknown_script_is_a1111_422(client):
    response = client.post("/sdapi/v1/txt2img", json=a1111_test_payload(script_name="prompt matrix"))
    assert response.status_code == 422
    assert response.json()["detail"] == "Script 'prompt matrix' not found"


def test_sd_upscale_is_unknown_on_txt2img(client):
    response = client.post(
        "/sdapi/v1/txt2img", json=a1111_test_payload(script_name="SD upscale", script_args=["", 8, 1, 2])
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "Script 'SD upscale' not found"


def test_script_names_match_case_insensitively(client):
    args = [False, False, "start", "a cat"]
    response = client.post(
        "/sdapi/v1/txt2img", json=a1111_test_payload(script_name="Prompts From File or Textbox", script_args=args)
    )
    assert response.status_code == 200, response.text


def test_img2img_script_without_init_images_is_404(client):
    response = client.post("/sdapi/v1/img2img", json=a1111_img2img_payload(script_name="sd upscale"))
    assert response.status_code == 404


def test_selectable_script_in_alwayson_scripts_is_a1111_422(client):
    payload = a1111_test_payload(alwayson_scripts={"x/y/z plot": {"args": [1, "1,2"]}})
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"] == "Cannot have a selectable script in the always on scripts params"
