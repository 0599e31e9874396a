"""A Flux.1 checkpoint (plus the module files it needs) -> a LoadedModel.

A Flux model is four networks: the transformer, the 16-channel autoencoder, CLIP-L (pooled
prompt vector) and T5-XXL (per-token prompt states). A single file may carry all of them
(all-in-one layout) or only the transformer (BFL's layout); what the checkpoint lacks comes
from module files (`forge_additional_modules`, Forge's per-job choice of files in
models/VAE and models/text_encoder), or, when none are named, from the first file of each
kind found in those folders. A part that is nowhere is a 400 naming it.

Loading follows the single-file loader's two phases: every tensor is converted and checked
against the empty (meta) modules first, then `before_build` frees room, then modules fill.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from webui_api.engine.loading import flux_keys, ldm_keys, load_clip_tokenizer
from webui_api.engine.loading.architectures import TextEncoderSpec, load_config
from webui_api.engine.loading.builder import (
    Component,
    _inferred,
    check_state,
    empty_vae,
    expected_shapes,
    fill_component,
    gather,
    text_component,
)
from webui_api.engine.loading.checkpoint import LoadOptions, place_module
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.flow_parts import (
    build_parts,
    checkpoint_shapes,
    chosen_modules,
    keep_gguf_quantized,
    missing_parts_error,
    module_files,
    read_transformer_checkpoint,
    strip_to,
)
from webui_api.engine.loading.forge_modules import load_t5_tokenizer
from webui_api.engine.loading.infer import key_count
from webui_api.engine.models import CheckpointInfo, LoadedModel
from webui_api.engine.quantized_linear import PackedWeight

log = logging.getLogger(__name__)

FLUX_VAE_SCALE = 0.3611
FLUX_VAE_SHIFT = 0.1159
# Forge's PredictionFlux `mu` (the log of the time shift): dev 1.15 (its max_shift at seq_len 4096),
# schnell mu=1.0 (backend/diffusion_engine/flux.py); flow_sigma_table applies exp(mu)
DEV_SHIFT = 1.15
SCHNELL_SHIFT = 1.0

KIND_VAE = "vae"
KIND_CLIP_L = "clip_l"
KIND_T5 = "t5xxl"
PART_NAMES = {KIND_VAE: "VAE (ae.safetensors)", KIND_CLIP_L: "CLIP-L text encoder", KIND_T5: "T5-XXL text encoder"}

_CLIP_MARKER = "text_model.embeddings.token_embedding.weight"
_T5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
_VAE_MARKER = "decoder.conv_in.weight"


# ---------------------------------------------------------------------------
# Module files: what each one is
# ---------------------------------------------------------------------------


def module_kind(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What a module file holds, from its keys: a Flux VAE (16 latent channels), CLIP-L or T5."""
    clip = strip_to(shapes, _CLIP_MARKER)
    if clip is not None:
        return KIND_CLIP_L
    if strip_to(shapes, _T5_MARKER) is not None:
        return KIND_T5
    vae = strip_to(shapes, _VAE_MARKER)
    if vae is not None and shapes[vae + _VAE_MARKER][1] == 16:
        return KIND_VAE
    return None


def classify_module_files(paths: Sequence[Path]) -> dict[str, Path]:
    """kind -> the first file of that kind among `paths` (unreadable or foreign files skipped)."""
    found: dict[str, Path] = {}
    for path in paths:
        try:
            readable = path.suffix.lower() in (".safetensors", ".sft", ".gguf")
            kind = module_kind(checkpoint_shapes(path)) if readable else None
        except (OSError, ValueError, UnusableModelFile) as err:
            log.warning("Skipping module file %s: %s", path, err)
            continue
        if kind is not None and kind not in found:
            found[kind] = path
    return found


# ---------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------


@dataclass
class FluxComponents:
    transformer: Component
    vae: Component
    clip_l: Component
    t5: Component
    config: dict[str, Any]
    sources: dict[str, str]  # part -> file it came from


