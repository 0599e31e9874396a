"""An SD3 / SD3.5 single file (plus the encoder files it lacks) -> a LoadedModel.

An SD3 model is five networks: the MMDiT, the 16-channel autoencoder, CLIP-L and CLIP-G (both
with their text projections: their pooled vectors are concatenated) and, optionally, T5-XXL.
Released files carry the MMDiT and the VAE and may pack the text encoders
(`text_encoders.clip_l/clip_g/t5xxl`); encoders a file lacks come from module files
(`forge_additional_modules`, else the first matching file in models/text_encoder). T5 is
optional as SD3 allows: without it the T5 half of the context is zeros (Forge and diffusers do
the same); CLIP-L, CLIP-G and the VAE are required and a missing one is a 400 naming it.

Loading follows the single-file loader's two phases: every tensor is converted and checked
against empty (meta) modules first, then `before_build` frees room, then modules fill.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from webui_api.engine.loading import load_clip_tokenizer, load_openclip_tokenizer, sd3_keys
from webui_api.engine.loading.builder import (
    Component,
    _inferred,
    check_state,
    empty_text_encoder,
    expected_shapes,
    fill_component,
    gather,
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
from webui_api.engine.loading.flux_checkpoint import _CLIP_MARKER, KIND_VAE, module_kind, t5_component, vae_component
from webui_api.engine.loading.forge_modules import load_t5_tokenizer
from webui_api.engine.models import CheckpointInfo, LoadedModel
from webui_api.engine.quantized_linear import PackedWeight

log = logging.getLogger(__name__)

SD3_VAE_SCALE = 1.5305
SD3_VAE_SHIFT = 0.0609
SD3_SHIFT = 3.0  # ComfyUI's and Forge's model_sampling shift for SD3 and SD3.5

KIND_CLIP_L = "clip_l"
KIND_CLIP_G = "clip_g"
KIND_T5 = "t5xxl"
REQUIRED = (KIND_VAE, KIND_CLIP_L, KIND_CLIP_G)
PART_NAMES = {KIND_VAE: "VAE", KIND_CLIP_L: "CLIP-L text encoder", KIND_CLIP_G: "CLIP-G text encoder",
              KIND_T5: "T5-XXL text encoder"}
CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280


def is_sd3_file(path: Path) -> bool:
    """An SD3/SD3.5 MMDiT in a safetensors or GGUF file, told from the header alone."""
    if path.suffix.lower() not in (".safetensors", ".sft", ".gguf"):
        return False
    try:
        return sd3_keys.is_sd3(checkpoint_shapes(path))
    except (OSError, ValueError, UnusableModelFile):
        return False


# ---------------------------------------------------------------------------
# Module files: what each one is
# ---------------------------------------------------------------------------


def sd3_module_kind(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Flux's kinds (VAE, T5, CLIP), with CLIP split into L and G: by width for the released
    encoders (768 / 1280), else by the file name ("clip_g" / "clip_l" in it)."""
    kind = module_kind(shapes)
    if kind != KIND_CLIP_L:
        return kind
    prefix = strip_to(shapes, _CLIP_MARKER) or ""
    width = shapes[prefix + _CLIP_MARKER][1]
    if width == CLIP_G_WIDTH:
        return KIND_CLIP_G
    if width == CLIP_L_WIDTH:
        return KIND_CLIP_L
    name = path.name.lower()
    if "clip_g" in name or "clip-g" in name:
        return KIND_CLIP_G
    return KIND_CLIP_L if ("clip_l" in name or "clip-l" in name) else None


