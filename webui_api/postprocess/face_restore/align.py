"""Face alignment: a similarity transform onto the FFHQ 512 template, warp, and paste back.

GFPGAN and CodeFormer were trained on FFHQ-aligned 512 x 512 faces, so every detected face is
rotated, scaled and shifted until its five landmarks sit on FFHQ's template points, restored
there, and warped back into the image through the inverse transform. The paste uses the
face-parsing mask when facexlib's `parsing_parsenet.pth` is present (A1111's use_parse, see
parsenet.py), else facexlib's soft square mask: the warped square, eroded so its edges fade
over about a tenth of the face's width.

numpy for the transform, torch (imported inside) for bilinear warps and the mask filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FACE_SIZE = 512
# FFHQ's five landmarks in a 512 x 512 aligned face (facexlib's face_template).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
BORDER_RGB = (132, 133, 135)  # facexlib fills outside the image with this grey (given as BGR there)


@dataclass(frozen=True)
class AlignedFace:
    """A face crop and the 2 x 3 matrix that maps image pixels to crop pixels."""

    crop: np.ndarray  # FACE_SIZE x FACE_SIZE x 3, uint8 RGB
    matrix: np.ndarray  # 2 x 3, image -> crop


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares rotation + uniform scale + translation taking `source` points to
    `target` points, as a 2 x 3 matrix [[a, -b, tx], [b, a, ty]]."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point arrays, got {source.shape} and {target.shape}")
    x, y = source[:, 0], source[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    values = np.concatenate([target[:, 0], target[:, 1]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, values, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The 2 x 3 inverse of a 2 x 3 affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of an H x W x C float array: output pixel p samples the input at
    inverse(matrix) @ p (OpenCV's warpAffine convention, pixel centres on integers); outside
    the input is 0. Returns size[1] x size[0] x C float32."""
    import torch
    from torch.nn import functional as F

    height, width = image.shape[:2]
    out_w, out_h = size
    back = invert_affine(matrix)
    ys, xs = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64), indexing="ij")
    src_x = back[0, 0] * xs + back[0, 1] * ys + back[0, 2]
    src_y = back[1, 0] * xs + back[1, 1] * ys + back[1, 2]
    grid = np.stack([2 * src_x / max(width - 1, 1) - 1, 2 * src_y / max(height - 1, 1) - 1], -1)
    source = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]
    warped = F.grid_sample(source, torch.from_numpy(grid.astype(np.float32))[None], mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    return warped[0].permute(1, 2, 0).numpy()


def align_face(image: np.ndarray, landmarks: Any, size: int = FACE_SIZE) -> AlignedFace:
    """Crop one face: its landmarks onto the FFHQ template (scaled to `size`), outside grey."""
    matrix = similarity_transform(np.asarray(landmarks, np.float64), FFHQ_TEMPLATE_512 * (size / FACE_SIZE))
    with_alpha = np.concatenate([image.astype(np.float32), np.ones(image.shape[:2] + (1,), np.float32)], axis=2)
    warped = warp_affine(with_alpha, matrix, (size, size))
    rgb, alpha = warped[:, :, :3], warped[:, :, 3:]
    filled = rgb + (1.0 - alpha) * np.array(BORDER_RGB, np.float32)
    return AlignedFace(np.clip(np.rint(filled), 0, 255).astype(np.uint8), matrix)


# --------------------------------------------------------------------------- pasting back


def erode(mask: Any, size: int) -> Any:
    """Grey-level erosion of a (H, W) torch mask by a size x size square (edges not eroded)."""
    from torch.nn import functional as F

    if size <= 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    padded = F.pad(mask[None, None], (before, after, before, after), value=1.0)
    return -F.max_pool2d(-padded, size, stride=1)[0, 0]


def gaussian_blur(mask: Any, ksize: int) -> Any:
    """Separable Gaussian blur of a (H, W) torch mask with OpenCV's sigma for a kernel size
    (sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8) and mirrored edges."""
    import torch
    from torch.nn import functional as F

    if ksize <= 1:
        return mask
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(ksize, dtype=torch.float32) - (ksize - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    half = ksize // 2
    x = mask[None, None]
    if min(mask.shape) > half:
        x = F.pad(x, (half, half, half, half), mode="reflect")
    else:
        x = F.pad(x, (half, half, half, half), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[0, 0]


def paste_mask(
    matrix: np.ndarray, image_size: tuple[int, int], face_size: int = FACE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """(hard, soft) masks in image space for a face crop: the warped square eroded by 2 px
    (where the restored pixels are used), and that area eroded and blurred again by a width
    that grows with the face (sqrt(area) / 20), so the seam fades out."""
    import torch

    back = invert_affine(matrix)
    square = warp_affine(np.ones((face_size, face_size, 1), np.float32), back, image_size)[:, :, 0]
    hard = erode(torch.from_numpy(square), 2)
    edge = int(float(hard.sum()) ** 0.5) // 20
    soft = gaussian_blur(erode(hard, edge * 2), edge * 2 + 1)
    return hard.numpy(), soft.numpy()


def paste_face(
    image: np.ndarray, restored: np.ndarray, matrix: np.ndarray, parsed: np.ndarray | None = None
) -> np.ndarray:
    """Blend a restored face crop back into `image` (float H x W x 3) through the inverse of
    `matrix`; returns a new float array. `parsed` (the crop's face-parsing mask, see
    parsenet.parse_mask) replaces the soft square, as facexlib's use_parse does."""
    height, width = image.shape[:2]
    back = invert_affine(matrix)
    face = warp_affine(restored.astype(np.float32), back, (width, height))
    if parsed is not None:
        soft = warp_affine(parsed.astype(np.float32)[:, :, None], back, (width, height))
        return soft * face + (1.0 - soft) * image
    hard, soft = paste_mask(matrix, (width, height), restored.shape[0])
    return soft[:, :, None] * (hard[:, :, None] * face) + (1.0 - soft[:, :, None]) * image
