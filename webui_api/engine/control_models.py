"""ControlNet networks from files: original-layout single files, diffusers-named single files
and diffusers folders, built as diffusers `ControlNetModel`s from bundled base configs.

Original layout (lllyasviel's cldm `ControlNet`, what models/ControlNet usually holds):
the UNet encoder half under the UNet's own names (`input_blocks`, `middle_block`,
`time_embed`, `label_emb` for SDXL), plus `input_hint_block` (the hint encoder: convs at
even positions, SiLU between them), `zero_convs.N.0` (one 1x1 conv per encoder block) and
`middle_block_out.0`. Keys may carry a `control_model.` prefix. The encoder half maps
with the project's UNet key rules; the three ControlNet parts map as:

  controlnet_cond_embedding.conv_in    <- input_hint_block.0
  controlnet_cond_embedding.blocks.k   <- input_hint_block.(2k + 2)
  controlnet_cond_embedding.conv_out   <- input_hint_block.(2n + 2)   (n blocks)
  controlnet_down_blocks.N             <- zero_convs.N.0
  controlnet_mid_block                 <- middle_block_out.0

Sizes (widths, depth, attention levels, context width, hint widths) are read from tensor
shapes; what shapes cannot tell (head counts, norm groups, SDXL's time embedding) comes
from the base config of the detected family: SDXL (label_emb present), SD2 (1024-wide
context), SD1 (768) or, for anything smaller, the tiny test family (8 groups, 8 heads).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from webui_api.controlnet.catalog import ControlNetCatalog, ControlNetFile
from webui_api.engine.loading import ldm_keys
from webui_api.engine.loading.builder import expected_shapes, fill, gather
from webui_api.engine.loading.files import UnusableModelFile, read_state_dict
from webui_api.engine.loading.infer import Shapes, key_count, key_indices

log = logging.getLogger(__name__)

ORIGINAL_PREFIX = "control_model."
DEFAULT_CACHE_SIZE = 2

BASE_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": {"attention_head_dim": 8, "norm_num_groups": 32},
    "sd2": {"norm_num_groups": 32},
    "sdxl": {
        "norm_num_groups": 32,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
    },
    "tiny": {"attention_head_dim": 8, "norm_num_groups": 8},
}
HEAD_CHANNELS = 64  # SD2 / SDXL attention heads are 64 wide


@dataclass
class LoadedControlNet:
    """A ControlNet ready to run: the diffusers module, its entry and family."""

    entry: ControlNetFile
    module: Any  # diffusers ControlNetModel
    family: str  # "sd1" | "sd2" | "sdxl" | "tiny"

    @property
    def residual_count(self) -> int:
        """Down-block residuals plus the middle one (13 for SD1/SD2, 10 for SDXL)."""
        return len(self.module.controlnet_down_blocks) + 1


# ---------------------------------------------------------------------------
# Key names
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlLayout:
    """What the key rules need: the UNet layout of the encoder half and the hint depth."""

    unet: ldm_keys.UNetLayout
    hint_blocks: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ControlLayout:
        hint = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
        unet = ldm_keys.UNetLayout(
            int(config["layers_per_block"]), tuple("CrossAttn" in k for k in config["down_block_types"]), ()
        )
        return cls(unet, 2 * (len(hint) - 1))


def original_key(key: str, layout: ControlLayout) -> str:
    """One diffusers ControlNetModel key -> its original-layout name (no prefix)."""
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.+)", key):
        return f"input_hint_block.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
        return f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
        return f"input_hint_block.{2 * layout.hint_blocks + 2}.{m[1]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
        return f"middle_block_out.0.{m[1]}"
    return ldm_keys.unet_key_to_ldm(key, layout.unet)[len(ldm_keys.UNET_PREFIX):]


def to_original_layout(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers-named state dict under original names (tests write files with this)."""
    layout = ControlLayout.from_config(config)
    return {original_key(key, layout): value for key, value in state.items()}


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys under `control_model.` lose the prefix; a full SD+ControlNet file keeps only
    those. Files of the "difference" kind (control weights minus SD's) are refused."""
    if "difference" in state:
        raise ValueError("difference ControlNets (weights relative to an SD checkpoint) are not supported")
    if any(key.startswith(ORIGINAL_PREFIX) for key in state):
        return {key[len(ORIGINAL_PREFIX):]: value for key, value in state.items() if key.startswith(ORIGINAL_PREFIX)}
    return dict(state)


# ---------------------------------------------------------------------------
# Config from shapes
# ---------------------------------------------------------------------------

def _need(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"tensor {key!r} is missing: not a ControlNet in the original layout")
    return shapes[key]


def detect_family(shapes: Shapes, context: int) -> str:
    if "label_emb.0.0.weight" in shapes:
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(context, "tiny")


def controlnet_config(shapes: Shapes) -> tuple[dict[str, Any], str]:
    """The ControlNetModel config of an original-layout state dict, and its family."""
    downsamples = key_indices(shapes, r"input_blocks\.(\d+)\.0\.op\.weight")
    blocks = key_count(shapes, r"input_blocks\.(\d+)\.")
    levels = len(downsamples) + 1
    per_level, remainder = divmod(blocks - 1 - len(downsamples), levels)
    if remainder or per_level < 1:
        raise ValueError(f"cannot split {blocks} input blocks into {levels} levels")
    firsts = [1 + level * (per_level + 1) for level in range(levels)]
    widths = [_need(shapes, f"input_blocks.{i}.0.out_layers.3.weight")[0] for i in firsts]
    depths = [key_count(shapes, re.escape(f"input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\.") for i in firsts]
    context = _context_width(shapes)
    family = detect_family(shapes, context)
    config = {
        **BASE_CONFIGS[family],
        "in_channels": _need(shapes, "input_blocks.0.0.weight")[1],
        "conditioning_channels": _need(shapes, "input_hint_block.0.weight")[1],
        "layers_per_block": per_level,
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "cross_attention_dim": context,
        "use_linear_projection": len(_first(shapes, ".proj_in.weight")) == 2,
        "conditioning_embedding_out_channels": hint_widths(shapes),
    }
    return _attention_sizes(config, shapes, family, widths, depths), family


def _first(shapes: Shapes, suffix: str) -> tuple[int, ...]:
    key = next((k for k in shapes if k.endswith(suffix)), None)
    if key is None:
        raise ValueError(f"no tensor ending in {suffix!r}: not a ControlNet with attention")
    return shapes[key]


def _context_width(shapes: Shapes) -> int:
    return _first(shapes, ".attn2.to_k.weight")[1]


def hint_widths(shapes: Shapes) -> list[int]:
    """conditioning_embedding_out_channels: conv_in's width, then each stride-2 conv's."""
    convs = key_indices(shapes, r"input_hint_block\.(\d+)\.weight")
    if len(convs) < 4 or len(convs) % 2:
        raise ValueError(f"input_hint_block has {len(convs)} convolutions; expected an even number >= 4")
    blocks = convs[1:-1]
    return [shapes[f"input_hint_block.{convs[0]}.weight"][0]] + [
        shapes[f"input_hint_block.{i}.weight"][0] for i in blocks[1::2]
    ]


def _attention_sizes(
    config: dict[str, Any], shapes: Shapes, family: str, widths: list[int], depths: list[int]
) -> dict[str, Any]:
    if family in ("sd2", "sdxl"):
        config["attention_head_dim"] = [max(1, w // HEAD_CHANNELS) for w in widths]
    middle = key_count(shapes, re.escape("middle_block.1.transformer_blocks.") + r"(\d+)\.")
    if any(d > 1 for d in depths) or middle > 1:
        config["transformer_layers_per_block"] = [d if d > 0 else middle for d in depths]
    if "label_emb.0.0.weight" in shapes:
        config["projection_class_embeddings_input_dim"] = shapes["label_emb.0.0.weight"][1]
    return config


# ---------------------------------------------------------------------------
# Diffusers names in a single file
# ---------------------------------------------------------------------------


def is_diffusers_named(state: Mapping[str, Any]) -> bool:
    return any(key.startswith("controlnet_cond_embedding.") for key in state)


def layout_of_diffusers_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """The two layout facts key rules need, read from diffusers names."""
    levels = key_count(state, r"down_blocks\.(\d+)\.")
    attends = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in range(levels)]
    hint = key_count(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    return {
        "layers_per_block": key_count(state, r"down_blocks\.0\.resnets\.(\d+)\."),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "conditioning_embedding_out_channels": [0] * (hint // 2 + 1),
    }


def original_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported single file's tensors under original names."""
    if is_diffusers_named(state):
        return to_original_layout(state, layout_of_diffusers_keys(state))
    return strip_prefix(state)


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def build_controlnet(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> Any:
    """A ControlNetModel with `state` (original names) assigned into it, checked key by key."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        # diffusers' models are torch Modules; its type hints do not say so to mypy
        module = cast(torch.nn.Module, ControlNetModel(**config))
    layout = ControlLayout.from_config(config)
    wanted = expected_shapes(module)
    tensors = gather(path, state, wanted, lambda key: original_key(key, layout), "ControlNet")
    return fill(module, tensors)


def load_controlnet_file(entry: ControlNetFile, allow_unsafe_pickle: bool = False) -> LoadedControlNet:
    """A single file in the original layout (or diffusers names) -> LoadedControlNet (CPU)."""
    path = Path(entry.filename)
    state = original_state(read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle))
    try:
        config, family = controlnet_config({k: tuple(v.shape) for k, v in state.items()})
    except ValueError as exc:
        raise UnusableModelFile(path, str(exc)) from exc
    return LoadedControlNet(entry, build_controlnet(config, state, path), family)


def load_controlnet_folder(entry: ControlNetFile) -> LoadedControlNet:
    """A diffusers ControlNetModel folder (config.json + weights), offline."""
    from diffusers import ControlNetModel

    module = ControlNetModel.from_pretrained(entry.filename, local_files_only=True)
    config = module.config
    family = (
        "sdxl"
        if config.addition_embed_type == "text_time"
        else {768: "sd1", 1024: "sd2"}.get(config.cross_attention_dim, "tiny")
    )
    return LoadedControlNet(entry, module.eval().requires_grad_(False), family)


def load_controlnet(entry: ControlNetFile, allow_unsafe_pickle: bool = False) -> LoadedControlNet:
    loaded = load_controlnet_folder(entry) if entry.is_folder else load_controlnet_file(entry, allow_unsafe_pickle)
    log.info("Loaded ControlNet %s (%s)", entry.title, loaded.family)
    return loaded


# ---------------------------------------------------------------------------
# The engine's library: catalog + a small LRU of loaded networks
# ---------------------------------------------------------------------------


class ControlNetLibrary:
    """Scanned ControlNet files, the most recently used loaded networks (on the engine's worker
    thread only; the catalog is also read by HTTP handlers, see ControlNetCatalog), and the
    server's one AnnotatorCache, shared by generation and /controlnet/detect (thread-safe)."""

    def __init__(self, dirs: tuple[Path, ...] = (), limit: int = DEFAULT_CACHE_SIZE, allow_unsafe_pickle: bool = False,
                 loader: Callable[[ControlNetFile, bool], LoadedControlNet] = load_controlnet,
                 full_precision: bool = False) -> None:
        from webui_api.controlnet.preprocessors import AnnotatorCache

        self.catalog = ControlNetCatalog(dirs)
        self.limit = max(1, limit)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.full_precision = full_precision  # --no-half-controlnet: networks stay float32
        self.annotators = AnnotatorCache()
        self._loader = loader
        self._loaded: OrderedDict[str, LoadedControlNet] = OrderedDict()

    def cached(self) -> list[str]:
        return [loaded.entry.title for loaded in self._loaded.values()]

    def set_limit(self, limit: Any) -> None:
        """The control_net_model_cache_size option (per job); invalid or < 1 keeps one network."""
        try:
            self.limit = max(1, int(limit))
        except (TypeError, ValueError):
            raise ValueError(f"control_net_model_cache_size must be an integer, received {limit!r}") from None
        self._evict()

    def clear(self) -> None:
        """Drop every loaded ControlNet and annotator network (Engine.unload / free_memory)."""
        self._loaded.clear()
        self.annotators.clear()

    def get(self, name: str, device: torch.device, dtype: torch.dtype) -> LoadedControlNet:
        """The network a unit names, loaded (or from the LRU) and placed on `device`."""
        entry = self.catalog.find(name)
        loaded = self._loaded.get(entry.filename)
        if loaded is None:
            loaded = self._loader(entry, self.allow_unsafe_pickle)
            self._loaded[entry.filename] = loaded
        self._loaded.move_to_end(entry.filename)
        self._evict()
        _place(loaded.module, device, torch.float32 if self.full_precision else dtype)
        return loaded

    def _evict(self) -> None:
        while len(self._loaded) > self.limit:
            self._loaded.popitem(last=False)


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> None:
    from webui_api.engine.loading.checkpoint import place_module

    first = next(module.parameters())
    if first.device != device or first.dtype != dtype:
        place_module(module, device, dtype)