def classify(paths: Sequence[Path]) -> dict[str, Path]:
    """kind -> the first file of that kind among `paths` (unreadable or foreign files skipped)."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.suffix.lower() not in (".safetensors", ".sft"):
            continue
        try:
            kind = sd3_module_kind(path, checkpoint_shapes(path))
        except (OSError, ValueError, UnusableModelFile) as err:
            log.warning("Skipping module file %s: %s", path, err)
            continue
        if kind is not None and kind not in found:
            found[kind] = path
    return found


def packed_parts(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """kind -> prefix of the parts the single file carries besides the MMDiT."""
    layout = sd3_keys.sd3_layout(shapes)
    parts = dict(layout.text_prefixes)
    if layout.vae_prefix is not None:
        parts[KIND_VAE] = layout.vae_prefix
    return parts


def sd3_modules(path: Path, named: Sequence[Path], paths: ModelPaths) -> dict[str, Path]:
    """kind -> module file for the parts an SD3 file lacks (flow_parts.chosen_modules)."""

    def absent() -> list[str]:
        has = packed_parts(checkpoint_shapes(path))
        return [kind for kind in (*REQUIRED, KIND_T5) if kind not in has]

    return chosen_modules(path, named, paths, classify, absent, "an SD3 VAE, CLIP-L, CLIP-G or T5-XXL")


# ---------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------


@dataclass
class SD3Components:
    transformer: Component
    vae: Component
    clip_l: Component
    clip_g: Component
    t5: Component | None
    config: dict[str, Any]
    sources: dict[str, str]  # part -> file it came from


def transformer_component(
    path: Path, state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[Component, dict[str, Any]]:
    from diffusers import SD3Transformer2DModel

    ours = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    ours = {key: value for key, value in ours.items() if sd3_keys.is_transformer_key(key)}
    shapes = {key: tuple(value.shape) for key, value in ours.items()}
    config = _inferred(path, "SD3 transformer", lambda: sd3_keys.transformer_config(shapes))
    try:
        converted = sd3_keys.mmdit_to_diffusers(ours, depth=int(config["num_layers"]))
    except sd3_keys.UnmappedKey as err:
        raise UnusableModelFile(path, f"unknown SD3 transformer tensor {err.args[0]!r}") from err
    with torch.device("meta"):
        # diffusers' models are torch Modules; its type hints do not say so to mypy
        module = cast(torch.nn.Module, SD3Transformer2DModel(**config))
    check_state(path, converted, expected_shapes(module), "SD3 transformer")
    return Component(module, converted), config


def projected_clip_component(path: Path, state: Mapping[str, torch.Tensor], prefix: str, kind: str) -> Component:
    """CLIP-L or CLIP-G with its text projection (transformers names under `prefix`)."""
    from webui_api.engine.loading import infer
    from webui_api.engine.loading.architectures import load_config

    ours = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    ours.pop("text_model.embeddings.position_ids", None)
    shapes = {key: tuple(value.shape) for key, value in ours.items()}
    base = load_config("text-clip-l" if kind == KIND_CLIP_L else "text-openclip-g")

    def config() -> dict[str, Any]:
        sizes = infer.clip_text_config(shapes, base, "")
        sizes["projection_dim"] = shapes["text_projection.weight"][0]
        return sizes

    module = empty_text_encoder(_inferred(path, PART_NAMES[kind], config), with_projection=True)
    return Component(module, gather(path, ours, expected_shapes(module), lambda key: key, PART_NAMES[kind]))


def _markers(kind: str) -> str:
    return {KIND_VAE: "decoder.conv_in.weight", KIND_T5: "encoder.block.0.layer.0.SelfAttention.q.weight"}.get(
        kind, _CLIP_MARKER
    )


def _build(kind: str, path: Path, state: Mapping[str, torch.Tensor], prefix: str) -> Component:
    if kind == KIND_VAE:
        component = vae_component(path, state, prefix)
        vae: Any = component.module  # diffusers' AutoencoderKL (its config holds the latent scale)
        vae.register_to_config(scaling_factor=SD3_VAE_SCALE, shift_factor=SD3_VAE_SHIFT)
        return component
    if kind == KIND_T5:
        return t5_component(path, state, prefix)
    return projected_clip_component(path, state, prefix, kind)


def prepare_sd3(
    path: Path, state: Mapping[str, torch.Tensor], modules: Mapping[str, Path], allow_unsafe_pickle: bool = False
) -> SD3Components:
    """Every SD3 part from the checkpoint, else from the module file of its kind (named modules win)."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    layout = sd3_keys.sd3_layout(shapes)
    transformer, config = transformer_component(path, state, layout.transformer_prefix)
    packed = {kind: prefix for kind, prefix in packed_parts(shapes).items() if kind not in modules}
    missing = [kind for kind in REQUIRED if kind not in packed and kind not in modules]
    if missing:
        raise missing_parts_error(path, "SD3", [PART_NAMES[kind] for kind in missing])
    markers = {kind: _markers(kind) for kind in (*REQUIRED, KIND_T5)}
    parts, sources = build_parts(path, state, packed, modules, (*REQUIRED, KIND_T5), _build, markers,
                                 allow_unsafe_pickle)
    return SD3Components(
        transformer, parts[KIND_VAE], parts[KIND_CLIP_L], parts[KIND_CLIP_G], parts.get(KIND_T5), config, sources
    )


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_sd3(
    info: CheckpointInfo,
    options: LoadOptions,
    paths: ModelPaths,
    named: Sequence[Path],
    before_build: Callable[[], None] = lambda: None,
) -> LoadedModel:
    """The engine's entry: modules chosen per job (or found), the T5 tokenizer only when T5 is used."""
    path = Path(info.filename)
    modules = sd3_modules(path, named, paths)
    started = time.perf_counter()
    state, packed = read_transformer_checkpoint(
        path, options.allow_unsafe_pickle, lambda shapes: sd3_keys.sd3_layout(shapes).transformer_prefix,
        sd3_keys.is_transformer_key,
    )
    parts = prepare_sd3(path, state, modules, options.allow_unsafe_pickle)
    del state
    t5_tokenizer = load_t5_tokenizer(paths) if parts.t5 is not None else None
    before_build()
    model = assemble_sd3(info, parts, options, t5_tokenizer, lambda module: keep_gguf_layers(path, module, packed))
    log.info("Loaded %s as %s in %.1f s", info.title, model.architecture, time.perf_counter() - started)
    return model


