"""run_preprocessor: one entry point from a module name to a detected map."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import annotators, model_free
from .annotators import AnnotatorCache
from .call import PoseCallback, PreprocessCall
from .catalog import module_info
from .imaging import to_rgb

Runner = Callable[[PreprocessCall], np.ndarray]

# internal module name → the function computing its map (every MODULES entry has one)
RUNNERS: dict[str, Runner] = {
    "none": model_free.identity,
    "invert": model_free.invert,
    "canny": model_free.canny,
    "blur_gaussian": model_free.blur_gaussian,
    "scribble_xdog": model_free.scribble_xdog,
    "shuffle": model_free.shuffle,
    "threshold": model_free.threshold,
    "binary": model_free.binary,
    "color": model_free.color_grid,
    "tile_resample": model_free.tile_resample,
    "tile_colorfix": model_free.identity,
    "tile_colorfix+sharp": model_free.identity,
    "lineart_standard": model_free.lineart_standard,
    "recolor_luminance": model_free.recolor_luminance,
    "recolor_intensity": model_free.recolor_intensity,
    "reference_only": model_free.identity,
    "reference_adain": model_free.identity,
    "reference_adain+attn": model_free.identity,
    "depth": annotators.depth_midas,
    "depth_leres": annotators.depth_leres,
    "depth_zoe": annotators.depth_zoe,
    "normal_map": annotators.normal_midas,
    "normal_bae": annotators.normal_bae,
    "hed": annotators.hed,
    "hed_safe": annotators.hed_safe,
    "scribble_hed": annotators.scribble_hed,
    "pidinet": annotators.pidinet,
    "pidinet_safe": annotators.pidinet_safe,
    "pidinet_scribble": annotators.scribble_pidinet,
    "pidinet_sketch": annotators.pidinet_sketch,
    "lineart": annotators.lineart,
    "lineart_coarse": annotators.lineart,
    "lineart_anime": annotators.lineart_anime,
    "mlsd": annotators.mlsd,
    "segmentation": annotators.seg_uniformer,
    "openpose": annotators.openpose_runner(body=True, hand=False, face=False),
    "openpose_hand": annotators.openpose_runner(body=True, hand=True, face=False),
    "openpose_face": annotators.openpose_runner(body=True, hand=False, face=True),
    "openpose_faceonly": annotators.openpose_runner(body=False, hand=False, face=True),
    "openpose_full": annotators.openpose_runner(body=True, hand=True, face=True),
}


def numpy_seed(seed: int, subseed: int) -> int:
    """The extension's numpy seed for a generation: (seed + subseed) & 0xFFFFFFFF, negatives as 0.

    Pass the generation's actual (resolved) seeds; the result makes `shuffle` reproducible.
    """
    return (max(int(seed), 0) + max(int(subseed), 0)) & 0xFFFFFFFF


def run_preprocessor(
    module: str,
    image: np.ndarray,
    resolution: float | None,
    threshold_a: float | None,
    threshold_b: float | None,
    annotator_dir: Path,
    cache: AnnotatorCache | None = None,
    seed: int | None = None,
    on_pose: PoseCallback | None = None,
) -> np.ndarray:
    """The detected map (h, w, 3) uint8 for `image` (H, W, 3) uint8 RGB.

    `module` is a name or alias (ValidationFailed 422 when unknown). Resolution and thresholds
    that are None, -1 or out of the slider's range become the module's defaults, as in the
    extension. "none" returns `image` itself. `seed` seeds the random modules (shuffle); None
    draws a fresh one. `on_pose` receives the openpose modules' pose JSON. Model-based modules
    raise MissingAnnotatorFile (404) when a weight file is absent from `annotator_dir`, and
    AnnotatorPackageMissing (501) without the `controlnet` extra; pass the same `cache` across
    calls to keep their networks loaded (a fresh one is used, and dropped, otherwise).
    """
    info = module_info(module)
    if info.name == "none":
        return image
    _check_map_size(np.asarray(image), info.resolution.resolve(resolution))
    call = PreprocessCall(
        module=info,
        image=to_rgb(np.asarray(image)),
        resolution=info.resolution.resolve(resolution),
        threshold_a=info.threshold_a.resolve(threshold_a) if info.threshold_a else None,
        threshold_b=info.threshold_b.resolve(threshold_b) if info.threshold_b else None,
        rng=np.random.RandomState(seed),
        annotator_dir=Path(annotator_dir),
        cache=cache if cache is not None else AnnotatorCache(),
        on_pose=on_pose,
    )
    return np.ascontiguousarray(RUNNERS[info.name](call), dtype=np.uint8)


def _check_map_size(image: np.ndarray, resolution: float) -> None:
    """The map is computed at `resolution` on the image's short side: a 1 x 100000 strip would
    ask for gigapixels, so its size goes through the one image pixel budget first."""
    from ...pixel_budget import check_image_pixels

    height, width = image.shape[:2]
    scale = float(resolution) / max(min(height, width), 1)
    check_image_pixels(f"the detected map at resolution {resolution:g}", round(width * scale), round(height * scale))
