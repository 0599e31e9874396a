"""Seamless tiling (the `tiling` request field): the model's 2-D convolutions pad circularly
for one job, so the image wraps around at its edges, then get their own padding back.

A1111 switches every Conv2d of the loaded model (UNet and VAE) to padding_mode "circular";
here the switch is scoped to a job and undone even when the job fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from webui_api.engine.models import LoadedModel

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]  # what torch's Conv2d accepts


@dataclass
class ConvPadding:
    """The padding modes a job changed, so they can be put back exactly."""

    saved: list[tuple[torch.nn.Conv2d, PaddingMode]] = field(default_factory=list)

    def restore(self) -> None:
        for layer, mode in self.saved:
            layer.padding_mode = mode
        self.saved.clear()


def model_convolutions(model: LoadedModel) -> list[torch.nn.Conv2d]:
    """Every plain Conv2d of the UNet and the VAE (A1111 matches the exact type)."""
    layers = [m for part in (model.unet, model.vae) for m in part.modules()]
    return [layer for layer in layers if type(layer) is torch.nn.Conv2d]


def apply_tiling(model: LoadedModel, enable: bool) -> ConvPadding:
    """Switch the convolutions to circular padding when `enable`; the returned object undoes it."""
    padding = ConvPadding()
    if not enable:
        return padding
    for layer in model_convolutions(model):
        padding.saved.append((layer, layer.padding_mode))
        layer.padding_mode = "circular"
    return padding