def keep_gguf_layers(path: Path, transformer: torch.nn.Module, packed: Mapping[str, PackedWeight]) -> None:
    """A GGUF file's packed matrices (MMDiT names) become the transformer's Linear weights."""
    if not packed:
        return
    depth = int(cast(Any, transformer.config).num_layers)
    count = keep_gguf_quantized(path, transformer, packed, lambda state: sd3_keys.mmdit_to_diffusers(state, depth))
    log.info("%s: %d transformer layers stay GGUF-quantized (decoded per call)", path.name, count)


def assemble_sd3(
    info: CheckpointInfo, parts: SD3Components, options: LoadOptions, t5_tokenizer: Any,
    before_place: Callable[[torch.nn.Module], None] = lambda module: None,
) -> LoadedModel:
    """Fill and place every part; `before_place` sees the filled transformer while it is on the CPU."""
    def place(component: Component, dtype: torch.dtype) -> Any:
        return place_module(fill_component(component), options.device, dtype)

    filled = fill_component(parts.transformer)
    before_place(filled)
    transformer = place_module(filled, options.device, options.dtype)
    vae = place(parts.vae, options.vae_dtype)
    return LoadedModel(
        info=info,
        unet=transformer,
        vae=vae,
        text_encoder=place(parts.clip_l, options.dtype),
        tokenizer=load_clip_tokenizer(),
        text_encoder_2=place(parts.clip_g, options.dtype),
        tokenizer_2=load_openclip_tokenizer(),
        text_encoder_3=None if parts.t5 is None else place(parts.t5, options.dtype),
        tokenizer_3=t5_tokenizer,
        alphas_cumprod=torch.zeros(0),
        device=options.device,
        dtype=options.dtype,
        latent_channels=int(parts.config["in_channels"]),
        vae_scale_factor=float(vae.config.scaling_factor),
        vae_shift_factor=float(vae.config.shift_factor or 0.0),
        family="sd3",
        prediction_type="flow",
        unet_in_channels=int(parts.config["in_channels"]),
        architecture=sd3_keys.variant(parts.config),
        baked_vae=vae,
        flow_shift=SD3_SHIFT,
        module_files=module_files(parts.sources, info.filename),
    )
