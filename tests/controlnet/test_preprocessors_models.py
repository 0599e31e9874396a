"""Model-based preprocessors through the real loader, on random-weight files with the original layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from webui_api.controlnet.preprocessors import AnnotatorCache, MissingAnnotatorFile, run_preprocessor

from . import annotator_files as files


def _image() -> np.ndarray:
    image = np.full((96, 128, 3), 30, np.uint8)
    image[30:60, 40:90] = 220
    return image


def _run(module: str, annotator_dir: Path, cache: AnnotatorCache, resolution: int = 64, **kwargs) -> np.ndarray:
    return run_preprocessor(module, _image(), resolution, kwargs.get("a"), kwargs.get("b"), annotator_dir, cache=cache)


@pytest.mark.parametrize(
    ("module", "folder", "filename"),
    [("depth_midas", "midas", "dpt_hybrid-midas-501f0c75.pt"), ("openpose", "openpose", "body_pose_model.pth"),
     ("softedge_hed", "hed", "ControlNetHED.pth"), ("lineart_coarse", "lineart", "sk_model2.pth"),
     ("mlsd", "mlsd", "mlsd_large_512_fp32.pth"), ("normal_bae", "normal_bae", "scannet.pt"),
     ("seg_ufade20k", "uniformer", "upernet_global_small.pth"), ("depth_leres", "leres", "res101.pth"),
     ("depth_zoe", "zoedepth", "ZoeD_M12_N.pt")],
)
def test_missing_weight_file_is_a_404_naming_file_and_folder(tmp_path, module, folder, filename):
    with pytest.raises(MissingAnnotatorFile) as caught:
        run_preprocessor(module, _image(), 64, None, None, tmp_path)
    error = caught.value
    assert 400 <= error.status_code < 500
    assert filename in error.detail and str(tmp_path / folder) in error.detail
    assert error.path == tmp_path / folder / filename
    assert "huggingface.co" in error.detail  # where to get it by hand


def test_openpose_full_names_the_first_missing_of_its_three_files(tmp_path):
    (tmp_path / "openpose").mkdir()
    (tmp_path / "openpose" / "body_pose_model.pth").write_bytes(b"")
    with pytest.raises(MissingAnnotatorFile) as caught:
        run_preprocessor("openpose_full", _image(), 64, None, None, tmp_path)
    assert "hand_pose_model.pth" in caught.value.detail


@pytest.fixture(scope="module")
def small_annotators(tmp_path_factory) -> Path:
    pytest.importorskip("controlnet_aux")
    root = tmp_path_factory.mktemp("annotators")
    files.write_pidinet(root)
    files.write_lineart(root)
    files.write_lineart(root, "sk_model2.pth")
    files.write_mlsd(root)
    files.write_hed(root)
    return root


@pytest.mark.parametrize(
    "module",
    ["softedge_pidinet", "softedge_pidisafe", "scribble_pidinet", "t2ia_sketch_pidi", "lineart_realistic",
     "lineart_coarse", "mlsd", "softedge_hed", "softedge_hedsafe", "scribble_hed"],
)
def test_model_based_maps_have_the_processor_size_and_are_deterministic(small_annotators, module):
    cache = AnnotatorCache()
    first = _run(module, small_annotators, cache)
    assert first.shape == (64, 85, 3) and first.dtype == np.uint8
    assert np.array_equal(first, _run(module, small_annotators, cache))
    assert len(cache) == 1


def test_scribble_variants_are_binary(small_annotators):
    out = _run("scribble_hed", small_annotators, AnnotatorCache())
    assert set(np.unique(out)) <= {0, 255}


def test_modules_sharing_a_file_share_one_loaded_network(small_annotators):
    cache = AnnotatorCache()
    for module in ("softedge_hed", "softedge_hedsafe", "scribble_hed"):
        _run(module, small_annotators, cache)
    assert len(cache) == 1
    _run("lineart_realistic", small_annotators, cache)
    _run("lineart_coarse", small_annotators, cache)  # a different file: a second network
    assert len(cache) == 3


def test_different_weights_give_different_maps(small_annotators, tmp_path):
    import torch

    reference = _run("lineart_realistic", small_annotators, AnnotatorCache())
    path = files.write_lineart(tmp_path)
    state = torch.load(path, weights_only=True)
    torch.save({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, path)
    assert not np.array_equal(reference, _run("lineart_realistic", tmp_path, AnnotatorCache()))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("modules", "writer"),
    [(("openpose",), files.write_openpose_body), (("lineart_anime",), files.write_lineart_anime),
     (("normal_bae",), files.write_normal_bae), (("depth_midas", "normal_midas"), files.write_midas),
     (("depth_leres",), files.write_leres), (("depth_zoe",), files.write_zoe)],
)
def test_large_annotators_load_and_run(tmp_path, modules, writer):
    pytest.importorskip("controlnet_aux")
    writer(tmp_path)
    cache = AnnotatorCache()
    for module in modules:
        out = _run(module, tmp_path, cache)
        assert out.shape == (64, 85, 3) and out.dtype == np.uint8
        assert np.array_equal(out, _run(module, tmp_path, cache))
    assert len(cache) == 1


@pytest.mark.slow
def test_uniformer_segmentation_paints_ade20k_classes(tmp_path):
    """Our own UniFormer-S + UPerNet loads an mmseg-layout checkpoint (aux head skipped) without controlnet-aux."""
    from webui_api.controlnet.preprocessors.uniformer import ADE20K_PALETTE

    files.write_uniformer(tmp_path)
    cache = AnnotatorCache()
    out = _run("seg_ufade20k", tmp_path, cache)
    assert out.shape == (64, 85, 3) and out.dtype == np.uint8
    palette = {tuple(c) for c in ADE20K_PALETTE}
    assert {tuple(c) for c in out.reshape(-1, 3)} <= palette
    assert np.array_equal(out, _run("seg_ufade20k", tmp_path, cache))


def test_pose_json_follows_the_openpose_output_format():
    from types import SimpleNamespace as NS

    from webui_api.controlnet.preprocessors.annotators import encode_poses

    person = NS(body=NS(keypoints=[NS(x=0.25, y=0.5), None]), face=None, left_hand=[NS(x=0.1, y=0.2)], right_hand=[])
    assert encode_poses([person], 64, 128) == {
        "people": [{"pose_keypoints_2d": [0.25, 0.5, 1.0, 0.0, 0.0, 0.0], "face_keypoints_2d": None,
                    "hand_left_keypoints_2d": [0.1, 0.2, 1.0], "hand_right_keypoints_2d": None}],
        "animals": [], "canvas_height": 64, "canvas_width": 128,
    }


@pytest.mark.slow
def test_openpose_reports_its_poses(tmp_path):
    pytest.importorskip("controlnet_aux")
    files.write_openpose_body(tmp_path)
    poses = []
    out = run_preprocessor("openpose", _image(), 64, None, None, tmp_path, on_pose=poses.append)
    assert out.shape == (64, 85, 3)
    assert len(poses) == 1 and set(poses[0]) == {"people", "animals", "canvas_height", "canvas_width"}
    assert (poses[0]["canvas_height"], poses[0]["canvas_width"]) == (64, 128)  # the padded canvas, as the extension


def test_a_corrupt_weight_file_is_reported_with_its_path(tmp_path):
    pytest.importorskip("controlnet_aux")
    from webui_api.controlnet.preprocessors import AnnotatorFileUnreadable

    path = tmp_path / "lineart" / "sk_model.pth"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(AnnotatorFileUnreadable) as caught:
        run_preprocessor("lineart_realistic", _image(), 64, None, None, tmp_path)
    assert str(path) in caught.value.detail
