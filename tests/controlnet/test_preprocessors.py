"""The catalog (names, aliases, sliders) and the weight-free preprocessors' behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from webui_api.controlnet.preprocessors import find_module, list_modules, module_info, numpy_seed, run_preprocessor
from webui_api.errors import ValidationFailed

NO_DIR = Path("annotators-not-needed")


def run(module: str, image: np.ndarray, resolution=None, a=None, b=None, **kwargs) -> np.ndarray:
    return run_preprocessor(module, image, resolution, a, b, NO_DIR, **kwargs)


def square(size: int = 128, lo: int = 32, hi: int = 96, value: int = 255) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[lo:hi, lo:hi] = value
    return image


# --- catalog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("canny", "canny"), ("depth_midas", "depth"), ("DEPTH_MIDAS", "depth"), ("depth", "depth"),
     ("softedge_hed", "hed"), ("lineart_realistic", "lineart"), ("t2ia_color_grid", "color"),
     ("invert (from white bg & black line)", "invert"), ("Reference_Only", "reference_only")],
)
def test_find_module_accepts_names_and_aliases_in_any_case(given, canonical):
    assert find_module(given) == canonical


def test_unknown_module_is_a_422_naming_it():
    with pytest.raises(ValidationFailed) as caught:
        find_module("no_such_module")
    assert caught.value.status_code == 422
    assert caught.value.detail == "Module not available"
    assert "no_such_module" in caught.value.errors
    with pytest.raises(ValidationFailed):
        run("no_such_module", square())


def test_list_is_in_the_extensions_order_with_its_sliders():
    modules = list_modules()
    assert modules[0].name == "none"
    names = [m.name for m in modules]
    assert len(names) == len(set(names))
    assert {"canny", "depth", "openpose", "hed", "lineart", "mlsd", "normal_bae", "shuffle", "threshold"} <= set(names)
    # priority 100 modules come before priority 0 ones, each group by label descending
    assert names.index("canny") < names.index("blur_gaussian")
    canny = module_info("canny")
    assert canny.detail() == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]}
    assert module_info("invert").detail()["sliders"] == []
    assert module_info("reference_only").detail()["model_free"] is True
    assert module_info("depth_midas").needs_annotator and not module_info("canny").needs_annotator


def test_importing_the_package_loads_neither_torch_nor_opencv():
    code = "import sys, webui_api.controlnet.preprocessors; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]


# --- resolution and sliders --------------------------------------------------------------------


@pytest.mark.parametrize(("resolution", "expected"), [(256, (384, 256)), (64, (96, 64)), (-1, (768, 512)),
                                                       (None, (768, 512)), (5000, (768, 512))])
def test_short_side_becomes_the_processor_resolution(resolution, expected):
    image = np.full((300, 200, 3), 90, np.uint8)
    out = run("canny", image, resolution)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8


def test_none_returns_the_image_itself_and_invert_inverts():
    image = square()
    assert run("none", image) is image
    inverted = run("invert", image)
    assert np.array_equal(inverted, 255 - image)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black → white
    assert np.all(run("invert", rgba) == 0)


# --- weight-free modules -----------------------------------------------------------------------


def test_canny_finds_the_square_outline_where_it_is():
    out = run("canny", square(), 128, 100, 200)[:, :, 0]
    assert out.shape == (128, 128)
    edge_rows, edge_cols = np.nonzero(out)
    assert edge_rows.size > 0
    assert edge_rows.min() >= 30 and edge_rows.max() <= 97 and edge_cols.min() >= 30 and edge_cols.max() <= 97
    assert out[31:33, 40:88].any() and out[95:97, 40:88].any()  # top and bottom sides
    assert not out[40:88, 40:88].any() and not out[:25].any()  # flat interior and background


def test_canny_thresholds_above_the_contrast_find_nothing():
    faint = square(value=20)
    assert run("canny", faint, 128, 100, 200).max() == 0
    assert run("canny", faint, 128, 5, 10).max() == 255


def test_threshold_binarises_at_threshold_a():
    ramp = np.repeat(np.repeat(np.arange(64, dtype=np.uint8)[None, :] * 4, 64, axis=0)[:, :, None], 3, axis=2)
    out = run("threshold", ramp, 64, 100)[:, :, 0]
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out[0] == 255, ramp[0, :, 0] > 100)
    default = run("threshold", ramp, 64, -1)[:, :, 0]  # -1 → the slider default, 127
    assert np.array_equal(default[0] == 255, ramp[0, :, 0] > 127)


def test_binary_inverts_dark_strokes_to_white_with_otsu_by_default():
    image = np.full((64, 64, 3), 230, np.uint8)
    image[20:30] = 10
    out = run("binary", image, 64)[:, :, 0]
    assert np.all(out[20:30] == 255) and np.all(out[:15] == 0)


def test_shuffle_is_deterministic_per_seed_and_always_512():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    first = run("shuffle", image, 128, seed=7)
    assert first.shape == (512, 768, 3)  # the extension pins shuffle's resolution to 512
    assert np.array_equal(first, run("shuffle", image, 128, seed=7))
    assert not np.array_equal(first, run("shuffle", image, 128, seed=8))
    assert numpy_seed(5, -1) == 5 and numpy_seed(2**32 - 1, 1) == 0


def test_color_grid_is_made_of_64_pixel_cells():
    rng = np.random.default_rng(1)
    out = run("color", rng.integers(0, 256, (128, 256, 3), dtype=np.uint8), 256)
    assert out.shape == (256, 512, 3)
    cells = out.reshape(4, 64, 8, 64, 3)
    assert np.all(cells == cells[:, :1, :, :1, :])


def test_tile_resample_divides_by_the_rate():
    image = np.full((100, 80, 3), 50, np.uint8)
    assert run("tile_resample", image, None, 2.0).shape == (50, 40, 3)
    assert run("tile_resample", image, None, 1.0) is not None
    assert run("tile_resample", image, None, 1.0).shape == (100, 80, 3)


def test_blur_keeps_the_mean_and_smooths_edges():
    out = run("blur_gaussian", square(), 128, 4.0).astype(int)
    assert out.shape == (128, 128, 3)
    assert 0 < out[64, 32, 0] < 255 and abs(out.mean() - square().mean()) < 3


def test_line_based_modules_light_up_on_a_drawn_line():
    page = np.full((128, 128, 3), 255, np.uint8)
    page[60:64, 10:118] = 0  # a black stroke on white paper
    for module in ("scribble_xdog", "lineart_standard"):
        out = run(module, page, 128)[:, :, 0]
        assert out[58:66, 20:108].max() > 100, module
        assert out[:40].max() == 0 and out[90:].max() == 0, module


def test_recolor_gamma_brightens_or_darkens_gray():
    gray = np.full((8, 8, 3), 128, np.uint8)
    assert run("recolor_luminance", gray, None, 0.5)[0, 0, 0] > run("recolor_luminance", gray, None, 1.0)[0, 0, 0]
    assert run("recolor_intensity", gray, None, 2.0)[0, 0, 0] < 128


@pytest.mark.parametrize("module", ["reference_only", "reference_adain", "tile_colorfix"])
def test_passthrough_modules_return_the_image(module):
    image = square()
    assert np.array_equal(run(module, image), image)


def test_control_type_tags_and_their_modules():
    from webui_api.controlnet.preprocessors import all_tags, modules_for_tag

    tags = all_tags()
    assert tags[0] == "All" and {"Canny", "Depth", "OpenPose", "Segmentation", "Tile"} <= set(tags)
    depth = [m.alias for m in modules_for_tag("Depth")]
    assert depth[0] == "none" and depth[1] == "depth_midas"  # the extension's default for the type
    assert set(depth[1:]) == {"depth_midas", "depth_leres", "depth_zoe"}
    assert len(modules_for_tag("All")) == len(list_modules())
