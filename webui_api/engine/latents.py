"""Latents to pixels: the full VAE decode and A1111's "Approx cheap" live preview.

The full decode reproduces A1111's bytes: one image at a time through the VAE (batching can
change results at fp16 level), then clamp((x + 1) / 2, 0, 1) * 255 converted to uint8 by
truncation, not rounding (diffusers rounds).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from webui_api.engine.models import LoadedModel
from webui_api.engine.vae_tiling import tiling_for_decode

log = logging.getLogger(__name__)

# Linear latent -> RGB maps (rows = latent channels, columns = R, G, B), A1111 "Approx cheap".
CHEAP_APPROX_COEFFS = {
    "sd1": (
        (0.298, 0.207, 0.208),
        (0.187, 0.286, 0.173),
        (-0.158, 0.189, 0.264),
        (-0.184, -0.271, -0.473),
    ),
    "sdxl": (
        (0.3448, 0.4168, 0.4395),
        (-0.1953, -0.0290, 0.0250),
        (0.1074, 0.0886, -0.0163),
        (-0.3730, -0.2499, -0.2088),
    ),
}


def to_pil(x: torch.Tensor) -> Image.Image:
    """A (3, H, W) image in [-1, 1] to an RGB PIL image, A1111's way (truncating to uint8)."""
    x = torch.clamp((x.to(torch.float32) + 1.0) / 2.0, min=0.0, max=1.0)
    pixels = (255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8)
    return Image.fromarray(pixels)


def _vae_decode(model: LoadedModel, latent: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    z = latent.to(device=model.device, dtype=vae.dtype) / model.vae_scale_factor + model.vae_shift_factor
    with tiling_for_decode(vae, model.vae_tiling, z.shape[-2], z.shape[-1]):
        return vae.decode(z, return_dict=False)[0][0].to(torch.float32)


def decode_one(model: LoadedModel, latent: torch.Tensor, auto_upcast: bool = True) -> torch.Tensor:
    """VAE-decode one (1, C, h, w) latent into a (3, H, W) float32 image in about [-1, 1].

    A half-precision VAE can overflow into NaNs (SDXL's original VAE does in fp16). As A1111
    does with `auto_vae_precision`, the VAE is then switched to float32 for good and the image
    decoded again; A1111 only notices NaN in the first element, we retry on any NaN.
    """
    image = _vae_decode(model, latent)
    if auto_upcast and model.vae.dtype != torch.float32 and torch.isnan(image).any():
        log.warning("VAE produced NaNs in %s; converting it to float32 and decoding again", model.vae.dtype)
        model.vae.to(torch.float32)
        image = _vae_decode(model, latent)
    return image


def decode_latents(model: LoadedModel, latents: torch.Tensor, auto_upcast: bool = True) -> list[Image.Image]:
    """Decode a (B, C, h, w) batch into B images, one VAE call per image."""
    if latents.ndim != 4 or latents.shape[1] != model.latent_channels:
        raise ValueError(
            f"latents must be (B, {model.latent_channels}, h, w), got shape {tuple(latents.shape)}"
        )
    return [to_pil(decode_one(model, latents[i : i + 1], auto_upcast)) for i in range(latents.shape[0])]


# Families that share a latent space (and so the same preview coefficients): SD2 uses SD1's
# VAE, the SDXL refiner SDXL's.
PREVIEW_FAMILY = {"sd1": "sd1", "sd2": "sd1", "sdxl": "sdxl", "sdxl-refiner": "sdxl"}


def approx_preview(latents: torch.Tensor, family: str = "sd1") -> Image.Image:
    """A1111's "Approx cheap" preview of the first latent: a per-pixel linear map to RGB,
    at latent resolution (no network, so it costs nothing during sampling)."""
    family = PREVIEW_FAMILY.get(family, family)
    if family not in CHEAP_APPROX_COEFFS:
        known = sorted(PREVIEW_FAMILY)
        raise ValueError(f"no cheap preview coefficients for model family {family!r}; known: {known}")
    latent = latents[0].to(torch.float32)
    coeffs = torch.tensor(CHEAP_APPROX_COEFFS[family], dtype=torch.float32, device=latent.device)
    if latent.shape[0] != coeffs.shape[0]:
        raise ValueError(f"cheap preview needs {coeffs.shape[0]} latent channels, got {latent.shape[0]}")
    rgb = torch.einsum("lhw,lr->rhw", latent, coeffs)
    return to_pil(rgb)
