"""Face parsing for the paste mask: facexlib's ParseNet, as A1111's face helper uses it.

A1111 builds facexlib's FaceRestoreHelper with `use_parse=True`, so a restored face is pasted
through a mask made from a face-parsing network (`parsing_parsenet.pth`) rather than the soft
square: the restored crop is segmented into 19 classes, every face class (skin, brows, eyes,
ears, nose, mouth, lips, ...) becomes 1 and background, neck, cloth, hair and hat 0; the map
is blurred twice (101 x 101 Gaussian, sigma 11), its outer 10 pixels cleared, and warped
back with the face. Hair and the background around the face thus keep their original pixels.

The network is an encoder / residual body / decoder of reflection-padded 3 x 3 convolutions
(PSFRGAN's layout). This module builds it from the weight file itself: depth, widths and
the number of resolution steps are read from the keys, so facexlib's file (512 input, widths
64..256, ten body blocks) and small test files both load with strict key matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PARSE_SIZE = 512  # facexlib resizes the restored face to this before parsing
KEPT_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)  # facexlib's MASK_COLORMAP entries of 255
BLUR_SIZE, BLUR_SIGMA, BORDER = 101, 11.0, 10
LEAKY_SLOPE = 0.2


class Conv(nn.Module):
    """Reflection pad, 3 x 3 convolution (stride 2 when going down, nearest x2 first when going
    up), optional batch norm and leaky ReLU. Attribute names follow facexlib's ConvLayer so
    the file's keys (`conv2d`, `norm.norm`) load as they are."""

    def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False, act: bool = False) -> None:
        super().__init__()
        self.scale, self.act = scale, act
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _BatchNorm(cout) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm.norm(x)
        return F.leaky_relu(x, LEAKY_SLOPE) if self.act else x


class _BatchNorm(nn.Module):
    """facexlib wraps its norm in NormLayer.norm; the wrapper keeps the key path."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)


class Residual(nn.Module):
    """Two convolutions (the resolution change in the second when going down, in the first
    when going up) plus a shortcut that is a plain convolution whenever shape changes."""

    def __init__(self, cin: int, cout: int, scale: str = "none") -> None:
        super().__init__()
        first, second = {"down": ("none", "down"), "up": ("up", "none")}.get(scale, ("none", "none"))
        self.shortcut_func = Conv(cin, cout, scale) if scale != "none" or cin != cout else None
        self.conv1 = Conv(cin, cout, first, norm=True, act=True)
        self.conv2 = Conv(cout, cout, second, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


@dataclass(frozen=True)
class ParseNetShape:
    """What a weight file says about its network: the first width, each encoder / decoder
    block's (in, out) widths, the body depth and the class count."""

    base: int
    encoder: tuple[tuple[int, int], ...]
    body: tuple[int, ...]
    decoder: tuple[tuple[int, int], ...]
    classes: int

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> ParseNetShape:
        def widths(part: str) -> tuple[tuple[int, int], ...]:
            count = _block_count(state, part)
            start = 1 if part == "encoder" else 0
            return tuple(_conv1_widths(state, f"{part}.{i}") for i in range(start, count))

        if "encoder.0.conv2d.weight" not in state or "out_mask_conv.conv2d.weight" not in state:
            raise ValueError(f"not a ParseNet file: no encoder.0 / out_mask_conv keys (found e.g. {sorted(state)[:3]})")
        return cls(
            base=int(state["encoder.0.conv2d.weight"].shape[0]),
            encoder=widths("encoder"),
            body=tuple(w for w, _ in widths("body")),
            decoder=widths("decoder"),
            classes=int(state["out_mask_conv.conv2d.weight"].shape[0]),
        )


def _block_count(state: Mapping[str, Any], part: str) -> int:
    pattern = re.compile(rf"^{part}\.(\d+)\.")
    indexes = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def _conv1_widths(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int]:
    weight = state[f"{prefix}.conv1.conv2d.weight"]
    return int(weight.shape[1]), int(weight.shape[0])


class ParseNet(nn.Module):
    """Encoder (a plain convolution, then residual blocks going down), residual body added to
    its input, decoder going up, and two heads: a 3-channel image and the class logits."""

    def __init__(self, shape: ParseNetShape) -> None:
        super().__init__()
        self.encoder = nn.Sequential(Conv(3, shape.base), *(Residual(i, o, "down") for i, o in shape.encoder))
        self.body = nn.Sequential(*(Residual(w, w) for w in shape.body))
        self.decoder = nn.Sequential(*(Residual(i, o, "up") for i, o in shape.decoder))
        width = shape.decoder[-1][1] if shape.decoder else (shape.encoder[-1][1] if shape.encoder else shape.base)
        self.out_img_conv = Conv(width, 3)
        self.out_mask_conv = Conv(width, shape.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits (facexlib's first output; the image head is not needed here)."""
        features = self.encoder(x)
        return self.out_mask_conv(self.decoder(features + self.body(features)))


def build_parsenet(state: Mapping[str, torch.Tensor]) -> ParseNet:
    """A ParseNet shaped by the file, its weights loaded strictly, in eval mode."""
    net = ParseNet(ParseNetShape.of(state))
    net.load_state_dict(dict(state), strict=True)
    return net.eval()


# --------------------------------------------------------------------------- the mask


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(mask: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian of a (H, W) mask with mirrored edges (OpenCV's default border)."""
    kernel = gaussian_kernel(size, sigma)
    half = size // 2
    x = F.pad(mask[None, None], (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[0, 0]


def face_classes(logits: torch.Tensor) -> torch.Tensor:
    """1 where the most likely class is a face part, 0 for background, neck, cloth, hair, hat."""
    labels = logits.argmax(dim=1)[0]
    return torch.isin(labels, torch.tensor(KEPT_CLASSES, device=labels.device)).float()


def parse_mask(net: ParseNet, face: np.ndarray, device: Any = "cpu") -> np.ndarray:
    """The paste mask of one restored crop (uint8 RGB, square): parsed at 512, face classes
    blurred twice, borders cleared, back at the crop's size; float32 in [0, 1]."""
    tensor = torch.from_numpy(face.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    if tensor.shape[-1] != PARSE_SIZE or tensor.shape[-2] != PARSE_SIZE:
        tensor = F.interpolate(tensor, size=(PARSE_SIZE, PARSE_SIZE), mode="bilinear", align_corners=False)
    tensor = (tensor - 0.5) / 0.5
    with torch.inference_mode():
        mask = face_classes(net(tensor.to(device)).float().cpu())
    mask = blur(blur(mask))
    mask[:BORDER, :], mask[-BORDER:, :], mask[:, :BORDER], mask[:, -BORDER:] = 0, 0, 0, 0
    if face.shape[0] != PARSE_SIZE or face.shape[1] != PARSE_SIZE:
        mask = F.interpolate(mask[None, None], size=face.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    return mask.clamp(0, 1).numpy()
