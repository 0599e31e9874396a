"""Random-weight GFPGAN (.pth and .safetensors) and CodeFormer files through spandrel and the
real detect -> align -> restore -> paste path. Full-size networks: slow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui_api.postprocess.face_restore.align import FFHQ_TEMPLATE_512
from webui_api.postprocess.face_restore.cache import PostprocessModels
from webui_api.postprocess.face_restore.detector import FaceBox, FixedFaces
from webui_api.postprocess.face_restore.restorers import (
    FaceRestoreFolders,
    FaceRestorers,
    FaceRestorerUnavailable,
    RestoreRequest,
    find_kind,
    load_restorer,
)

from .face_weights import write_codeformer, write_gfpgan

pytestmark = pytest.mark.slow


def _face(scale: float = 0.25, dx: float = 30, dy: float = 20) -> FaceBox:
    points = FFHQ_TEMPLATE_512 * scale + np.array([dx, dy])
    return FaceBox((dx, dy, dx + 512 * scale, dy + 512 * scale), 0.99, tuple(map(tuple, points)))


def _restore(tmp_path, model: str) -> None:
    cache = PostprocessModels()
    folders = FaceRestoreFolders.under(tmp_path)
    (tmp_path / "GFPGAN").mkdir(exist_ok=True)
    (tmp_path / "GFPGAN" / "detection_Resnet50_Final.pth").write_bytes(b"unused: FixedFaces detector")
    restorers = FaceRestorers(folders, cache)
    pixels = np.random.default_rng(0).integers(0, 256, (170, 190, 3), dtype=np.uint8)
    out = np.asarray(restorers.restore(Image.fromarray(pixels), RestoreRequest(model, 0.5), FixedFaces((_face(),))))
    assert out.shape == pixels.shape
    centre = (slice(20 + 50, 20 + 78), slice(30 + 50, 30 + 78))
    assert np.abs(out[centre].astype(int) - pixels[centre]).mean() > 5  # the face was replaced
    assert np.array_equal(out[:12], pixels[:12]) and np.array_equal(out[:, 175:], pixels[:, 175:])
    assert cache.loads == 1
    restorers.restore(Image.fromarray(pixels), RestoreRequest(model, 0.5), FixedFaces((_face(),)))
    assert cache.loads == 1  # cached


@pytest.mark.parametrize("name", ["GFPGANv1.4.pth", "GFPGANv1.4.safetensors"])
def test_gfpgan_file_restores_a_face(tmp_path, name):
    write_gfpgan(tmp_path / "GFPGAN" / name)
    _restore(tmp_path, "GFPGAN")


def test_codeformer_file_restores_a_face(tmp_path):
    pytest.importorskip("spandrel_extra_arches")
    write_codeformer(tmp_path / "Codeformer" / "codeformer-v0.1.0.pth")
    _restore(tmp_path, "CodeFormer")


def test_a_gfpgan_file_is_not_a_codeformer(tmp_path):
    pytest.importorskip("spandrel_extra_arches")
    path = write_gfpgan(tmp_path / "codeformer.pth")
    with pytest.raises(FaceRestorerUnavailable, match="as CodeFormer") as err:
        load_restorer(path, find_kind("CodeFormer"), "cpu")
    assert "a GFPGAN model, expected CodeFormer" in err.value.errors
