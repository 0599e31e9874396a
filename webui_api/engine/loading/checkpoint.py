"""One checkpoint file -> a LoadedModel: read, detect, convert and check, then build.

`load_checkpoint` runs in two phases. Reading, architecture detection and the full key/shape
check happen first and touch nothing else; only then is `before_build` called (the engine
frees room for the new model there) and the modules are filled, cast and moved. A bad file
therefore fails while the previously loaded model is still in place and serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.loading import load_clip_tokenizer, load_openclip_tokenizer
from webui_api.engine.loading.architectures import (
    Architecture,
    Detection,
    detect_architecture,
    load_config,
    read_yaml_hints,
    v_prediction,
)
from webui_api.engine.loading.builder import (
    PreparedCheckpoint,
    fill_component,
    looks_like_v_prediction,
    prepare_checkpoint,
)
from webui_api.engine.loading.files import read_state_dict
from webui_api.engine.models import (
    SD1_VAE_SCALE,
    CheckpointInfo,
    LoadedModel,
    cast_floating,
    scaled_linear_alphas_cumprod,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    """Where and how models are loaded: A1111's precision flags, resolved by the engine."""

    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype  # float32 with --no-half-vae
    allow_unsafe_pickle: bool = False  # --disable-safe-unpickle


def detect(path: Path, state: dict[str, torch.Tensor], config: str | None) -> Detection:
    """The architecture of a loaded state dict (keys, shapes and the `.yaml` beside the file)."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    return detect_architecture(path, shapes, read_yaml_hints(Path(config) if config else None))


def load_checkpoint(
    info: CheckpointInfo, options: LoadOptions, before_build: Callable[[], None] = lambda: None
) -> LoadedModel:
    """Load a single-file checkpoint (original layout) as a LoadedModel on `options.device`."""
    started = time.perf_counter()
    path = Path(info.filename)
    state = read_state_dict(path, allow_unsafe_pickle=options.allow_unsafe_pickle)
    detection = detect(path, state, info.config)
    prepared = prepare_checkpoint(path, state, detection.architecture)
    del state  # the prepared components now hold the only references to the tensors
    before_build()
    model = assemble(info, detection, prepared, options)
    log.info("Loaded %s as %s in %.1f s", info.title, model.architecture, time.perf_counter() - started)
    return model


ALIGNMENT = 64  # bytes; what the CPU kernels' own allocations guarantee


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move and cast; tensors still pointing into the memory-mapped file (same dtype, CPU)
    get their own aligned memory: CPU matmul results depend on operand alignment, so an
    unaligned weight would compute (slightly) different numbers than the same weight
    anywhere else, and the page cache is no place for the working copy of a model."""
    cast_floating(module.to(device=device), dtype)
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
            tensor.data = tensor.data.clone()
    return module


def assemble(
    info: CheckpointInfo, detection: Detection, prepared: PreparedCheckpoint, options: LoadOptions
) -> LoadedModel:
    """Fill, cast and place every network, settle SD2's prediction type, add tokenizers."""
    unet = place_module(fill_component(prepared.unet), options.device, options.dtype)
    vae = place_module(fill_component(prepared.vae), options.device, options.vae_dtype)
    text = {slot: place_module(fill_component(c), options.device, options.dtype) for slot, c in prepared.text.items()}
    arch = detection.architecture
    if detection.needs_v_probe and looks_like_v_prediction(unet):
        arch = v_prediction(arch)
    return LoadedModel(
        info=info,
        unet=unet,
        vae=vae,
        text_encoder=text.get("text_encoder"),
        tokenizer=_tokenizer(arch, "text_encoder"),
        alphas_cumprod=scaled_linear_alphas_cumprod().to(options.device),
        device=options.device,
        dtype=options.dtype,
        vae_scale_factor=float(load_config(arch.vae_config).get("scaling_factor", SD1_VAE_SCALE)),
        family=arch.family,
        prediction_type=arch.prediction_type,
        text_encoder_2=text.get("text_encoder_2"),
        tokenizer_2=_tokenizer(arch, "text_encoder_2"),
        unet_in_channels=arch.in_channels,
        architecture=arch.name,
        baked_vae=vae,
        zero_terminal_snr=detection.zero_terminal_snr,
    )


def _tokenizer(arch: Architecture, slot: str) -> Any:
    """CLIP-L pads with end-of-text, OpenCLIP with 0; an architecture without that encoder
    (SD1's second slot, the refiner's first) gets None."""
    spec = next((s for s in arch.text_encoders if s.slot == slot), None)
    if spec is None:
        return None
    return load_openclip_tokenizer() if spec.layout == "openclip" else load_clip_tokenizer()

