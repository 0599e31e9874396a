"""Face restoration: detector decoding, alignment, the align -> restore -> paste path, RetinaFace
loading facexlib-layout weights, restorer files and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tests.postprocess.face_weights import write_detector
from webui_api.postprocess.face_restore.align import (
    FFHQ_TEMPLATE_512,
    align_face,
    invert_affine,
    paste_mask,
    similarity_transform,
)
from webui_api.postprocess.face_restore.cache import ModelKey, PostprocessModels
from webui_api.postprocess.face_restore.detector import (
    DetectionSettings,
    FaceBox,
    FixedFaces,
    decode_boxes,
    decode_landmarks,
    non_max_suppression,
    prior_boxes,
)
from webui_api.postprocess.face_restore.restorers import (
    FaceRestoreFolders,
    FaceRestorers,
    FaceRestorerUnavailable,
    RestoreRequest,
    find_kind,
    restore_faces_in,
    run_face_net,
)


def face_at(scale: float, dx: float, dy: float) -> FaceBox:
    """A face whose landmarks are the FFHQ template scaled and shifted into an image."""
    points = FFHQ_TEMPLATE_512 * scale + np.array([dx, dy])
    return FaceBox((dx, dy, dx + 512 * scale, dy + 512 * scale), 0.99, tuple(map(tuple, points)))


def invert_net(x):
    """A deterministic 'restorer': colour negative in [-1, 1]."""
    return -x


# --------------------------------------------------------------------------- alignment


def test_similarity_transform_recovers_rotation_scale_shift():
    angle, scale, shift = math.radians(30), 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = FFHQ_TEMPLATE_512 / 4
    target = source @ rot.T + shift
    matrix = similarity_transform(source, target)
    assert np.allclose(matrix[:, :2], rot, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)
    assert np.allclose(invert_affine(matrix) @ np.append(target[0], 1.0), source[0])


def test_similarity_transform_rejects_mismatched_points():
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_align_face_puts_the_landmarks_on_the_template():
    image = np.zeros((160, 200, 3), np.uint8)
    face = face_at(0.25, 40, 20)
    lx, ly = (round(v) for v in face.landmarks[0])  # left eye
    image[ly - 2:ly + 3, lx - 2:lx + 3] = 255
    aligned = align_face(image, face.landmarks)
    assert aligned.crop.shape == (512, 512, 3)
    tx, ty = (round(v) for v in FFHQ_TEMPLATE_512[0])
    assert aligned.crop[ty, tx].min() > 200  # the bright eye lands on the template's eye
    assert aligned.crop[ty, tx + 60].max() < 10  # and nowhere else near it


def test_align_face_fills_outside_the_image_with_grey():
    image = np.zeros((64, 64, 3), np.uint8)
    aligned = align_face(image, face_at(0.1, -30, -30).landmarks)  # crop corner maps outside
    assert tuple(aligned.crop[0, 0]) == (132, 133, 135)


def test_paste_mask_is_soft_at_the_edges_and_one_inside():
    face = face_at(0.25, 40, 20)
    matrix = similarity_transform(np.array(face.landmarks), FFHQ_TEMPLATE_512)
    hard, soft = paste_mask(matrix, (200, 180))
    assert hard.shape == soft.shape == (180, 200)
    assert soft[20 + 64, 40 + 64] == pytest.approx(1.0, abs=1e-4)  # face centre
    assert soft[0, 0] == 0 and soft[179, 199] == 0
    edge = soft[20 + 64, 40:40 + 10]
    assert 0 < edge.max() < 1 or edge.max() == 0  # the seam fades instead of stepping to 1
    assert (soft >= 0).all() and (soft <= 1 + 1e-6).all()


# --------------------------------------------------------------------------- the pipeline


def test_restore_path_changes_the_face_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (180, 200, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    face = face_at(0.25, 40, 20)  # a 128 px face
    out = np.asarray(restore_faces_in(image, FixedFaces((face,)), invert_net))
    assert out.shape == pixels.shape
    cy, cx = 20 + 64, 40 + 64
    centre = out[cy - 8:cy + 8, cx - 8:cx + 8].astype(int)
    expected = 255 - pixels[cy - 8:cy + 8, cx - 8:cx + 8].astype(int)
    assert np.abs(centre - expected).mean() < 40  # inverted there (bilinear there and back blurs a little)
    assert np.array_equal(out[:10], pixels[:10])  # far from the face: untouched
    assert np.array_equal(out[:, 180:], pixels[:, 180:])


def test_restore_path_with_no_faces_returns_the_image_unchanged():
    image = Image.fromarray(np.full((40, 50, 3), 77, np.uint8))
    assert restore_faces_in(image, FixedFaces(()), invert_net) is image


def test_run_face_net_round_trips_identity():
    crop = np.arange(512 * 512 * 3, dtype=np.int64).reshape(512, 512, 3) % 256
    out = run_face_net(lambda x: x, crop.astype(np.uint8))
    assert np.abs(out.astype(int) - crop).max() <= 1  # truncation, like A1111's astype('uint8')


# --------------------------------------------------------------------------- detector maths


def test_prior_boxes_count_and_first_anchor():
    from webui_api.postprocess.face_restore.retinaface import RESNET50

    priors = prior_boxes(64, 96, RESNET50)
    assert priors.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 2, 4)
    assert np.allclose(priors[0], [4 / 96, 4 / 64, 16 / 96, 16 / 64])
    assert np.allclose(priors[1], [4 / 96, 4 / 64, 32 / 96, 32 / 64])  # second anchor size, same cell


def test_decode_with_zero_offsets_gives_the_anchor():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    assert np.allclose(decode_boxes(np.zeros((1, 4)), priors, (0.1, 0.2)), [[0.4, 0.3, 0.6, 0.7]])
    assert np.allclose(decode_landmarks(np.zeros((1, 10)), priors, (0.1, 0.2)), [[0.5, 0.5] * 5])
    moved = decode_boxes(np.array([[1.0, 0, 0, 0]]), priors, (0.1, 0.2))
    assert moved[0, 0] == pytest.approx(0.4 + 0.1 * 0.2)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert non_max_suppression(boxes, scores, 0.4) == [1, 2]


def test_face_box_needs_five_landmarks():
    with pytest.raises(ValueError, match="5 landmarks"):
        FaceBox((0, 0, 1, 1), 1.0, ((0, 0),))


# --------------------------------------------------------------------------- RetinaFace weights


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    pytest.importorskip("torchvision")
    return write_detector(tmp_path_factory.mktemp("gfpgan") / "detection_Resnet50_Final.pth")


def test_retinaface_loads_facexlib_layout_and_runs(detector_file):
    from webui_api.postprocess.face_restore.restorers import load_detector

    detector = load_detector(detector_file, "cpu")
    detector.settings = DetectionSettings(short_side=64, confidence=0.5)
    bgr = np.zeros((64, 80, 3), np.float32)
    loc, conf, landmarks = detector.raw_outputs(bgr)
    anchors = prior_boxes(64, 80, detector.net.config).shape[0]
    assert loc.shape == (anchors, 4) and conf.shape == (anchors, 2) and landmarks.shape == (anchors, 10)
    assert np.allclose(conf.sum(axis=1), 1.0, atol=1e-5)
    faces = detector.detect(np.zeros((32, 40, 3), np.uint8))
    assert all(isinstance(face, FaceBox) and face.score > 0.5 for face in faces)


def test_retinaface_with_nothing_found_leaves_the_image(detector_file):
    from webui_api.postprocess.face_restore.restorers import load_detector

    detector = load_detector(detector_file, "cpu")
    detector.settings = DetectionSettings(short_side=64, confidence=1.01)  # nothing can pass
    image = Image.fromarray(np.full((48, 48, 3), 90, np.uint8))
    assert restore_faces_in(image, detector, invert_net) is image


def test_retinaface_refuses_a_file_that_is_no_detector(tmp_path):
    import torch

    from webui_api.postprocess.face_restore.restorers import load_detector

    path = tmp_path / "detection_Resnet50_Final.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(FaceRestorerUnavailable, match="face detector"):
        load_detector(path, "cpu")


# --------------------------------------------------------------------------- files and errors


def test_missing_restorer_weights_name_file_and_folder(tmp_path):
    folders = FaceRestoreFolders.under(tmp_path / "models")
    with pytest.raises(FaceRestorerUnavailable) as err:
        folders.model_file(find_kind("GFPGAN"))
    assert "GFPGANv1.4.pth" in err.value.detail and str(tmp_path / "models" / "GFPGAN") in err.value.detail
    assert err.value.status_code == 400


def test_missing_detector_weights_name_file_and_folder(tmp_path):
    folders = FaceRestoreFolders.under(tmp_path / "models")
    (tmp_path / "models" / "GFPGAN").mkdir(parents=True)
    (tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"x")
    restorers = FaceRestorers(folders, PostprocessModels())
    with pytest.raises(FaceRestorerUnavailable, match="detection_Resnet50_Final.pth"):
        restorers.check("GFPGAN")


def test_gfpgan_file_choice_follows_a1111(tmp_path):
    folder = tmp_path / "GFPGAN"
    folder.mkdir()
    for name in ("GFPGANv1.3.pth", "GFPGANv1.4.safetensors", "other.pth", "notes.txt"):
        (folder / name).write_bytes(b"x")
    folders = FaceRestoreFolders(gfpgan=folder, codeformer=tmp_path / "cf")
    assert folders.model_file(find_kind("gfpgan")).name == "GFPGANv1.4.safetensors"


def test_detector_found_in_codeformer_facelib(tmp_path):
    facelib = tmp_path / "Codeformer" / "facelib"
    facelib.mkdir(parents=True)
    (facelib / "detection_Resnet50_Final.pth").write_bytes(b"x")
    folders = FaceRestoreFolders.under(tmp_path)
    assert folders.detector_file(find_kind("CodeFormer")) == facelib / "detection_Resnet50_Final.pth"


def test_folders_follow_the_cmd_flags(tmp_path):
    folders = FaceRestoreFolders.under(
        tmp_path, {"gfpgan_models_path": str(tmp_path / "g"), "codeformer_models_path": ""}
    )
    assert folders.gfpgan == tmp_path / "g" and folders.codeformer == tmp_path / "Codeformer"


def test_unknown_restorer_name_is_400():
    with pytest.raises(FaceRestorerUnavailable, match="unknown face restoration model"):
        find_kind("RestoreFormer")


def test_codeformer_weight_is_checked():
    with pytest.raises(Exception, match="between 0 and 1"):
        RestoreRequest("CodeFormer", codeformer_weight=1.5)


def test_api_items_are_a1111s():
    restorers = FaceRestorers(FaceRestoreFolders.under(__import__("pathlib").Path("m")), PostprocessModels())
    assert restorers.api_items() == [{"name": "CodeFormer", "cmd_dir": None}, {"name": "GFPGAN", "cmd_dir": None}]


def test_model_cache_loads_once():
    cache = PostprocessModels()
    key = ModelKey("upscaler", __import__("pathlib").Path("a.pth"), "cpu")
    calls = []
    assert cache.get(key, lambda: calls.append(1) or "model") == "model"
    assert cache.get(key, lambda: calls.append(1) or "other") == "model"
    assert calls == [1] and cache.loads == 1 and key in cache
