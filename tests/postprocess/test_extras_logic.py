"""The extras step without HTTP: info text formatting, stopping, mode handling."""

from __future__ import annotations

import pytest
from PIL import Image

from webui_api.postprocess.extras import (
    ExtrasParams,
    centre_crop,
    infotext_to_html,
    postprocessing_infotext,
    run_extras,
)
from webui_api.postprocess.upscale import UpscalerCatalog


def test_infotext_quotes_like_a1111():
    info = {"Postprocess upscale by": 2.0, "Postprocess upscaler": "4x, sharp", "Flag": "Flag", "Skipped": None}
    assert postprocessing_infotext(info) == 'Postprocess upscale by: 2.0, Postprocess upscaler: "4x, sharp", Flag'


def test_html_escapes_and_breaks_lines():
    assert infotext_to_html("a <b>\nc & d") == "<p>a &lt;b&gt;<br>\nc &amp; d</p>"


def test_stop_keeps_finished_images_and_reports_progress(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path)
    images = [Image.new("RGB", (8, 8)) for _ in range(3)]
    seen: list[tuple[int, int]] = []
    result = run_extras(images, ExtrasParams(upscaler_1="Lanczos"), catalog,
                        should_stop=lambda: len(seen) == 2, on_done=lambda i, n: seen.append((i, n)))
    assert seen == [(0, 3), (1, 3)] and len(result.images) == 2
    assert result.images[0].image.size == (16, 16)


def test_palette_images_become_rgb_and_crop_centres(tmp_path):
    catalog = UpscalerCatalog.scan(tmp_path)
    result = run_extras([Image.new("P", (10, 10))], ExtrasParams(upscaler_1="Nearest", upscaling_resize=1), catalog)
    assert result.images[0].image.mode == "RGB"
    cropped = centre_crop(Image.new("RGB", (4, 4), "white"), 8, 6)
    assert cropped.getpixel((2, 1)) == (255, 255, 255) and cropped.getpixel((0, 0)) == (0, 0, 0)


def test_params_validate():
    with pytest.raises(ValueError, match="resize_mode"):
        ExtrasParams(resize_mode=3)
    with pytest.raises(ValueError, match="upscaling_resize"):
        ExtrasParams(upscaling_resize=0)
