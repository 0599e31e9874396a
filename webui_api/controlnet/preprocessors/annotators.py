"""Model-based preprocessors: annotator networks loaded from local files, never downloaded.

Annotator folder layout (the same as sd-webui-controlnet's `annotator/downloads/`, so an
existing download folder can be used as it is):

    <annotator dir>/hed/ControlNetHED.pth                 softedge_hed, softedge_hedsafe, scribble_hed
    <annotator dir>/pidinet/table5_pidinet.pth            softedge_pidinet, softedge_pidisafe, scribble_pidinet,
                                                          t2ia_sketch_pidi
    <annotator dir>/lineart/sk_model.pth                  lineart_realistic
    <annotator dir>/lineart/sk_model2.pth                 lineart_coarse
    <annotator dir>/lineart_anime/netG.pth                lineart_anime
    <annotator dir>/midas/dpt_hybrid-midas-501f0c75.pt    depth_midas, normal_midas
    <annotator dir>/leres/res101.pth                      depth_leres (depth_leres++'s boost is not provided)
    <annotator dir>/zoedepth/ZoeD_M12_N.pt                depth_zoe
    <annotator dir>/mlsd/mlsd_large_512_fp32.pth          mlsd
    <annotator dir>/normal_bae/scannet.pt                 normal_bae
    <annotator dir>/openpose/body_pose_model.pth          openpose (+ hand_pose_model.pth, facenet.pth for hand/face)
    <annotator dir>/uniformer/upernet_global_small.pth    seg_ufade20k

The network architectures come from the optional `controlnet-aux` package (extra
`controlnet`), imported only when a model-based module runs (seg_ufade20k's is our own,
uniformer.py); weights are read with
`torch.load(weights_only=True)` from the paths above and run on the CPU. A missing file is a
404 that names the file, the folder to put it in and where to get it; a missing package is a
501 naming the extra to install.

Loaded networks live in an `AnnotatorCache` the caller owns (one per server), keyed by the
loader and the file paths, so a second request reuses the network and two servers never share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ApiError, BadRequest, NotFound, NotImplementedFeature
from .call import PoseCallback, PreprocessCall
from .catalog import AnnotatorFile, ModuleInfo
from .imaging import PaddedImage, resize_with_pad, to_rgb

EXTRA_HINT = "install the optional dependencies with: pip install 'webui-api[controlnet]' (package controlnet-aux)"


class MissingAnnotatorFile(NotFound):
    """A model-based preprocessor whose weight file is not in the annotator folder (404)."""

    error_name = "FileNotFoundError"

    def __init__(self, module: ModuleInfo, file: AnnotatorFile, path: Path) -> None:
        message = (
            f"ControlNet preprocessor {module.alias!r} needs the annotator file {file.filename!r}, "
            f"which is not in {path.parent}. Put {file.filename} at {path} (download it from {file.url}); "
            f"this server never downloads files itself."
        )
        super().__init__(message, errors=message)
        self.path = path


class AnnotatorPackageMissing(NotImplementedFeature):
    """The optional controlnet-aux package that provides the annotator architectures is absent (501)."""

    def __init__(self, module: ModuleInfo, cause: ImportError) -> None:
        message = f"ControlNet preprocessor {module.alias!r} needs the annotator networks: {EXTRA_HINT} ({cause})"
        super().__init__(message, errors=message)


class AnnotatorFileUnreadable(ApiError):
    """An annotator file that is present but is no tensor checkpoint torch can load safely (500)."""

    error_name = "RuntimeError"

    def __init__(self, path: Path, cause: Exception) -> None:
        message = (
            f"The ControlNet annotator file {path} could not be loaded as weights ({type(cause).__name__}: "
            f"{str(cause)[:300]}); replace it with an intact copy of the original file"
        )
        super().__init__(message, errors=message)


class AnnotatorCache:
    """Loaded annotator networks, keyed by (loader name, weight paths). Thread-safe; owned by the caller."""

    def __init__(self) -> None:
        self._networks: dict[tuple[str, tuple[Path, ...]], Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, tuple[Path, ...]], load: Callable[[], Any]) -> Any:
        """The cached network for `key`, loading it once (under the lock, so never twice at a time)."""
        with self._lock:
            if key not in self._networks:
                self._networks[key] = load()
            return self._networks[key]

    def __len__(self) -> int:
        return len(self._networks)

    def clear(self) -> None:
        """Forget every loaded network (frees their memory once no request holds them)."""
        with self._lock:
            self._networks.clear()


def annotator_paths(module: ModuleInfo, annotator_dir: Path) -> tuple[Path, ...]:
    """The module's weight files under `annotator_dir`; MissingAnnotatorFile for the first one absent."""
    paths = []
    for file in module.annotator_files:
        path = Path(annotator_dir) / file.folder / file.filename
        if not path.is_file():
            raise MissingAnnotatorFile(module, file, path)
        paths.append(path)
    return tuple(paths)


