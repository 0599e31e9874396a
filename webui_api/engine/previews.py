"""Live previews per A1111's `show_progress_type`: "Full", "Approx NN", "Approx cheap", "TAESD".

- "Full": the model's own VAE decodes the latest estimate (slow, exact).
- "TAESD": the tiny autoencoder's decoder (madebyollin/taesd) from A1111's folder
  models/VAE-taesd (taesd_decoder.pth for SD1/SD2, taesdxl_decoder.pth for SDXL). A1111's
  file is a state dict of a Sequential whose index 0 is a parameter-free clamp; diffusers'
  DecoderTiny is the same network with the clamp in forward(), so keys shift by one.
- "Approx cheap": a per-pixel linear map (latents.approx_preview).
- "Approx NN" (A1111's default): A1111's small VAE-approx CNN (engine/vae_approx.py) from
  models/VAE-approx (model.pt for SD1/SD2, vaeapprox-sdxl.pt, vaeapprox-sd3.pt), at half the
  image's size. A1111 downloads a missing file; here the generation layer fetches it before the
  job (weights/runtime.preview_weights) when downloads are allowed.

A missing TAESD or VAE-approx file falls back to "Approx cheap" (with one log line per file): a
preview must never fail a generation. Decoders are loaded once per engine (PreviewDecoders).

The sampler callback hands the observer a `PreviewSource`. Calling it decodes at once (on the
caller's thread); `capture()` only snapshots the latent (on CUDA a copy on a side stream, ordered
by an event, so the host never waits for the GPU) and returns the decode for later: the progress
tracker runs it on its preview thread, so the sampling loop never waits on a VAE/TAESD decode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui_api.engine.latents import PREVIEW_FAMILY, approx_preview, decode_one, to_pil
from webui_api.engine.vae_approx import APPROX_FILES, load_vae_approx

log = logging.getLogger(__name__)
PREVIEW_TYPES = ("Full", "Approx NN", "Approx cheap", "TAESD")
TAESD_DECODER_FILES = {"sd1": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth"}


def taesd_decoder(latent_channels: int = 4) -> torch.nn.Module:
    """An empty TAESD decoder (diffusers' DecoderTiny with TAESD's layout)."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    return DecoderTiny(in_channels=latent_channels, out_channels=3, num_blocks=(3, 3, 3, 1),
                       block_out_channels=(64, 64, 64, 64), upsampling_scaling_factor=2, act_fn="relu",
                       upsample_fn="nearest")


def a1111_keys_to_decoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """"<i>.<rest>" (A1111/taesd.py Sequential, clamp at 0) -> "layers.<i-1>.<rest>" (DecoderTiny)."""
    renamed = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ValueError(f"not a TAESD decoder key: {key!r}")
        renamed[f"layers.{int(index) - 1}.{rest}"] = value
    return renamed


