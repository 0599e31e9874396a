"""Tiled VAE decode/encode for large images (the server's --vae-tiling auto|on|off).

A1111 v1.10 has no built-in tiled VAE (extensions such as "Tiled VAE" add one); a 2048x2048
decode in half precision needs several GiB of activations at once, which is where large hires
jobs run out of memory. diffusers' AutoencoderKL tiles on request (`enable_tiling`): tiles of
the VAE's `sample_size` pixels, overlapping by a quarter and blended, so memory stays bounded
and the result differs from an untiled decode only near tile seams. Images no larger than one
tile are never tiled by diffusers, whatever the switch.

- "off": never tile (A1111's behaviour);
- "on": tile every decode/encode larger than one tile;
- "auto" (default): tile only images above AUTO_TILING_PIXELS, where the untiled decode's
  memory, not its speed, decides whether the job finishes.

The decision is a pure function of the mode and the image size; `vae_tiling` applies it to one
call and puts the VAE's own switch back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

VAE_TILING_MODES = ("auto", "on", "off")
AUTO_TILING_PIXELS = 1536 * 1536  # above this many output pixels "auto" tiles (e.g. a 1024 image upscaled 2x)


def check_vae_tiling_mode(mode: str) -> str:
    """`mode` when it is one of VAE_TILING_MODES; a ValueError naming them otherwise."""
    if mode not in VAE_TILING_MODES:
        raise ValueError(f"--vae-tiling must be one of {', '.join(VAE_TILING_MODES)}, got {mode!r}")
    return mode


def wants_tiling(mode: str, height: int, width: int) -> bool:
    """Whether a decode/encode of a `height` x `width` pixel image runs tiled under `mode`."""
    check_vae_tiling_mode(mode)
    if mode == "auto":
        return height * width > AUTO_TILING_PIXELS
    return mode == "on"


def can_tile(vae: Any) -> bool:
    """Whether `vae` has diffusers' tiling switch (AutoencoderKL, AutoencoderTiny do)."""
    return hasattr(vae, "enable_tiling") and hasattr(vae, "disable_tiling") and hasattr(vae, "use_tiling")


@contextlib.contextmanager
def vae_tiling(vae: Any, enabled: bool) -> Iterator[None]:
    """Run the block with `vae`'s tiling switched to `enabled`, then restore its own setting."""
    if not can_tile(vae) or bool(vae.use_tiling) == enabled:
        yield
        return
    previous = bool(vae.use_tiling)
    _switch(vae, enabled)
    try:
        yield
    finally:
        _switch(vae, previous)


def _switch(vae: Any, enabled: bool) -> None:
    if enabled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def vae_downscale(vae: Any) -> int:
    """Pixels per latent pixel of `vae` (8 for SD's VAEs): 2 per down block after the first."""
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 8


@contextlib.contextmanager
def tiling_for_decode(vae: Any, mode: str, latent_height: int, latent_width: int) -> Iterator[None]:
    """`vae_tiling` decided for decoding a latent of this size into pixels."""
    factor = vae_downscale(vae)
    with vae_tiling(vae, wants_tiling(mode, latent_height * factor, latent_width * factor)):
        yield


@contextlib.contextmanager
def tiling_for_encode(vae: Any, mode: str, height: int, width: int) -> Iterator[None]:
    """`vae_tiling` decided for encoding an image of this pixel size."""
    with vae_tiling(vae, wants_tiling(mode, height, width)):
        yield
