"""Original-layout state dict -> diffusers / transformers modules, with no download.

The networks are constructed on the `meta` device from the bundled configs (no memory, no
random init), then the checkpoint's tensors are assigned into them. Before anything is
assigned, every component's converted keys and shapes are checked against the module's own,
so a wrong or foreign file fails with a message naming what is missing or mis-shaped, and
it fails before the caller has given up the model it was serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.loading import infer, ldm_keys
from webui_api.engine.loading.architectures import Architecture, TextEncoderSpec, load_config
from webui_api.engine.loading.files import UnusableModelFile
from webui_api.engine.loading.infer import Shapes

log = logging.getLogger(__name__)


@dataclass
class Component:
    """One network: the empty (meta) module and the checked, diffusers-keyed tensors for it."""

    module: torch.nn.Module
    state: dict[str, torch.Tensor]


@dataclass
class PreparedCheckpoint:
    """A checkpoint split into its networks, every key and shape already checked."""

    unet: Component
    vae: Component
    text: dict[str, Component]  # slot ("text_encoder" / "text_encoder_2") -> component


# ---------------------------------------------------------------------------
# Empty modules from bundled configs
# ---------------------------------------------------------------------------


def empty_unet(config: Mapping[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def empty_vae(config: Mapping[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(**config)


def empty_text_encoder(config: Mapping[str, Any], with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    kind = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        return kind(CLIPTextConfig(**config))


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every persistent tensor the module wants, with its shape (read from the meta module)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


# ---------------------------------------------------------------------------
# Key conversion and checks
# ---------------------------------------------------------------------------


def _fit_shape(path: Path, source_key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor in the target's shape. Only trailing singleton dimensions may differ (1x1
    convolutions stored where the module has a linear layer, or the reverse)."""
    if tuple(tensor.shape) == shape:
        return tensor
    if _strip_ones(tuple(tensor.shape)) == _strip_ones(shape):
        return tensor.reshape(shape)
    raise UnusableModelFile(
        path, f"tensor {source_key!r} has shape {tuple(tensor.shape)}, the architecture expects {shape}"
    )


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def gather(
    path: Path,
    state: Mapping[str, torch.Tensor],
    wanted: Mapping[str, tuple[int, ...]],
    source_key: Callable[[str], str],
    component: str,
) -> dict[str, torch.Tensor]:
    """Pick every wanted (diffusers) key from the checkpoint under its original name."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, shape in wanted.items():
        name = source_key(key)
        if name not in state:
            missing.append(name)
            continue
        out[key] = _fit_shape(path, name, state[name], shape)
    if missing:
        raise UnusableModelFile(
            path,
            f"the {component} is incomplete: {len(missing)} of {len(wanted)} tensors are missing, e.g. {missing[:3]}",
        )
    return out


def check_state(
    path: Path, state: Mapping[str, torch.Tensor], wanted: Mapping[str, tuple[int, ...]], component: str
) -> None:
    """Converted keys must be exactly the module's, with the module's shapes."""
    missing = sorted(set(wanted) - set(state))
    extra = sorted(set(state) - set(wanted))
    if missing or extra:
        reason = f"the {component} does not match its architecture: missing {missing[:3]}, unexpected {extra[:3]}"
        raise UnusableModelFile(path, reason)
    for key, shape in wanted.items():
        if tuple(state[key].shape) != shape:
            reason = f"{component} tensor {key!r} has shape {tuple(state[key].shape)}, expected {shape}"
            raise UnusableModelFile(path, reason)


def _inferred(path: Path, component: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A config read from the tensor shapes; a file too malformed for that is unusable."""
    try:
        return make()
    except (KeyError, ValueError, StopIteration) as err:
        detail = f"missing {err.args[0]!r}" if isinstance(err, KeyError) else str(err) or type(err).__name__
        raise UnusableModelFile(path, f"cannot read the {component}'s dimensions from the file ({detail})") from err


def unet_component(path: Path, state: Mapping[str, torch.Tensor], shapes: Shapes, arch: Architecture) -> Component:
    base = load_config(arch.unet_config)
    config = _inferred(path, "UNet", lambda: infer.unet_config(shapes, base, arch.head_channels))
    layout = ldm_keys.UNetLayout.from_config(config)
    module = empty_unet(config)
    tensors = gather(path, state, expected_shapes(module), lambda key: ldm_keys.unet_key_to_ldm(key, layout), "UNet")
    return Component(module, tensors)


def vae_component(
    path: Path, state: Mapping[str, torch.Tensor], shapes: Shapes, config_name: str, prefix: str
) -> Component:
    """The VAE; `prefix` is "first_stage_model." inside a checkpoint, "" in a VAE file."""
    base = load_config(config_name)
    config = _inferred(path, "VAE", lambda: infer.vae_config(shapes, base, prefix))
    levels = len(config["block_out_channels"])
    module = empty_vae(config)

    def source_key(key: str) -> str:
        return prefix + ldm_keys.vae_key_to_ldm(key, levels)[len(ldm_keys.VAE_PREFIX) :]

    return Component(module, gather(path, state, expected_shapes(module), source_key, "VAE"))