def transformer_component(
    path: Path, state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[Component, dict[str, Any]]:
    """The transformer under `prefix`, renamed to diffusers' keys and checked."""
    from diffusers import FluxTransformer2DModel

    ours = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    ours = {key: value for key, value in ours.items() if flux_keys.is_transformer_key(key)}
    shapes = {key: tuple(value.shape) for key, value in ours.items()}
    config = _inferred(path, "Flux transformer", lambda: flux_keys.transformer_config(shapes))
    try:
        converted = flux_keys.bfl_to_diffusers(ours, hidden=shapes["img_in.weight"][0])
    except flux_keys.UnmappedKey as err:
        raise UnusableModelFile(path, f"unknown Flux transformer tensor {err.args[0]!r}") from err
    with torch.device("meta"):
        # diffusers' models are torch Modules; its type hints do not say so to mypy
        module = cast(torch.nn.Module, FluxTransformer2DModel(**config))
    check_state(path, converted, expected_shapes(module), "Flux transformer")
    return Component(module, converted), config


def flux_vae_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """AutoencoderKL arguments for Flux's autoencoder: 16 latent channels, no quant convs."""
    levels = key_count(shapes, re.escape(prefix + "encoder.down.") + r"(\d+)\.")
    widths = [shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    return {
        **load_config("vae-sd"),
        "in_channels": shapes[prefix + "encoder.conv_in.weight"][1],
        "out_channels": shapes[prefix + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths,
        "layers_per_block": key_count(shapes, re.escape(prefix + "encoder.down.0.block.") + r"(\d+)\."),
        "latent_channels": shapes[prefix + "decoder.conv_in.weight"][1],
        "use_quant_conv": prefix + "quant_conv.weight" in shapes,
        "use_post_quant_conv": prefix + "post_quant_conv.weight" in shapes,
        "scaling_factor": FLUX_VAE_SCALE,
        "shift_factor": FLUX_VAE_SHIFT,
    }


def vae_component(path: Path, state: Mapping[str, torch.Tensor], prefix: str) -> Component:
    shapes = {key: tuple(value.shape) for key, value in state.items() if key.startswith(prefix)}
    config = _inferred(path, "VAE", lambda: flux_vae_config(shapes, prefix))
    levels = len(config["block_out_channels"])
    module = empty_vae(config)

    def source_key(key: str) -> str:
        return prefix + ldm_keys.vae_key_to_ldm(key, levels)[len(ldm_keys.VAE_PREFIX) :]

    return Component(module, gather(path, state, expected_shapes(module), source_key, "VAE"))


def clip_component(path: Path, state: Mapping[str, torch.Tensor], prefix: str) -> Component:
    spec = TextEncoderSpec("text-clip-l", prefix, "clip", "text_encoder")
    return text_component(path, state, {k: tuple(v.shape) for k, v in state.items()}, spec)


def t5_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """transformers T5Config for an encoder stored with transformers' names (prefix removed)."""
    vocab, d_model = shapes["shared.weight"] if "shared.weight" in shapes else shapes["encoder.embed_tokens.weight"]
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    if inner % heads:
        raise ValueError(f"attention width {inner} is not a multiple of {heads} heads")
    return {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // heads,
        "num_heads": heads,
        "d_ff": shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
        "num_layers": key_count(shapes, r"encoder\.block\.(\d+)\."),
        "feed_forward_proj": "gated-gelu",
        "relative_attention_num_buckets": buckets,
        "is_encoder_decoder": False,
        "use_cache": False,
        "tie_word_embeddings": False,
    }


def t5_component(path: Path, state: Mapping[str, torch.Tensor], prefix: str) -> Component:
    from transformers import T5Config, T5EncoderModel

    ours = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    ours = {key: value for key, value in ours.items() if key.startswith(("shared.", "encoder."))}
    if "shared.weight" not in ours and "encoder.embed_tokens.weight" in ours:
        ours["shared.weight"] = ours["encoder.embed_tokens.weight"]
    if "shared.weight" in ours:  # tied in T5EncoderModel
        ours.setdefault("encoder.embed_tokens.weight", ours["shared.weight"])
    shapes = {key: tuple(value.shape) for key, value in ours.items() if value is not None}
    config = _inferred(path, "T5 text encoder", lambda: t5_config(shapes))
    with torch.device("meta"):
        module = T5EncoderModel(T5Config(**config))
    check_state(path, ours, expected_shapes(module), "T5 text encoder")
    return Component(module, ours)


# ---------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------


def prepare_flux(
    path: Path, state: Mapping[str, torch.Tensor], modules: Mapping[str, Path], allow_unsafe_pickle: bool = False
) -> FluxComponents:
    """Every Flux part from the checkpoint, else from the module file of its kind."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    layout = flux_keys.flux_layout(shapes)
    transformer, config = transformer_component(path, state, layout.transformer_prefix)
    packed = {
        KIND_VAE: layout.vae_prefix,
        KIND_CLIP_L: flux_keys.CLIP_L_PREFIX + "transformer." if layout.has_clip_l else None,
        KIND_T5: flux_keys.T5XXL_PREFIX + "transformer." if layout.has_t5xxl else None,
    }
    packed = {kind: (None if kind in modules else prefix) for kind, prefix in packed.items()}  # named modules win
    missing = [kind for kind, prefix in packed.items() if prefix is None and kind not in modules]
    if missing:
        raise missing_parts_error(path, "Flux", [PART_NAMES[kind] for kind in missing])
    builders: dict[str, Callable[[Path, Mapping[str, torch.Tensor], str], Component]] = {
        KIND_VAE: vae_component,
        KIND_CLIP_L: clip_component,
        KIND_T5: t5_component,
    }

    def build(kind: str, file: Path, part_state: Mapping[str, torch.Tensor], prefix: str) -> Component:
        return builders[kind](file, part_state, prefix)

    present = {kind: prefix for kind, prefix in packed.items() if prefix is not None}
    parts, sources = build_parts(
        path, state, present, modules, tuple(builders), build, _MARKERS, allow_unsafe_pickle
    )
    return FluxComponents(transformer, parts[KIND_VAE], parts[KIND_CLIP_L], parts[KIND_T5], config, sources)


_MARKERS = {KIND_VAE: _VAE_MARKER, KIND_CLIP_L: _CLIP_MARKER, KIND_T5: _T5_MARKER}


def is_flux_file(path: Path) -> bool:
    """A Flux.1 transformer in a safetensors or GGUF file, told from the header alone."""
    if path.suffix.lower() not in (".safetensors", ".sft", ".gguf"):
        return False
    try:
        return flux_keys.is_flux(checkpoint_shapes(path))
    except (OSError, ValueError, UnusableModelFile):
        return False


def flux_modules(path: Path, named: Sequence[Path], paths: ModelPaths) -> dict[str, Path]:
    """kind -> module file for the parts a Flux checkpoint lacks (flow_parts.chosen_modules)."""

    def absent() -> list[str]:
        layout = flux_keys.flux_layout(checkpoint_shapes(path))
        has = {KIND_VAE: layout.vae_prefix is not None, KIND_CLIP_L: layout.has_clip_l, KIND_T5: layout.has_t5xxl}
        return [kind for kind, present in has.items() if not present]

    return chosen_modules(path, named, paths, classify_module_files, absent, "a Flux VAE, CLIP-L or T5-XXL")


def load_flux(
    info: CheckpointInfo,
    options: LoadOptions,
    paths: ModelPaths,
    named: Sequence[Path],
    before_build: Callable[[], None] = lambda: None,
) -> LoadedModel:
    """The engine's entry: modules chosen per job (or found), the T5 tokenizer from the folders."""
    path = Path(info.filename)
    modules = flux_modules(path, named, paths)
    return load_flux_checkpoint(info, options, modules, lambda: load_t5_tokenizer(paths), before_build)


def load_flux_checkpoint(
    info: CheckpointInfo,
    options: LoadOptions,
    modules: Mapping[str, Path],
    t5_tokenizer: Callable[[], Any],
    before_build: Callable[[], None] = lambda: None,
) -> LoadedModel:
    """Load a Flux.1 single file (with `modules` filling what it lacks) as a LoadedModel."""
    started = time.perf_counter()
    path = Path(info.filename)
    state, packed = read_transformer_checkpoint(
        path, options.allow_unsafe_pickle, lambda shapes: flux_keys.flux_layout(shapes).transformer_prefix,
        flux_keys.is_transformer_key,
    )
    parts = prepare_flux(path, state, modules, options.allow_unsafe_pickle)
    del state
    tokenizer_2 = t5_tokenizer()
    before_build()
    model = assemble_flux(info, parts, options, tokenizer_2, lambda module: keep_gguf_layers(path, module, packed))
    log.info("Loaded %s as %s in %.1f s", info.title, model.architecture, time.perf_counter() - started)
    return model


def keep_gguf_layers(path: Path, transformer: torch.nn.Module, packed: Mapping[str, PackedWeight]) -> None:
    """A GGUF file's packed matrices (BFL names) become the transformer's Linear weights."""
    if not packed:
        return
    config: Any = transformer.config
    hidden = int(config.num_attention_heads) * int(config.attention_head_dim)
    count = keep_gguf_quantized(path, transformer, packed, lambda state: flux_keys.bfl_to_diffusers(state, hidden))
    log.info("%s: %d transformer layers stay GGUF-quantized (decoded per call)", path.name, count)


def assemble_flux(
    info: CheckpointInfo, parts: FluxComponents, options: LoadOptions, t5_tokenizer: Any,
    before_place: Callable[[torch.nn.Module], None] = lambda module: None,
) -> LoadedModel:
    """Fill and place every part; `before_place` sees the filled transformer while it is on the CPU."""
    guidance = bool(parts.config["guidance_embeds"])
    filled = fill_component(parts.transformer)
    before_place(filled)
    transformer = place_module(filled, options.device, options.dtype)
    vae = place_module(fill_component(parts.vae), options.device, options.vae_dtype)
    clip_l = place_module(fill_component(parts.clip_l), options.device, options.dtype)
    t5 = place_module(fill_component(parts.t5), options.device, options.dtype)
    variant = "flux-dev" if guidance else "flux-schnell"
    return LoadedModel(
        info=info,
        unet=transformer,
        vae=vae,
        text_encoder=clip_l,
        tokenizer=load_clip_tokenizer(),
        alphas_cumprod=torch.zeros(0),
        device=options.device,
        dtype=options.dtype,
        latent_channels=int(parts.config["in_channels"]) // 4,
        vae_scale_factor=FLUX_VAE_SCALE,
        family="flux",
        prediction_type="flow",
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        unet_in_channels=int(parts.config["in_channels"]),
        architecture=variant,
        baked_vae=vae,
        vae_shift_factor=FLUX_VAE_SHIFT,
        flow_shift=DEV_SHIFT if guidance else SCHNELL_SHIFT,
        module_files=module_files(parts.sources, info.filename),
    )
