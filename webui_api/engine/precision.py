"""Precision policy: A1111's precision flags turned into one typed decision the engine follows.

A1111 (modules/shared_init.py, modules/devices.py) derives four facts from its flags:

- weights (`devices.dtype`): float32 with ``--no-half``, else float16;
- VAE (`devices.dtype_vae`): float32 with ``--no-half`` or ``--no-half-vae``, else the weights';
- inference (`devices.dtype_inference`): float32 with ``--precision full``, else the weights';
- ``--precision half`` forces float16 everywhere (no autocast) and refuses to start together
  with ``--no-half``/``--no-half-vae``;
- ``--upcast-sampling`` (with float16 weights) runs the UNet without autocast, casting its
  inputs to the weights' dtype and its output back to float32;
- otherwise a half-precision UNet runs under ``torch.autocast`` (the default "autocast").

The policy is computed once per engine from `Settings` so every decision can be tested on a CPU:
which dtype each component loads in, whether the UNet call runs under autocast, and whether
a half-precision VAE gets A1111's NaN → float32 retry.

Attention: diffusers' default processor is PyTorch's scaled-dot-product attention, whose
half-precision kernels accumulate the softmax in float32. A1111's option "Upcast cross attention
layer to float32" (`upcast_attn`, off by default) casts q, k, v to float32 for the attention itself
(engine/attention.py, applied per job).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
PRECISION_MODES = ("autocast", "full", "half")
_NAMED_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
HALF_CONFLICT = "--no-half and --no-half-vae conflict with --precision half"


class PrecisionConflict(ValueError):
    """Flags that A1111 also refuses to start with (its AssertionError at start-up)."""


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which dtype each component uses and how the UNet is called; fixed for an engine's life."""

    weights: torch.dtype  # UNet and text encoders
    vae: torch.dtype
    inference: torch.dtype  # the dtype computations run in (A1111's dtype_inference)
    autocast: bool  # the UNet and text encoders run under torch.autocast(device, weights)
    upcast_sampling: bool  # --upcast-sampling with half weights: no autocast, inputs cast in, float32 out

    @classmethod
    def resolve(
        cls,
        device_type: str,
        dtype: str = "auto",
        *,
        no_half_vae: bool = False,
        precision: str = "autocast",
        upcast_sampling: bool = False,
    ) -> PrecisionPolicy:
        """The policy for a device type ("cuda", "cpu", ...) and the server's precision flags.

        `dtype` is the server's --dtype ("auto": float16 on CUDA, float32 elsewhere, like A1111
        on a GPU and with --use-cpu); --no-half arrives here as dtype "float32".
        """
        if precision not in PRECISION_MODES:
            raise PrecisionConflict(f"--precision must be one of {', '.join(PRECISION_MODES)}, got {precision!r}")
        weights = _weights_dtype(device_type, dtype, precision)
        if precision == "half" and (weights not in HALF_DTYPES or no_half_vae):
            raise PrecisionConflict(HALF_CONFLICT)
        half = weights in HALF_DTYPES
        vae = torch.float32 if no_half_vae or not half else weights
        inference = torch.float32 if precision == "full" else weights
        upcast = bool(upcast_sampling and half)
        return cls(
            weights=weights,
            vae=vae,
            inference=inference,
            autocast=half and precision == "autocast" and not upcast,
            upcast_sampling=upcast,
        )

    @property
    def half_vae(self) -> bool:
        """Whether decoding can overflow to NaN and earns A1111's float32 retry (auto_vae_precision)."""
        return self.vae in HALF_DTYPES

    @contextlib.contextmanager
    def unet_call(self, device: torch.device) -> Iterator[None]:
        """The context every UNet / text-encoder call runs in: torch.autocast for "autocast"
        with half weights, nothing otherwise (float32, --precision half, --upcast-sampling)."""
        if not self.autocast:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.weights):
            yield

    def describe(self) -> str:
        """One log line naming the decisions."""
        mode = "autocast" if self.autocast else "upcast sampling" if self.upcast_sampling else "plain"
        return f"weights {_name(self.weights)}, VAE {_name(self.vae)}, inference {_name(self.inference)}, {mode}"


def _weights_dtype(device_type: str, dtype: str, precision: str) -> torch.dtype:
    if dtype == "auto":
        # --precision half is A1111's force_model_fp16: half precision whatever the device
        return torch.float16 if device_type == "cuda" or precision == "half" else torch.float32
    if dtype not in _NAMED_DTYPES:
        raise PrecisionConflict(f"dtype must be 'auto' or one of {sorted(_NAMED_DTYPES)}, got {dtype!r}")
    return _NAMED_DTYPES[dtype]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