def load_weights(path: Path) -> dict[str, Any]:
    """A checkpoint's contents as plain tensors: weights_only refuses pickled code in a .pth file."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise AnnotatorFileUnreadable(path, exc) from exc


def strip_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Keys saved from a DataParallel wrapper carry "module."; the bare network has none."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


# --- loaders: file paths → a controlnet_aux detector object --------------------------------------


def _load_hed(path: Path) -> Any:
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    network = ControlNetHED_Apache2()
    network.load_state_dict(load_weights(path))
    return HEDdetector(network.float().eval())


def _load_pidinet(path: Path) -> Any:
    from controlnet_aux.pidi import PidiNetDetector
    from controlnet_aux.pidi.model import pidinet

    network = pidinet()
    network.load_state_dict(strip_prefix(load_weights(path)["state_dict"]))
    return PidiNetDetector(network.eval())


def _load_lineart(path: Path) -> Any:
    from controlnet_aux.lineart import Generator, LineartDetector

    network = Generator(3, 1, 3)
    network.load_state_dict(load_weights(path))
    network.eval()
    return LineartDetector(network, network)


def _load_lineart_anime(path: Path) -> Any:
    import functools

    from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator
    from torch import nn

    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    network.load_state_dict(strip_prefix(load_weights(path)))
    return LineartAnimeDetector(network.eval())


def _load_midas(path: Path) -> Any:
    from controlnet_aux.midas import MidasDetector
    from controlnet_aux.midas.api import MiDaSInference

    return MidasDetector(MiDaSInference(model_type="dpt_hybrid", model_path=str(path)).eval())


def _load_leres(path: Path) -> Any:
    """LeReS without the pix2pix "boost" network (that one is what depth_leres++ adds)."""
    from controlnet_aux.leres import LeresDetector
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel

    network = RelDepthModel(backbone="resnext101")
    network.load_state_dict(strip_prefix(load_weights(path)["depth_model"]), strict=True)
    return LeresDetector(network.eval(), None)


def _load_zoe(path: Path) -> Any:
    from controlnet_aux.zoe import ZoeDetector
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    network = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    load_tolerating_index_buffers(network, load_weights(path)["model"], path)
    return ZoeDetector(network.eval())


def load_tolerating_index_buffers(network: Any, state: dict[str, Any], path: Path) -> None:
    """load_state_dict that accepts only BEiT's recomputable `relative_position_index` buffers as
    missing (their presence differs between timm versions); any other mismatch is reported."""
    result = network.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("relative_position_index")]
    if missing or result.unexpected_keys:
        raise BadRequest(
            f"The annotator file {path} does not match the network it is for",
            errors=f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}",
        )


def _load_mlsd(path: Path) -> Any:
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    network = MobileV2_MLSD_Large()
    network.load_state_dict(load_weights(path), strict=True)
    return MLSDdetector(network.eval())


def _load_normal_bae(path: Path) -> Any:
    import types

    from controlnet_aux.normalbae import NormalBaeDetector
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    network = NNET(args)
    network.load_state_dict(strip_prefix(load_weights(path)["model"]))
    return NormalBaeDetector(network.eval())


def _load_uniformer(path: Path) -> Any:
    """Our own UniFormer-S + UPerNet (see uniformer.py): the only loader not needing controlnet-aux."""
    from .uniformer import UperNetUniFormer

    network = UperNetUniFormer()
    network.load_checkpoint(load_weights(path))
    return network.eval()


def _load_openpose(*paths: Path) -> Any:
    """Body network always; hand and face networks when their files are part of the module's set."""
    from controlnet_aux.open_pose import Body, Face, Hand, OpenposeDetector

    by_name = {path.name: path for path in paths}
    hand = by_name.get("hand_pose_model.pth")
    face = by_name.get("facenet.pth")
    return OpenposeDetector(
        Body(str(by_name["body_pose_model.pth"])),
        Hand(str(hand)) if hand else None,
        Face(str(face)) if face else None,
    )


