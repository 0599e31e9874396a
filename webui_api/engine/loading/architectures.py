"""The model architectures we can build, and how a checkpoint tells which one it is.

Each `Architecture` names its bundled config files (configs/*.json, taken from the original
model configs as data) and where each text encoder lives in an original-layout checkpoint.
Detection follows A1111's `guess_model_config_from_state_dict`: marker keys and the UNet's
input channels, with a `.yaml` next to the checkpoint able to set the prediction type (SD2
768-v models are told apart from 512 eps ones by that file or, failing it, by A1111's probe
of the loaded UNet, see `builder.looks_like_v_prediction`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from webui_api.engine.loading.files import UnusableModelFile

log = logging.getLogger(__name__)

SD_LINEAR_START = 0.00085
SD_LINEAR_END = 0.012

SDXL_MARKER = "conditioner.embedders.1.model.ln_final.weight"
REFINER_MARKER = "conditioner.embedders.0.model.ln_final.weight"
SD2_MARKER = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SD3_MARKER = "model.diffusion_model.x_embedder.proj.weight"


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of an architecture: its config, its key prefix in the checkpoint,
    its storage format ("clip": transformers names; "openclip": fused OpenCLIP names) and
    the LoadedModel slot it fills."""

    config: str
    prefix: str
    layout: str  # "clip" | "openclip"
    slot: str  # "text_encoder" | "text_encoder_2"
    with_projection: bool = False
    drop_last_layers: int = 0  # SD2 conditions on OpenCLIP-H's penultimate layer: its last is not built


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build one model family from a single-file checkpoint."""

    name: str  # e.g. "sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-refiner"
    family: str  # LoadedModel.family: "sd1" | "sd2" | "sdxl" | "sdxl-refiner"
    unet_config: str
    vae_config: str
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction_type: str = "epsilon"
    in_channels: int = 4
    head_channels: int | None = 64  # attention heads are 64 wide; None: the config's fixed head count (SD1: 8)


_CLIP_L_SD1 = TextEncoderSpec("text-clip-l", "cond_stage_model.transformer.", "clip", "text_encoder")
_OPENCLIP_H_SD2 = TextEncoderSpec(
    "text-openclip-h", "cond_stage_model.model.", "openclip", "text_encoder", drop_last_layers=1
)
_CLIP_L_SDXL = TextEncoderSpec("text-clip-l", "conditioner.embedders.0.transformer.", "clip", "text_encoder")
_OPENCLIP_G_SDXL = TextEncoderSpec(
    "text-openclip-g", "conditioner.embedders.1.model.", "openclip", "text_encoder_2", with_projection=True
)
_OPENCLIP_G_REFINER = TextEncoderSpec(
    "text-openclip-g", "conditioner.embedders.0.model.", "openclip", "text_encoder_2", with_projection=True
)

SD1 = Architecture("sd1", "sd1", "unet-sd1", "vae-sd", (_CLIP_L_SD1,), head_channels=None)
SD2 = Architecture("sd2", "sd2", "unet-sd2", "vae-sd", (_OPENCLIP_H_SD2,))
SDXL = Architecture("sdxl", "sdxl", "unet-sdxl", "vae-sdxl", (_CLIP_L_SDXL, _OPENCLIP_G_SDXL))
SDXL_REFINER = Architecture("sdxl-refiner", "sdxl-refiner", "unet-sdxl-refiner", "vae-sdxl", (_OPENCLIP_G_REFINER,))

ARCHITECTURES = {a.name: a for a in (SD1, SD2, SDXL, SDXL_REFINER)}


def inpainting(base: Architecture) -> Architecture:
    """The 9-channel variant (latent + mask + masked-image latent) of an architecture."""
    return replace(base, name=f"{base.name}-inpaint", in_channels=9)


def instruct_pix2pix(base: Architecture) -> Architecture:
    """The 8-channel InstructPix2Pix variant (latent + the init image's latent), A1111's "edit" models."""
    return replace(base, name=f"{base.name}-instruct-pix2pix", in_channels=8)


def v_prediction(base: Architecture) -> Architecture:
    return replace(base, name=f"{base.name}-v", prediction_type="v_prediction")


def load_config(name: str) -> dict[str, Any]:
    """A bundled architecture config, without its "_comment" (a fresh dict per call)."""
    config = json.loads((resources.files(__package__) / "configs" / f"{name}.json").read_text(encoding="utf8"))
    config.pop("_comment", None)
    return config


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """What detection decided and whether the v-prediction question is still open
    (SD2 eps vs v cannot be told from the key names)."""

    architecture: Architecture
    needs_v_probe: bool = False
    zero_terminal_snr: bool = False  # the file says it was trained with zero terminal SNR (`ztsnr` marker)


V_PRED_MARKER = "v_pred"  # NoobAI-style SDXL files: empty marker tensors at the top level
ZTSNR_MARKER = "ztsnr"


def state_dict_hints(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """What marker keys in the file say (Forge/ComfyUI read them; A1111 1.10 does not): `v_pred`
    means v-prediction, `ztsnr` a zero-terminal-SNR schedule. A `.yaml` beside the file wins."""
    hints: dict[str, Any] = {}
    if V_PRED_MARKER in shapes:
        hints["parameterization"] = "v"
    if ZTSNR_MARKER in shapes:
        hints["zero_terminal_snr"] = True
    return hints


def detect_architecture(path: Path, shapes: Mapping[str, tuple[int, ...]], yaml_hints: Mapping[str, Any]) -> Detection:
    """The architecture of an original-layout checkpoint from its keys and tensor shapes.

    `yaml_hints` comes from `read_yaml_hints` (the config file beside the checkpoint).
    Raises UnusableModelFile for anything that is not a SD1/SD2/SDXL model we can build.
    """
    _refuse_unsupported(path, shapes)
    channels = shapes[UNET_INPUT_KEY][1]
    base = _base_architecture(path, shapes, channels)
    if channels == 9:
        base = inpainting(base)
    elif channels == 8:
        base = instruct_pix2pix(base)
    elif channels != 4:
        raise UnusableModelFile(
            path,
            f"UNet takes {channels} input channels; supported are 4 (txt2img), 8 (instruct-pix2pix) and 9 (inpainting)",
        )
    hints = {**state_dict_hints(shapes), **yaml_hints}
    return replace(_apply_prediction_hint(base, hints), zero_terminal_snr=bool(hints.get("zero_terminal_snr")))


def _refuse_unsupported(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    if SD3_MARKER in shapes:
        raise UnusableModelFile(
            path, "this is a Stable Diffusion 3 (MMDiT) checkpoint, which loads from complete .safetensors files only"
        )
    if UNET_INPUT_KEY not in shapes:
        example = next(iter(shapes), "<none>")
        raise UnusableModelFile(
            path,
            f"unknown architecture: no '{UNET_INPUT_KEY}' key (the file has {len(shapes)} tensors, e.g. {example!r}); "
            "expected a Stable Diffusion 1.x, 2.x or SDXL checkpoint in the original single-file layout",
        )


def _base_architecture(path: Path, shapes: Mapping[str, tuple[int, ...]], channels: int) -> Architecture:
    if SDXL_MARKER in shapes:
        return SDXL
    if REFINER_MARKER in shapes:
        return SDXL_REFINER
    if SD2_MARKER in shapes:
        return SD2
    if any(key.startswith("cond_stage_model.transformer.") for key in shapes):
        return SD1
    raise UnusableModelFile(
        path,
        "unknown architecture: a UNet but no text encoder this server recognises (SD1 CLIP-L, SD2 OpenCLIP-H, SDXL)",
    )


def _apply_prediction_hint(base: Architecture, hints: Mapping[str, Any]) -> Detection:
    parameterization = hints.get("parameterization")
    if parameterization == "v":
        return Detection(v_prediction(base))
    if parameterization in ("eps", "epsilon"):
        return Detection(base)
    return Detection(base, needs_v_probe=base.family == "sd2" and base.in_channels == 4)


def read_yaml_hints(config_path: Path | None) -> dict[str, Any]:
    """The one fact we take from an A1111/LDM/SGM `.yaml` beside a checkpoint: its
    parameterization ("v" for v-prediction models). Everything else in such a file describes
    the same architectures we carry as bundled configs, and the keys tell us which one."""
    if config_path is None or not config_path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        log.warning("Ignoring unreadable model config %s: %s", config_path, err)
        return {}
    params = _dig(data, "model", "params")
    scaling = _dig(params, "denoiser_config", "params", "scaling_config")
    if "VScaling" in str(scaling.get("target", "")):  # SGM (SDXL-style) v-prediction configs
        return {"parameterization": "v"}
    value = params.get("parameterization")
    return {"parameterization": value} if value is not None else {}


def _dig(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}
