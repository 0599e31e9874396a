"""A1111-compatible noise: per-image generators, variation seeds, seed resize, ENSD, NV Philox.

The same seed must give the same latents as A1111, whatever the batch composition, so every
image owns its generator and all noise (the initial latent and every draw a sampler makes)
comes from those generators in call order. Where A1111 re-seeds the *global* torch RNG
(subseed noise, seed-resize noise) we draw from a fresh local generator with that seed: the
first draw is identical and the process-wide RNG state is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

RANDN_SOURCES = ("GPU", "CPU", "NV")

# Philox-4x32-10 constants (multipliers and Weyl key increments) and curand's Box-Muller scale.
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
_U32_SCALE = np.array([2.3283064e-10], dtype=np.float32)  # 2**-32 as curand's float32 constant
_U32_SCALE_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)
_MASK32 = np.uint64(0xFFFFFFFF)


class NoiseGenerator(Protocol):
    """One image's standard-normal stream: each call continues where the last one stopped."""

    def randn(self, shape: Sequence[int]) -> torch.Tensor: ...


# ---------------------------------------------------------------------------
# NV source: CUDA's Philox stream, reproduced with NumPy on any device
# ---------------------------------------------------------------------------


def _philox_round(counter: np.ndarray, key: np.ndarray) -> None:
    """One Philox-4x32 round in place; products are 64-bit, split into hi/lo 32-bit words."""
    prod0 = counter[0].astype(np.uint64) * np.uint64(PHILOX_M0)
    prod2 = counter[2].astype(np.uint64) * np.uint64(PHILOX_M1)
    hi0, lo0 = (prod0 >> np.uint64(32)).astype(np.uint32), (prod0 & _MASK32).astype(np.uint32)
    hi2, lo2 = (prod2 >> np.uint64(32)).astype(np.uint32), (prod2 & _MASK32).astype(np.uint32)
    c1, c3 = counter[1].copy(), counter[3].copy()
    counter[0] = hi2 ^ c1 ^ key[0]
    counter[1] = lo2
    counter[2] = hi0 ^ c3 ^ key[1]
    counter[3] = lo0


