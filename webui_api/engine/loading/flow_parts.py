"""What Flux's and SD3's loaders share: single files whose parts (VAE, text encoders) may be
packed in the checkpoint or come from module files, and diffusers pipeline folders.

Each family keeps its own knowledge (kinds, key layouts, configs); the steps here are the same
for both: read shapes or tensors from safetensors/GGUF, pick module files for the parts a file
lacks, build each part from where it is, name the missing ones in one 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from webui_api.engine.loading.builder import Component, check_state, expected_shapes
from webui_api.engine.loading.diffusers_folder import _component_state
from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.files import UnusableModelFile, read_safetensors_header, read_state_dict
from webui_api.engine.loading.forge_modules import scan_modules
from webui_api.engine.loading.gguf_files import gguf_shapes, read_gguf_split, read_gguf_state
from webui_api.engine.quantized_linear import PackedWeight, keep_quantized

KeyMap = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]  # a family's rename-and-split
PartBuilder = Callable[[str, Path, Mapping[str, torch.Tensor], str], Component]  # kind, file, state, prefix


def strip_to(shapes: Mapping[str, tuple[int, ...]], marker: str) -> str | None:
    """The prefix under which `marker` occurs ("" at the top level), or None."""
    for key in shapes:
        if key.endswith(marker):
            return key[: -len(marker)]
    return None


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (no tensor is read)."""
    header = read_safetensors_header(path)
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors or GGUF checkpoint without reading the tensors."""
    if path.suffix.lower() == ".gguf":
        return gguf_shapes(path)
    return header_shapes(path)


def read_checkpoint_state(path: Path, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".gguf":
        return read_gguf_state(path)
    return read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)


def read_transformer_checkpoint(
    path: Path, allow_unsafe_pickle: bool, prefix_of: Callable[[Mapping[str, tuple[int, ...]]], str],
    is_transformer_key: Callable[[str], bool],
) -> tuple[dict[str, torch.Tensor], dict[str, PackedWeight]]:
    """A checkpoint's tensors and, for GGUF files, the transformer matrices to keep packed (by
    their names without prefix); their entries in the state are shape-only placeholders that
    `keep_gguf_quantized` must replace before the model runs."""
    if path.suffix.lower() != ".gguf":
        return read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle), {}
    prefix = prefix_of(gguf_shapes(path))

    def in_transformer(key: str) -> bool:
        return key.startswith(prefix) and is_transformer_key(key[len(prefix) :])

    state, packed = read_gguf_split(path, in_transformer)
    return state, {key[len(prefix) :]: entry for key, entry in packed.items()}


def keep_gguf_quantized(
    path: Path, transformer: torch.nn.Module, packed: Mapping[str, PackedWeight], to_diffusers: KeyMap
) -> int:
    """The transformer's Linear layers take the GGUF file's packed rows in place of their
    placeholder weights (decoded per call). The family's key map renames and splits the packed
    rows exactly as it does float tensors (fused projections split along rows, which are whole
    blocks). Every packed tensor must land in a layer: a placeholder left behind would be used
    as a weight, so that is an unusable file. Returns how many layers stay quantized."""
    targets: dict[str, list[str]] = {}
    mapped: dict[str, PackedWeight] = {}
    for key, entry in packed.items():
        pieces = to_diffusers({key: entry.data})
        targets[key] = list(pieces)
        mapped.update({name: PackedWeight(rows.contiguous(), entry.quant_type) for name, rows in pieces.items()})
    used = keep_quantized(transformer, mapped)
    unplaced = [key for key, names in targets.items() if not set(names) <= used]
    if unplaced:
        raise UnusableModelFile(path, f"quantized tensors {unplaced[:3]} do not fit a Linear layer of the model")
    return len(used)


def chosen_modules(
    path: Path, named: Sequence[Path], paths: ModelPaths, classify: Callable[[Sequence[Path]], dict[str, Path]],
    absent: Callable[[], Sequence[str]], what: str,
) -> dict[str, Path]:
    """kind -> module file: the files a job named, then (for the `absent` parts neither they nor
    the checkpoint have) the first file of each kind in models/VAE and models/text_encoder.
    `what` names the kinds accepted, for the error on a named file of none of them."""
    explicit = classify(named)
    unknown = [p.name for p in named if p not in explicit.values()]
    if unknown:
        raise UnusableModelFile(path, f"modules {unknown} are not {what} file")
    needed = [kind for kind in absent() if kind not in explicit]
    if not needed:
        return explicit
    found = classify([Path(m.filename) for m in scan_modules(paths)])
    return {**{kind: found[kind] for kind in needed if kind in found}, **explicit}


def missing_parts_error(path: Path, family: str, names: Sequence[str]) -> UnusableModelFile:
    return UnusableModelFile(
        path,
        f"this {family} checkpoint lacks the {', '.join(names)}; put the file(s) in models/VAE or models/text_encoder "
        "and select them with override_settings.forge_additional_modules (or the forge_additional_modules option)",
    )


def build_parts(
    path: Path, state: Mapping[str, torch.Tensor], packed: Mapping[str, str], modules: Mapping[str, Path],
    kinds: Sequence[str], build: PartBuilder, markers: Mapping[str, str], allow_unsafe_pickle: bool,
) -> tuple[dict[str, Component], dict[str, str]]:
    """Each of `kinds` from the checkpoint (`packed`: kind -> prefix) else from its module file;
    a kind in neither is left out (the caller has refused missing required parts already).
    Returns the parts and, per kind, the file it came from."""
    parts: dict[str, Component] = {}
    sources: dict[str, str] = {}
    for kind in kinds:
        if kind in packed:
            parts[kind], sources[kind] = build(kind, path, state, packed[kind]), str(path)
        elif kind in modules:
            file = modules[kind]
            module_state = read_checkpoint_state(file, allow_unsafe_pickle)
            found = strip_to({k: tuple(v.shape) for k, v in module_state.items()}, markers[kind])
            parts[kind], sources[kind] = build(kind, file, module_state, found or ""), str(file)
    return parts, sources


def module_files(sources: Mapping[str, str], checkpoint: str) -> tuple[str, ...]:
    """The files other than the checkpoint that parts came from (Forge's "Module N" infotext)."""
    return tuple(sorted({source for source in sources.values() if source != checkpoint}))


def folder_component(
    root: Path, slot: str, module: torch.nn.Module, weight_stem: str, allow_unsafe_pickle: bool, t5_slot: str
) -> Component:
    """A pipeline folder's component: its weights (only the keys `module` has) checked against the
    empty module built from its config.json; T5's tied embedding filled from `shared.weight`."""
    wanted = expected_shapes(module)
    state = {k: v for k, v in _component_state(root / slot, weight_stem, allow_unsafe_pickle).items() if k in wanted}
    if slot == t5_slot and "encoder.embed_tokens.weight" in wanted and "shared.weight" in state:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    check_state(root, state, wanted, slot)
    return Component(module, state)
