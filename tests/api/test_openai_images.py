"""The OpenAI-compatible images API, driven by the official `openai` package (its own request
encoding, multipart uploads and error parsing) over the app's in-process transport."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from webui_api.serving.guards import RequestLimits

openai = pytest.importorskip("openai", reason="the openai package is in the test extra")

FAST = {"steps": 2}  # A1111 fields ride along in extra_body; few steps keep the tiny model quick
KEY = "openai-test-key-0001"


def openai_client(http_client, api_key: str = "unused") -> openai.OpenAI:
    base_url = f"{str(http_client.base_url).rstrip('/')}/v1"
    return openai.OpenAI(api_key=api_key, base_url=base_url, http_client=http_client, max_retries=0)


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def infotext(image: Image.Image) -> str:
    return image.info.get("parameters", "")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def oa(client) -> openai.OpenAI:
    return openai_client(client)


def test_generate_returns_n_images_of_the_size_with_their_infotext(oa):
    result = oa.images.generate(prompt="a red fox", size="64x96", n=2, response_format="b64_json",
                                extra_body={**FAST, "seed": 7, "negative_prompt": "blurry"})
    assert len(result.data) == 2 and result.size == "64x96"
    first, second = (decoded(item.b64_json) for item in result.data)
    assert first.size == (64, 96) and first.format == "PNG"
    assert infotext(first).startswith("a red fox\nNegative prompt: blurry\nSteps: 2,")
    assert "Seed: 7," in infotext(first) and "Seed: 8," in infotext(second)


def test_quality_maps_to_steps_and_style_to_cfg_scale(oa):
    result = oa.images.generate(prompt="x", size="64x64", quality="low", style="natural")
    text = infotext(decoded(result.data[0].b64_json))
    assert "Steps: 12," in text and "CFG scale: 5.0," in text


def test_output_format_jpeg_is_a_jpeg(oa):
    result = oa.images.generate(prompt="x", size="64x64", output_format="jpeg", extra_body=FAST)
    assert decoded(result.data[0].b64_json).format == "JPEG" and result.output_format == "jpeg"


def test_same_seed_same_image(oa):
    one, two = (oa.images.generate(prompt="x", size="64x64", extra_body={**FAST, "seed": 3}) for _ in range(2))
    assert one.data[0].b64_json == two.data[0].b64_json


def test_models_list_names_checkpoints_and_model_selects_one(oa):
    ids = [model.id for model in oa.models.list()]
    assert ids == ["embedded-tiny-sd1-random"]
    result = oa.images.generate(model=ids[0], prompt="x", size="64x64", extra_body=FAST)
    assert "Model: embedded-tiny-sd1-random" in infotext(decoded(result.data[0].b64_json))
    # OpenAI's own model names mean the current checkpoint
    assert oa.images.generate(model="dall-e-3", prompt="x", size="64x64", extra_body=FAST).data


def test_unknown_model_is_openai_404(oa):
    with pytest.raises(openai.NotFoundError) as caught:
        oa.images.generate(model="no-such-model", prompt="x", size="64x64")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


@pytest.mark.parametrize("size", ["63x64", "big", "64x99999"])
def test_bad_size_is_openai_400_naming_size(oa, size):
    with pytest.raises(openai.BadRequestError) as caught:
        oa.images.generate(prompt="x", size=size)
    assert caught.value.body["param"] == "size" and caught.value.body["type"] == "invalid_request_error"


def test_missing_prompt_and_bad_n_are_openai_400(client):
    answer = client.post("/v1/images/generations", json={"n": 1})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "prompt" and error["code"] == "missing_required_parameter"
    answer = client.post("/v1/images/generations", json={"prompt": "x", "n": 11})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n"
    assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_url_format_answers_fetchable_signed_urls(client, oa):
    result = oa.images.generate(prompt="a red fox", size="64x64", response_format="url", extra_body=FAST)
    assert result.data[0].b64_json is None and "/outputs/" in result.data[0].url
    fetched = client.get(result.data[0].url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert infotext(Image.open(io.BytesIO(fetched.content))).startswith("a red fox\n")
    tampered = result.data[0].url.replace("sig=", "sig=0")
    assert client.get(tampered).status_code == 404


def test_without_response_format_the_servers_output_urls_decides(make_client):
    client = make_client(output_urls=True)
    oa = openai_client(client)
    assert oa.images.generate(prompt="x", size="64x64", extra_body=FAST).data[0].url is not None
    explicit = oa.images.generate(prompt="x", size="64x64", response_format="b64_json", extra_body=FAST)
    assert explicit.data[0].url is None and decoded(explicit.data[0].b64_json).size == (64, 64)


def test_a1111_field_out_of_range_is_openai_400_naming_it(client):
    answer = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "steps": 5000})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "steps"


def test_server_guards_keep_openai_shape(make_client):
    client = make_client(guards=RequestLimits(max_pixels=64 * 64))
    answer = client.post("/v1/images/generations", json={"prompt": "x", "size": "128x128", "steps": 2})
    assert answer.status_code == 400  # the guard's 422 elsewhere: OpenAI answers a refused parameter with 400
    assert set(answer.json()) == {"error"} and "--max-pixels" in answer.json()["error"]["message"]


# edits and variations ------------------------------------------------------------------------


def picture_with_hole(size=(64, 64)) -> Image.Image:
    """Opaque red with a fully transparent square: OpenAI's way to say "edit here"."""
    image = Image.new("RGBA", size, (200, 30, 30, 255))
    image.paste((0, 0, 0, 0), (16, 16, 48, 48))
    return image


