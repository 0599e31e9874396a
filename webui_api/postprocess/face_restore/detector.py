"""Face detectors: the interface the restore pipeline needs, a fixed one, and RetinaFace.

A detector takes an RGB uint8 image (H x W x 3 numpy array) and returns the faces it finds,
each with a box, a score and five landmarks (left eye, right eye, nose, left and right mouth
corner, in image pixels). The pipeline only ever uses the landmarks, so a test can drive the
whole align -> restore -> paste path with `FixedFaces` and know exactly where the face is.

`RetinaFaceDetector` reproduces what A1111 gets from facexlib's FaceRestoreHelper: the image
resized so its short side is 640 px (Lanczos), BGR with facexlib's channel means removed,
anchors decoded with variances (0.1, 0.2), faces kept above 0.97 confidence, NMS at IoU 0.4,
and faces whose eyes are closer than 5 px dropped. torch is imported only when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil
from typing import Any, Protocol

import numpy as np
from PIL import Image

BGR_MEAN = (104.0, 117.0, 123.0)  # facexlib subtracts these from the BGR pixels


@dataclass(frozen=True)
class FaceBox:
    """One detected face: box (x1, y1, x2, y2), confidence, 5 landmarks as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.landmarks) != 5:
            raise ValueError(f"a face needs 5 landmarks (eyes, nose, mouth corners), got {len(self.landmarks)}")

    @property
    def eye_distance(self) -> float:
        (lx, ly), (rx, ry) = self.landmarks[0], self.landmarks[1]
        return float(np.hypot(rx - lx, ry - ly))

    def scaled(self, factor: float) -> FaceBox:
        """The same face in an image `factor` times larger."""
        return FaceBox(
            tuple(v * factor for v in self.box),  # type: ignore[arg-type]
            self.score,
            tuple((x * factor, y * factor) for x, y in self.landmarks),
        )


class FaceDetector(Protocol):
    """Anything that finds faces in an RGB uint8 array."""

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...


@dataclass(frozen=True)
class FixedFaces:
    """A detector that always reports the same faces (tests, or callers that know them)."""

    faces: tuple[FaceBox, ...] = ()

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        return list(self.faces)


@dataclass(frozen=True)
class DetectionSettings:
    """facexlib's thresholds as A1111 calls get_face_landmarks_5."""

    short_side: int = 640  # the image is resized so its shorter side has this many pixels
    confidence: float = 0.97
    nms_iou: float = 0.4
    min_eye_distance: float = 5.0


# --------------------------------------------------------------------------- anchors and decoding


def prior_boxes(height: int, width: int, config: Any) -> np.ndarray:
    """Anchors (cx, cy, w, h), normalised to the image, in the order the heads emit them:
    level by level, row by row, cell by cell, anchor size by anchor size."""
    rows = []
    for step, sizes in zip(config.steps, config.min_sizes, strict=True):
        fy, fx = ceil(height / step), ceil(width / step)
        cy, cx = np.meshgrid((np.arange(fy) + 0.5) * step / height, (np.arange(fx) + 0.5) * step / width, indexing="ij")
        for_level = [np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], -1) for s in sizes]
        rows.append(np.stack(for_level, axis=2).reshape(-1, 4))
    return np.concatenate(rows, axis=0).astype(np.float32)


def decode_boxes(offsets: np.ndarray, priors: np.ndarray, variance: Sequence[float]) -> np.ndarray:
    """SSD box decoding: centre moved by offset * variance * anchor size, size scaled by
    exp(offset * variance); returned as corners (x1, y1, x2, y2), normalised."""
    centres = priors[:, :2] + offsets[:, :2] * variance[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(offsets[:, 2:] * variance[1])
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


def decode_landmarks(offsets: np.ndarray, priors: np.ndarray, variance: Sequence[float]) -> np.ndarray:
    """Five (x, y) points per anchor, each moved from the anchor centre like a box centre."""
    points = offsets.reshape(-1, 5, 2) * variance[0] * priors[:, None, 2:] + priors[:, None, :2]
    return points.reshape(-1, 10)


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box against many."""
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS: indices of kept boxes, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            overlaps = box_iou(boxes[best], boxes[np.array(order)])
            order = [index for index, value in zip(order, overlaps, strict=True) if value <= iou]
    return keep


# --------------------------------------------------------------------------- RetinaFace


def detector_input(image: np.ndarray, short_side: int) -> tuple[np.ndarray, float]:
    """The resized BGR float array the network sees, and the factor back to image pixels."""
    height, width = image.shape[:2]
    factor = min(height, width) / short_side
    size = (max(int(width / factor), 1), max(int(height / factor), 1))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    return resized[:, :, ::-1] - np.array(BGR_MEAN, dtype=np.float32), factor


class RetinaFaceDetector:
    """RetinaFace behind the FaceDetector interface; holds the network, runs it on `device`."""

    def __init__(self, net: Any, settings: DetectionSettings = DetectionSettings()) -> None:
        self.net = net
        self.settings = settings

    def raw_outputs(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network's (offsets, scores, landmark offsets) for one mean-subtracted BGR array."""
        import torch

        param = next(self.net.parameters())
        tensor = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None].to(param.device, param.dtype)
        with torch.inference_mode():
            loc, conf, landmarks = self.net(tensor)
        return loc[0].float().cpu().numpy(), conf[0].float().cpu().numpy(), landmarks[0].float().cpu().numpy()

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        bgr, factor = detector_input(image, self.settings.short_side)
        height, width = bgr.shape[:2]
        loc, conf, landmark_offsets = self.raw_outputs(bgr)
        config = self.net.config
        priors = prior_boxes(height, width, config)
        keep = conf[:, 1] > self.settings.confidence
        scale = np.array([width, height] * 5, dtype=np.float32) * factor
        boxes = decode_boxes(loc[keep], priors[keep], config.variance) * scale[:4]
        points = decode_landmarks(landmark_offsets[keep], priors[keep], config.variance) * scale
        scores = conf[keep, 1]
        faces = [
            face_box(boxes[i], scores[i], points[i]) for i in non_max_suppression(boxes, scores, self.settings.nms_iou)
        ]
        return [face for face in faces if face.eye_distance >= self.settings.min_eye_distance]


def face_box(box: np.ndarray, score: float, points: np.ndarray) -> FaceBox:
    return FaceBox(
        (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        float(score),
        tuple((float(points[2 * k]), float(points[2 * k + 1])) for k in range(5)),
    )
