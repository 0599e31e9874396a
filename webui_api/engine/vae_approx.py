"""A1111's "Approx NN" live-preview decoder: a small CNN from latents to RGB at half image size.

A1111 v1.10 (modules/sd_vae_approx.py) decodes previews with eight unpadded convolutions
(kernels 7, 5, then six of 3; channels latent→8→16→32→64→32→16→8→3), each followed by a
leaky ReLU with slope 0.1. The latent is first upscaled 2x (nearest) and zero-padded by 11
pixels on every side, which the convolutions consume exactly (6+4+6*2 = 22 pixels), so the
output is twice the latent's size: a quarter of the image's side. The input is the sampler's
latent as is (no scaling); the output lies roughly in [-1, 1] and is clamped when shown.

The network is rebuilt here with A1111's attribute names (conv1..conv8), so the state dicts
A1111 ships and downloads (models/VAE-approx/model.pt for SD1/SD2, vaeapprox-sdxl.pt,
vaeapprox-sd3.pt) load unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (out_channels, kernel) per layer; the first layer's in_channels is the latent channel count.
LAYERS = ((8, 7), (16, 5), (32, 3), (64, 3), (32, 3), (16, 3), (8, 3), (3, 3))
PAD = 11
LEAKY_SLOPE = 0.1
APPROX_FILES = {"sd1": "model.pt", "sdxl": "vaeapprox-sdxl.pt", "sd3": "vaeapprox-sd3.pt"}  # per latent space


class VAEApprox(nn.Module):
    """The Approx NN decoder; attributes conv1..conv8 are A1111's state-dict names."""

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        in_channels = latent_channels
        for index, (out_channels, kernel) in enumerate(LAYERS, start=1):
            setattr(self, f"conv{index}", nn.Conv2d(in_channels, out_channels, (kernel, kernel)))
            in_channels = out_channels

    def convolutions(self) -> list[nn.Conv2d]:
        return [getattr(self, f"conv{index}") for index in range(1, len(LAYERS) + 1)]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        height, width = latents.shape[-2:]
        x = nn.functional.interpolate(latents, (height * 2, width * 2))  # nearest, as A1111
        x = nn.functional.pad(x, (PAD, PAD, PAD, PAD))
        for conv in self.convolutions():
            x = nn.functional.leaky_relu(conv(x), LEAKY_SLOPE)
        return x


def load_vae_approx(path: Path, device: torch.device, dtype: torch.dtype) -> VAEApprox:
    """An A1111 VAE-approx file (plain tensors only: weights_only) on `device` in `dtype`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "conv1.weight" not in state:
        raise ValueError(f"{path} is not a VAE-approx state dict (no conv1.weight)")
    decoder = VAEApprox(int(state["conv1.weight"].shape[1]))
    decoder.load_state_dict(state)
    return decoder.to(device=device, dtype=dtype).eval()