def test_edit_with_mask_inpaints_only_the_transparent_area(oa):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = oa.images.edit(image=("in.png", png_bytes(image)), mask=("mask.png", png_bytes(picture_with_hole())),
                            prompt="a blue square", extra_body={**FAST, "seed": 1})
    out = decoded(result.data[0].b64_json)
    assert out.size == (64, 64) and result.size == "64x64"
    text = infotext(out)
    assert "Denoising strength: 1.0" in text and "Mask blur: 4" in text
    # far from the mask (and its blur) the picture is kept as it was
    assert out.convert("RGB").getpixel((1, 1)) == pytest.approx((200, 30, 30), abs=12)


def test_edit_without_mask_uses_the_images_transparency(oa):
    result = oa.images.edit(image=("in.png", png_bytes(picture_with_hole())), prompt="x", extra_body=FAST)
    assert "Mask blur: 4" in infotext(decoded(result.data[0].b64_json))


def test_edit_of_an_opaque_image_without_mask_is_img2img(oa):
    image = Image.new("RGB", (72, 64), (10, 120, 10))
    result = oa.images.edit(image=("in.png", png_bytes(image)), prompt="x", n=2, extra_body=FAST)
    assert len(result.data) == 2
    out = decoded(result.data[0].b64_json)
    assert out.size == (72, 64)
    assert "Denoising strength: 0.75" in infotext(out) and "Mask blur" not in infotext(out)


def test_edit_size_and_denoising_extension(oa):
    image = Image.new("RGB", (64, 64), (10, 120, 10))
    result = oa.images.edit(image=("in.png", png_bytes(image)), prompt="x", size="96x64",
                            extra_body={**FAST, "denoising_strength": 0.3})
    out = decoded(result.data[0].b64_json)
    assert out.size == (96, 64) and "Denoising strength: 0.3" in infotext(out)


def test_edit_image_sent_as_an_array(oa):
    image = png_bytes(Image.new("RGB", (64, 64), (10, 120, 10)))
    result = oa.images.edit(image=[("in.png", image)], prompt="x", extra_body=FAST)  # multipart field image[]
    assert decoded(result.data[0].b64_json).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as caught:
        oa.images.edit(image=[("a.png", image), ("b.png", image)], prompt="x", extra_body=FAST)
    assert caught.value.body["param"] == "image"


def test_edit_mask_of_another_size_is_400_naming_mask(oa):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(openai.BadRequestError) as caught:
        oa.images.edit(image=("in.png", png_bytes(image)), mask=("m.png", png_bytes(picture_with_hole((32, 32)))),
                       prompt="x")
    assert caught.value.body["param"] == "mask"


def test_edit_of_a_file_that_is_no_image_is_400_naming_image(oa):
    with pytest.raises(openai.BadRequestError) as caught:
        oa.images.edit(image=("in.png", b"not an image"), prompt="x")
    assert caught.value.body["param"] == "image" and caught.value.body["code"] == "invalid_image"


def test_variation_keeps_the_input_size(oa):
    image = Image.new("RGB", (64, 80), (10, 10, 200))
    result = oa.images.create_variation(image=("in.png", png_bytes(image)), n=1, extra_body=FAST)
    out = decoded(result.data[0].b64_json)
    assert out.size == (64, 80) and "Denoising strength: 0.6" in infotext(out)


# keys ------------------------------------------------------------------------------------------


@pytest.fixture()
def keyed_client(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    reader = {"name": "reader", "key": "reader-key-0002", "groups": ["catalog"]}
    keys.write_text(json.dumps([{"name": "app", "key": KEY}, reader]))
    return make_client(api_keys_file=keys)


def test_bearer_key_from_the_keys_file(keyed_client):
    result = openai_client(keyed_client, KEY).images.generate(prompt="x", size="64x64", extra_body=FAST)
    assert result.data[0].b64_json


def test_wrong_key_is_openai_401(keyed_client):
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(keyed_client, "wrong-key-123").images.generate(prompt="x", size="64x64")
    assert caught.value.body["code"] == "invalid_api_key"


def test_key_without_generate_group_is_403_but_may_list_models(keyed_client):
    reader = openai_client(keyed_client, "reader-key-0002")
    assert [model.id for model in reader.models.list()]
    with pytest.raises(openai.PermissionDeniedError):
        reader.images.generate(prompt="x", size="64x64")


def test_routes_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/models"):
        assert path in paths
    edit_body = paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in edit_body



def test_openapi_documents_openai_error_bodies_and_no_422(client):
    document = client.get("/openapi.json").json()
    for path, method in (("/v1/images/generations", "post"), ("/v1/images/edits", "post"), ("/v1/models", "get")):
        responses = document["paths"][path][method]["responses"]
        assert "422" not in responses, path
        for status in ("400", "401", "404", "429", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/OpenAIError"}, (path, status)
    assert document["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]["400"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/A1111Error"}