def text_component(path: Path, state: Mapping[str, torch.Tensor], shapes: Shapes, spec: TextEncoderSpec) -> Component:
    base = load_config(spec.config)
    if spec.layout == "clip":
        ours = {key: value for key, value in state.items() if key.startswith(spec.prefix)}
        renamed = {ldm_keys.legacy_clip_key(key, spec.prefix): value for key, value in ours.items()}
        renamed_shapes = {key: tuple(value.shape) for key, value in renamed.items()}
        config = _inferred(path, "text encoder", lambda: infer.clip_text_config(renamed_shapes, base, spec.prefix))
        module = empty_text_encoder(config, spec.with_projection)
        source = lambda key: ldm_keys.clip_key_to_ldm(key, spec.prefix)  # noqa: E731
        return Component(module, gather(path, renamed, expected_shapes(module), source, "text encoder"))
    read_sizes = lambda: infer.openclip_text_config(shapes, base, spec.prefix, spec.drop_last_layers)  # noqa: E731
    config = _inferred(path, "text encoder", read_sizes)
    module = empty_text_encoder(config, spec.with_projection)
    wanted = expected_shapes(module)
    canonical = {ldm_keys.canonical_text_key(key): shape for key, shape in wanted.items()}
    converted = _openclip_state(path, state, spec, int(config["num_hidden_layers"]), canonical)
    return Component(module, {key: converted[ldm_keys.canonical_text_key(key)] for key in wanted})


def _openclip_state(
    path: Path,
    state: Mapping[str, torch.Tensor],
    spec: TextEncoderSpec,
    layers: int,
    wanted: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    try:
        converted = ldm_keys.openclip_to_hf(state, spec.prefix, layers, spec.with_projection)
    except KeyError as err:
        raise UnusableModelFile(path, f"the OpenCLIP text encoder is incomplete: missing {err.args[0]!r}") from err
    check_state(path, converted, wanted, "text encoder")
    return converted


def prepare_checkpoint(path: Path, state: Mapping[str, torch.Tensor], arch: Architecture) -> PreparedCheckpoint:
    """Convert and check every component before anything is filled."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    return PreparedCheckpoint(
        unet=unet_component(path, state, shapes, arch),
        vae=vae_component(path, state, shapes, arch.vae_config, ldm_keys.VAE_PREFIX),
        text={spec.slot: text_component(path, state, shapes, spec) for spec in arch.text_encoders},
    )


# ---------------------------------------------------------------------------
# Filling modules
# ---------------------------------------------------------------------------


def fill(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Assign the (already checked) tensors into a meta module, then rebuild the buffers a
    state dict does not carry (CLIP's position ids) and freeze it for inference."""
    module.load_state_dict(dict(state), strict=True, assign=True)
    _restore_position_ids(module)
    leftovers = [name for name, tensor in _all_tensors(module) if tensor.is_meta]
    if leftovers:
        raise RuntimeError(f"{type(module).__name__} still has tensors without data after loading: {leftovers[:3]}")
    return module.eval().requires_grad_(False)


def _all_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


def _restore_position_ids(module: torch.nn.Module) -> None:
    """transformers' CLIP keeps `position_ids` as a non-persistent buffer (0..n-1)."""
    for submodule in module.modules():
        ids = getattr(submodule, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            fresh = torch.arange(ids.shape[-1], dtype=torch.long).expand(ids.shape).clone()
            submodule.register_buffer("position_ids", fresh, persistent=False)


def fill_component(component: Component) -> torch.nn.Module:
    """Move the tensors into the module; the component gives them up (no second reference)."""
    module = fill(component.module, component.state)
    component.state = {}
    return module


def build_vae(path: Path, state: Mapping[str, torch.Tensor], config_name: str) -> Any:
    """A VAE from a standalone VAE file: original layout (encoder.down.0...) or diffusers
    layout (encoder.down_blocks.0...), with or without a "first_stage_model." prefix."""
    usable = {key: value for key, value in state.items() if not key.startswith(("loss", "model_ema"))}
    if ldm_keys.is_diffusers_vae(usable):
        usable = ldm_keys.diffusers_vae_to_ldm(usable)
    prefix = ldm_keys.VAE_PREFIX if any(k.startswith(ldm_keys.VAE_PREFIX) for k in usable) else ""
    shapes = {key: tuple(value.shape) for key, value in usable.items()}
    return fill_component(vae_component(path, usable, shapes, config_name, prefix))


@torch.no_grad()
def looks_like_v_prediction(unet: Any) -> bool:
    """A1111's SD2 probe: at t=999 a v-model's output sits far below its input (eps-models
    give about noise). Only meaningful for trained SD2 weights; a `.yaml` beside the file
    with `parameterization: "v"` takes precedence."""
    parameter = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=parameter.device, dtype=parameter.dtype)
    width = int(unet.config.cross_attention_dim)
    context = torch.full((1, 2, width), 0.5, device=parameter.device, dtype=parameter.dtype)
    timestep = torch.tensor([999], device=parameter.device)
    out = unet(x, timestep, encoder_hidden_states=context, return_dict=False)[0]
    return float((out.float() - x.float()).mean()) < -1