def load_taesd_decoder(path: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A TAESD decoder file (plain tensors only: weights_only) on `device` in `dtype`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    decoder = taesd_decoder(int(state["1.weight"].shape[1]))
    decoder.load_state_dict(a1111_keys_to_decoder(state))
    return decoder.to(device=device, dtype=dtype).eval()


@dataclass
class PreviewDecoders:
    """The engine's preview decoders, loaded on first use: TAESD from `folder` (models/VAE-taesd),
    Approx NN from `approx_folder` (models/VAE-approx). A missing file is remembered as None."""

    folder: Path | None
    approx_folder: Path | None = None
    _loaded: dict[tuple[str, str], torch.nn.Module | None] = field(default_factory=dict)

    def taesd(self, family: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
        """The TAESD decoder for `family`'s latent space, or None when its file is absent."""
        space = PREVIEW_FAMILY.get(family, family)
        key = ("TAESD", space)
        if key not in self._loaded:
            self._loaded[key] = self._load_taesd(space, device, dtype)
        return self._loaded[key]

    def approx_nn(self, family: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
        """The Approx NN decoder for `family`'s latent space, or None when its file is absent."""
        space = PREVIEW_FAMILY.get(family, family)
        key = ("Approx NN", space)
        if key not in self._loaded:
            self._loaded[key] = self._load_approx(space, device, dtype)
        return self._loaded[key]

    def _load_taesd(self, space: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
        path = _file_in(self.folder, TAESD_DECODER_FILES.get(space))
        if path is None:
            log.warning("TAESD previews need %s in %s; showing Approx cheap previews instead",
                        TAESD_DECODER_FILES.get(space), self.folder)
            return None
        return load_taesd_decoder(path, device, dtype)

    def _load_approx(self, space: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
        path = _file_in(self.approx_folder, APPROX_FILES.get(space))
        if path is None:
            log.warning("Approx NN previews need %s in %s; showing Approx cheap previews instead",
                        APPROX_FILES.get(space), self.approx_folder)
            return None
        return load_vae_approx(path, device, dtype)


def _file_in(folder: Path | None, name: str | None) -> Path | None:
    """`folder/name` when both are known and the file exists."""
    if folder is None or name is None:
        return None
    path = folder / name
    return path if path.is_file() else None


def preview_kind(options: Any, model: Any) -> str:
    """The preview kind a job shows: its `show_progress_type`, except that A1111 shows "Approx NN"
    instead of "Full" while the model is offloaded (--medvram/--lowvram: a full VAE decode would
    move the VAE in and out every preview) unless `live_preview_allow_lowvram_full` is set."""
    kind = str(options.show_progress_type)
    if kind == "Full" and getattr(model, "offloaded", False) and not options.live_preview_allow_lowvram_full:
        return "Approx NN"
    return kind


def live_preview(model: Any, preview_type: str, latents: torch.Tensor, auto_upcast: bool = True) -> Image.Image:
    """The preview of the first latent of `latents` the option `show_progress_type` asks for.
    `auto_upcast=False` (off the worker thread) never switches a NaN-producing VAE to float32: only
    the worker changes the model."""
    latent = latents[:1]
    if preview_type == "Full":
        return to_pil(decode_one(model, latent, auto_upcast))
    decoder = _network_decoder(model, preview_type)
    if decoder is not None:
        with torch.inference_mode():
            image = decoder(latent.to(device=model.device, dtype=next(decoder.parameters()).dtype))
        return to_pil(image[0].to(torch.float32).clamp(-1, 1))
    return approx_preview(latent, model.family)


def _network_decoder(model: Any, preview_type: str) -> torch.nn.Module | None:
    """The TAESD / Approx NN network for `model`, None for "Approx cheap" or a missing file."""
    decoders = getattr(model, "preview_decoders", None)
    if decoders is None:
        return None
    if preview_type == "TAESD":
        return decoders.taesd(model.family, model.device, model.vae.dtype)
    if preview_type == "Approx NN":
        return decoders.approx_nn(model.family, model.device, model.vae.dtype)
    return None


@dataclass(frozen=True)
class LatentSnapshot:
    """One latent copied inside the sampling loop. On CUDA the copy runs on a side stream after the
    work queued so far and `ready` marks its end; `latent_for_decode` makes the decoding stream wait
    for it on the device, never on the host."""

    latent: torch.Tensor
    ready: Any = None  # torch.cuda.Event on CUDA, None elsewhere

    def latent_for_decode(self) -> torch.Tensor:
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.latent.device)
            stream.wait_event(self.ready)
            self.latent.record_stream(stream)  # the allocator must not reuse it before this stream is done
        return self.latent


def snapshot_latent(latent: torch.Tensor, side_stream: Any = None) -> LatentSnapshot:
    """A copy of `latent`'s first image that later sampling steps cannot change; on CUDA (with a
    side stream) the copy is queued without any host wait."""
    source = latent[:1].detach()
    if side_stream is None or source.device.type != "cuda":
        return LatentSnapshot(source.clone())
    side_stream.wait_stream(torch.cuda.current_stream(source.device))
    with torch.cuda.stream(side_stream):
        copy = source.clone()
        ready = torch.cuda.Event()
        ready.record(side_stream)
    source.record_stream(side_stream)  # the sampling stream may free `source` before the copy ran
    return LatentSnapshot(copy, ready)


class PreviewSource:
    """The `make_preview` the sampler callback hands the observer for one step.

    Calling it decodes the latest estimate now (observers that want an image at once); `capture()`
    snapshots the estimate and returns the decode as a function to run later, on another thread.
    `decode(latent, auto_upcast)` makes the image; `of_model` gives the show_progress_type one.
    """

    def __init__(self, decode: Callable[[torch.Tensor, bool], Image.Image], latest: Callable[[], torch.Tensor],
                 side_streams: SideStreams | None = None) -> None:
        self._decode = decode
        self.latest = latest
        self._side_streams = side_streams

    @classmethod
    def of_model(cls, model: Any, preview_type: str, latest: Callable[[], torch.Tensor],
                 side_streams: SideStreams | None = None) -> PreviewSource:
        """The preview `show_progress_type` names (`preview_kind`) of `model`'s latest estimate."""
        return cls(lambda latent, auto_upcast: live_preview(model, preview_type, latent, auto_upcast), latest,
                   side_streams)

    def __call__(self) -> Image.Image:
        return self._decode(self.latest(), True)

    def capture(self) -> Callable[[], Image.Image]:
        latent = self.latest()
        stream = None if self._side_streams is None else self._side_streams.for_device(latent.device)
        snapshot = snapshot_latent(latent, stream)
        decode = self._decode
        return lambda: decode(snapshot.latent_for_decode(), False)


@dataclass
class SideStreams:
    """One side CUDA stream per job for preview copies, made on first use (none off CUDA)."""

    _streams: dict[torch.device, Any] = field(default_factory=dict)

    def for_device(self, device: torch.device) -> Any:
        if device.type != "cuda":
            return None
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]
