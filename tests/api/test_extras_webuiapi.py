"""The real `webuiapi` client's extras calls against a live server."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.api.test_webuiapi_client import live_server  # noqa: F401 (fixture)

webuiapi = pytest.importorskip("webuiapi")


def test_webuiapi_extras_single_and_batch(live_server):  # noqa: F811
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live_server, username="user", password="pass")
    image = Image.new("RGB", (40, 24), "teal")
    single = api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (80, 48)
    assert single.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    batch = api.extra_batch_images([image, image], name_list=["a", "b"], upscaler_1="Nearest", upscaling_resize=3)
    assert [img.size for img in batch.images] == [(120, 72), (120, 72)]
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "R-ESRGAN 4x+" in names and "ESRGAN_4x" in names
