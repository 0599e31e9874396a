"""facexlib's ParseNet paste mask (A1111's use_parse): the network built from a file's keys,
the mask rule (face classes kept, blurred, borders cleared), and the restore path using it
when parsing_parsenet.pth is present, the soft square otherwise."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tests.postprocess.test_face_restore import face_at, invert_net
from webui_api.postprocess.face_restore.detector import FixedFaces
from webui_api.postprocess.face_restore.parsenet import BORDER, ParseNet, ParseNetShape, build_parsenet, parse_mask
from webui_api.postprocess.face_restore.restorers import FaceRestoreFolders, load_parser, restore_faces_in

FACEXLIB = ParseNetShape(64, ((64, 128), (128, 256), (256, 256), (256, 256)), (256,) * 10,
                         ((256, 256), (256, 256), (256, 128), (128, 64)), 19)  # in_size 512, ch_range 32..256
SMALL = ParseNetShape(8, ((8, 16), (16, 32)), (32,), ((32, 16), (16, 8)), 19)


def small_state(seed: int = 0, face_everywhere: bool | None = None) -> dict[str, torch.Tensor]:
    """Random weights in facexlib's layout; optionally logits that pick class 1 (skin) or 0
    (background) at every pixel."""
    torch.manual_seed(seed)
    net = ParseNet(SMALL)
    state = {k: (torch.rand_like(v) + 0.5 if "running_var" in k else v.clone()) for k, v in net.state_dict().items()}
    if face_everywhere is not None:
        state["out_mask_conv.conv2d.weight"].zero_()
        state["out_mask_conv.conv2d.bias"].zero_()
        state["out_mask_conv.conv2d.bias"][1 if face_everywhere else 0] = 10.0
    return state


def test_keys_follow_facexlib_layout():
    keys = set(ParseNet(SMALL).state_dict())
    assert {
        "encoder.0.conv2d.weight",
        "encoder.0.conv2d.bias",
        "encoder.1.shortcut_func.conv2d.weight",
        "encoder.1.conv1.conv2d.weight",
        "encoder.1.conv1.norm.norm.running_var",
        "encoder.1.conv2.norm.norm.weight",
        "body.0.conv1.norm.norm.num_batches_tracked",
        "decoder.1.shortcut_func.conv2d.bias",
        "out_img_conv.conv2d.weight",
        "out_mask_conv.conv2d.bias",
    } <= keys
    assert "body.0.shortcut_func.conv2d.weight" not in keys and "encoder.1.conv1.conv2d.bias" not in keys


def test_shape_is_read_back_from_the_keys():
    assert ParseNetShape.of(ParseNet(SMALL).state_dict()) == SMALL
    full = ParseNet(FACEXLIB)
    assert ParseNetShape.of(full.state_dict()) == FACEXLIB
    assert 20_000_000 < sum(p.numel() for p in full.parameters()) < 23_000_000  # facexlib's file: about 21.3M


def test_logits_keep_the_input_size():
    net = build_parsenet(small_state())
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_mask_keeps_face_classes_and_clears_the_border():
    face = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    everywhere = parse_mask(build_parsenet(small_state(face_everywhere=True)), face)
    assert everywhere.shape == (512, 512) and everywhere.dtype == np.float32
    assert np.all(everywhere[:BORDER] == 0) and np.all(everywhere[:, -BORDER:] == 0)
    assert np.allclose(everywhere[200:300, 200:300], 1.0, atol=1e-5)
    assert np.all(parse_mask(build_parsenet(small_state(face_everywhere=False)), face) == 0)
    random_mask = parse_mask(build_parsenet(small_state()), face)
    assert 0.0 <= random_mask.min() and random_mask.max() <= 1.0


def test_restore_path_pastes_through_the_parse_mask():
    pixels = np.random.default_rng(1).integers(0, 256, (180, 200, 3), dtype=np.uint8)
    image, faces = Image.fromarray(pixels), FixedFaces((face_at(0.25, 40, 20),))
    kept = restore_faces_in(image, faces, invert_net, parser=build_parsenet(small_state(face_everywhere=False)))
    assert np.array_equal(np.asarray(kept), pixels)  # nothing is a face class: the original stays
    pasted = np.asarray(
        restore_faces_in(image, faces, invert_net, parser=build_parsenet(small_state(face_everywhere=True)))
    )
    cy, cx = 20 + 64, 40 + 64
    expected = 255 - pixels[cy - 8:cy + 8, cx - 8:cx + 8].astype(int)
    assert np.abs(pasted[cy - 8:cy + 8, cx - 8:cx + 8].astype(int) - expected).mean() < 40
    assert np.array_equal(pasted[:10], pixels[:10])


def test_parser_file_is_optional_and_loads_from_the_gfpgan_folder(tmp_path):
    from webui_api.postprocess.face_restore.restorers import GFPGAN

    folders = FaceRestoreFolders.under(tmp_path)
    assert folders.parser_file(GFPGAN) is None
    path = tmp_path / "GFPGAN" / "parsing_parsenet.pth"
    path.parent.mkdir()
    torch.save(small_state(), path)
    assert folders.parser_file(GFPGAN) == path
    assert ParseNetShape.of(load_parser(path, "cpu").state_dict()) == SMALL