def philox4x32(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Ten Philox rounds over a (4, n) uint32 counter with a (2, n) uint32 key (both modified)."""
    for round_no in range(PHILOX_ROUNDS):
        _philox_round(counter, key)
        if round_no < PHILOX_ROUNDS - 1:
            key[0] += np.uint32(PHILOX_W0)
            key[1] += np.uint32(PHILOX_W1)
    return counter


def _box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """curand's normal from two uint32 words: only the sine branch is used.

    uint32 times a float32 array promotes to float64 in NumPy; only the result is float32,
    which is what reproduces CUDA's values bit for bit.
    """
    u = x * _U32_SCALE + _U32_SCALE / 2
    v = y * _U32_SCALE_2PI + _U32_SCALE_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A1111's "NV" generator: the numbers CUDA's `torch.randn` gives for a seed, on any device.

    The offset advances by one per call (not per element), like A1111's port.
    """

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0
        self.device = torch.device(device)

    def randn_numpy(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        key = np.empty((2, n), dtype=np.uint32)
        key[0] = self.seed & 0xFFFFFFFF
        key[1] = self.seed >> 32
        words = philox4x32(counter, key)
        return _box_muller_first(words[0], words[1]).reshape(tuple(shape))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.randn_numpy(shape)).to(self.device)


# ---------------------------------------------------------------------------
# GPU / CPU sources: torch generators
# ---------------------------------------------------------------------------


@dataclass
class TorchNoiseGenerator:
    """A torch.Generator on the source device; draws are moved to the model device."""

    generator: torch.Generator
    target: torch.device

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        gen_device = self.generator.device
        x = torch.randn(tuple(shape), generator=self.generator, device=gen_device, dtype=torch.float32)
        return x.to(self.target)


def generator_device(source: str, device: torch.device) -> torch.device:
    """Where A1111 draws: "CPU" (and any MPS model) on the CPU, "GPU" on the model's device."""
    if source == "CPU" or device.type == "mps":
        return torch.device("cpu")
    return device


def create_generator(seed: int, source: str, device: torch.device) -> NoiseGenerator:
    """A fresh per-seed stream for `source`, yielding float32 tensors on `device`."""
    if source == "NV":
        return PhiloxGenerator(seed, device)
    gen_device = generator_device(source, device)
    generator = torch.Generator(device=gen_device).manual_seed(int(seed))
    return TorchNoiseGenerator(generator, device)


def randn_seeded(seed: int, shape: Sequence[int], source: str, device: torch.device) -> torch.Tensor:
    """The first tensor of `seed`'s stream (what A1111 gets from a freshly seeded global RNG)."""
    return create_generator(seed, source, device).randn(shape)


def philox_normal(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """A1111's replacement for torchsde's per-node draw under the "NV" source: the first
    Philox tensor of the node seed (CPU float32; Brownian trees move results themselves)."""
    return PhiloxGenerator(seed).randn(shape)


# ---------------------------------------------------------------------------
# Variation seeds and seed resize
# ---------------------------------------------------------------------------


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed blend of two (C, H, W) noises along the H axis (dim 1).

    strength 0 gives `low`, 1 gives `high`. The near-parallel fallback is linear with the
    weights swapped (strength weights `low`), an upstream quirk kept for identical output.
    """
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    w_low = (torch.sin((1.0 - strength) * omega) / sin_omega).unsqueeze(1)
    w_high = (torch.sin(strength * omega) / sin_omega).unsqueeze(1)
    return w_low * low + w_high * high


@dataclass(frozen=True)
class _PasteWindow:
    """Where the seed-resize noise lands in the full-size noise (rows/cols, clipped if larger)."""

    dst_y: int
    dst_x: int
    src_y: int
    src_x: int
    h: int
    w: int


def paste_window(full_hw: tuple[int, int], small_hw: tuple[int, int]) -> _PasteWindow:
    """Centre a (h0, w0) patch in an (H, W) canvas; a larger patch is centre-cropped instead."""
    dy = (full_hw[0] - small_hw[0]) // 2
    dx = (full_hw[1] - small_hw[1]) // 2
    return _PasteWindow(
        dst_y=max(dy, 0),
        dst_x=max(dx, 0),
        src_y=max(-dy, 0),
        src_x=max(-dx, 0),
        h=small_hw[0] if dy >= 0 else small_hw[0] + 2 * dy,
        w=small_hw[1] if dx >= 0 else small_hw[1] + 2 * dx,
    )


def paste_centered(full: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Copy `small` (C, h0, w0) into `full` (C, H, W) at the centre; returns `full`."""
    win = paste_window((full.shape[1], full.shape[2]), (small.shape[1], small.shape[2]))
    full[:, win.dst_y : win.dst_y + win.h, win.dst_x : win.dst_x + win.w] = small[
        :, win.src_y : win.src_y + win.h, win.src_x : win.src_x + win.w
    ]
    return full


# ---------------------------------------------------------------------------
# ImageRNG
# ---------------------------------------------------------------------------


class ImageRNG:
    """Noise for one batch: one generator per image seed, A1111's `ImageRNG` semantics.

    `first()` gives the initial latent noise (variation-seed slerp, seed resize, then the ENSD
    re-seed); every later `next()` gives one fresh draw per image, stacked, which is the noise
    a sampler consumes. Results are float32, shape (B, C, H/8, W/8), on `device`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] = (),
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        ensd: int = 0,
        source: str = "GPU",
        device: str | torch.device = "cpu",
    ) -> None:
        _check_args(shape, seeds, source)
        self.shape = tuple(int(s) for s in shape)
        self.seeds = tuple(int(s) for s in seeds)
        self.subseeds = tuple(int(s) for s in subseeds)
        self.subseed_strength = float(subseed_strength)
        self.resize_from = (int(seed_resize_from_h), int(seed_resize_from_w))
        self.ensd = int(ensd)
        self.source = source
        self.device = torch.device(device)
        self.generators = [create_generator(s, source, self.device) for s in self.seeds]
        self.is_first = True

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The shape the seed noise is drawn in: the seed-resize size when both sides are set."""
        h, w = self.resize_from
        if h <= 0 or w <= 0:
            return self.shape
        return (self.shape[0], h // 8, w // 8)

    def first(self) -> torch.Tensor:
        """The initial noise of every image; afterwards the streams continue (or restart at
        seed + ENSD when ENSD is set)."""
        self.is_first = False
        noises = [self._initial_noise(i) for i in range(len(self.seeds))]
        if self.ensd:
            self.generators = [create_generator(s + self.ensd, self.source, self.device) for s in self.seeds]
        return torch.stack(noises)

    def next(self) -> torch.Tensor:
        """One fresh draw per image (the first call returns `first()`, like A1111)."""
        if self.is_first:
            return self.first()
        return torch.stack([g.randn(self.shape) for g in self.generators])

    def _initial_noise(self, index: int) -> torch.Tensor:
        """Steps 2.1-2.4 of A1111's first(): subseed noise, seed noise, slerp, resize paste."""
        seed, generator = self.seeds[index], self.generators[index]
        resized = self.noise_shape != self.shape
        if resized:
            noise = randn_seeded(seed, self.noise_shape, self.source, self.device)
        else:
            noise = generator.randn(self.shape)
        if self.subseeds and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            sub = randn_seeded(subseed, self.noise_shape, self.source, self.device)
            noise = slerp(self.subseed_strength, noise, sub)
        if resized:
            noise = paste_centered(generator.randn(self.shape), noise)
        return noise


def _check_args(shape: Sequence[int], seeds: Sequence[int], source: str) -> None:
    if len(shape) != 3 or any(int(s) <= 0 for s in shape):
        raise ValueError(f"ImageRNG shape must be (C, H/8, W/8) with positive sizes, got {tuple(shape)}")
    if len(seeds) == 0:
        raise ValueError("ImageRNG needs at least one seed, got none")
    if source not in RANDN_SOURCES:
        raise ValueError(f"randn source must be one of {RANDN_SOURCES}, got {source!r}")