# --- running ----------------------------------------------------------------------------------


def _detector(call: PreprocessCall, loader: Callable[..., Any]) -> Any:
    """The module's detector from the cache, loading it from the annotator folder the first time."""
    paths = annotator_paths(call.module, call.annotator_dir)
    try:
        return call.cache.get((loader.__name__, paths), lambda: loader(*paths))
    except ImportError as exc:
        raise AnnotatorPackageMissing(call.module, exc) from exc


def _on_padded(call: PreprocessCall, detect: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Run `detect(pixels, size)` on the extension's padded image and cut the pad off the map.

    The padded sides are multiples of 64 and `size` is the short one, so controlnet_aux's own
    resize to `detect_resolution` / `image_resolution` is the identity here.
    """
    import torch

    padded: PaddedImage = resize_with_pad(call.image, call.resolution)
    with torch.inference_mode():
        result = detect(padded.pixels, min(padded.pixels.shape[:2]))
    return padded.crop(to_rgb(np.asarray(result, dtype=np.uint8)))


def hed(call: PreprocessCall, safe: bool = False) -> np.ndarray:
    detector = _detector(call, _load_hed)
    return _on_padded(call, lambda x, n: detector(x, n, n, safe=safe, output_type="np"))


def hed_safe(call: PreprocessCall) -> np.ndarray:
    return hed(call, safe=True)


def scribble_hed(call: PreprocessCall) -> np.ndarray:
    return scribble_from_soft_edges(hed(call))


def pidinet(call: PreprocessCall, safe: bool = False, apply_filter: bool = False) -> np.ndarray:
    detector = _detector(call, _load_pidinet)
    return _on_padded(
        call, lambda x, n: detector(x, n, n, safe=safe, output_type="np", apply_filter=apply_filter)
    )


def pidinet_safe(call: PreprocessCall) -> np.ndarray:
    return pidinet(call, safe=True)


def pidinet_sketch(call: PreprocessCall) -> np.ndarray:
    return pidinet(call, apply_filter=True)


def scribble_pidinet(call: PreprocessCall) -> np.ndarray:
    return scribble_from_soft_edges(pidinet(call))


def lineart(call: PreprocessCall) -> np.ndarray:
    """Realistic or coarse line art (the module's file decides); black background, white lines."""
    detector = _detector(call, _load_lineart)
    return _on_padded(call, lambda x, n: detector(x, coarse=False, detect_resolution=n, image_resolution=n,
                                                  output_type="np"))


def _plain(call: PreprocessCall, load: Callable[..., Any]) -> np.ndarray:
    """A detector that takes nothing but the image and its resolution."""
    detector = _detector(call, load)
    return _on_padded(call, lambda x, n: detector(x, detect_resolution=n, image_resolution=n, output_type="np"))


def lineart_anime(call: PreprocessCall) -> np.ndarray:
    return _plain(call, _load_lineart_anime)


def depth_midas(call: PreprocessCall) -> np.ndarray:
    return _plain(call, _load_midas)


def depth_leres(call: PreprocessCall) -> np.ndarray:
    """LeReS depth; A and B cut the nearest / farthest percentages (0: keep everything)."""
    detector = _detector(call, _load_leres)
    return _on_padded(call, lambda x, n: detector(x, thr_a=float(call.required_a), thr_b=float(call.required_b),
                                                  boost=False, detect_resolution=n, image_resolution=n,
                                                  output_type="np"))


def depth_zoe(call: PreprocessCall) -> np.ndarray:
    return _plain(call, _load_zoe)


def normal_midas(call: PreprocessCall) -> np.ndarray:
    """Normals from MiDaS depth gradients; threshold A is the background threshold."""
    detector = _detector(call, _load_midas)

    def detect(x: np.ndarray, n: int) -> np.ndarray:
        _, normal = detector(x, a=np.pi * 2.0, bg_th=float(call.required_a), depth_and_normal=True,
                             detect_resolution=n, image_resolution=n, output_type="np")
        return normal

    return _on_padded(call, detect)


def mlsd(call: PreprocessCall) -> np.ndarray:
    """Straight lines; threshold A is the score threshold, B the distance threshold."""
    detector = _detector(call, _load_mlsd)
    return _on_padded(call, lambda x, n: detector(x, thr_v=float(call.required_a), thr_d=float(call.required_b),
                                                  detect_resolution=n, image_resolution=n, output_type="np"))


def normal_bae(call: PreprocessCall) -> np.ndarray:
    detector = _detector(call, _load_normal_bae)
    return _on_padded(call, lambda x, n: detector(x, detect_resolution=n, image_resolution=n, output_type="np"))


def seg_uniformer(call: PreprocessCall) -> np.ndarray:
    """ADE20K classes painted with the ADE20K palette (seg_ufade20k)."""
    network = _detector(call, _load_uniformer)
    return _on_padded(call, lambda x, n: _paint_ade20k(network, x))


def _paint_ade20k(network: Any, pixels: np.ndarray) -> np.ndarray:
    from .uniformer import ADE20K_PALETTE, segment

    return ADE20K_PALETTE[segment(network, pixels)]


@dataclass(frozen=True)
class PoseParts:
    """Which parts an openpose variant detects and draws."""

    body: bool
    hand: bool
    face: bool


def openpose_runner(body: bool, hand: bool, face: bool) -> Callable[[PreprocessCall], np.ndarray]:
    """A runner for one openpose variant; it also reports the poses to `call.on_pose` when set."""
    parts = PoseParts(body, hand, face)

    def run(call: PreprocessCall) -> np.ndarray:
        detector = _detector(call, _load_openpose)
        return _on_padded(call, lambda x, n: _draw_poses(detector, x, parts, call.on_pose))

    return run


def _draw_poses(detector: Any, pixels: np.ndarray, parts: PoseParts, on_pose: PoseCallback | None) -> np.ndarray:
    from controlnet_aux.open_pose import draw_poses

    height, width = pixels.shape[:2]
    poses = detector.detect_poses(pixels, parts.hand, parts.face)
    if on_pose is not None:
        on_pose(encode_poses(poses, height, width))
    return draw_poses(poses, height, width, draw_body=parts.body, draw_hand=parts.hand, draw_face=parts.face)


def encode_poses(poses: list[Any], canvas_height: int, canvas_width: int) -> dict[str, Any]:
    """The extension's pose JSON (OpenPose's output format): per person flat [x, y, confidence]
    lists with coordinates relative to the canvas, None for a part that was not detected."""
    return {
        "people": [
            {
                "pose_keypoints_2d": _flat_keypoints(pose.body.keypoints),
                "face_keypoints_2d": _flat_keypoints(pose.face),
                "hand_left_keypoints_2d": _flat_keypoints(pose.left_hand),
                "hand_right_keypoints_2d": _flat_keypoints(pose.right_hand),
            }
            for pose in poses
        ],
        "animals": [],
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    }


def _flat_keypoints(keypoints: list[Any] | None) -> list[float] | None:
    if not keypoints:
        return None
    flat: list[float] = []
    for point in keypoints:
        flat.extend((float(point.x), float(point.y), 1.0) if point is not None else (0.0, 0.0, 0.0))
    return flat


def scribble_from_soft_edges(edges: np.ndarray) -> np.ndarray:
    """The extension's scribble post-process: thin (NMS at 127, sigma 3), blur (sigma 3), binarise at 4."""
    import cv2

    thin = _non_max_suppression(edges, 127, 3.0)
    blurred = cv2.GaussianBlur(thin, (0, 0), 3.0)
    return np.where(blurred > 4, 255, 0).astype(np.uint8)


def _non_max_suppression(edges: np.ndarray, level: int, sigma: float) -> np.ndarray:
    """Keep pixels that are a maximum along at least one of four directions, then threshold."""
    import cv2

    smooth = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    kept = np.zeros_like(smooth)
    for kernel in _NMS_KERNELS:
        np.putmask(kept, cv2.dilate(smooth, kernel=kernel) == smooth, smooth)
    return np.where(kept > level, 255, 0).astype(np.uint8)


_NMS_KERNELS = tuple(
    np.array(rows, dtype=np.uint8)
    for rows in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
)
