"""Textual-inversion embeddings: the files in the embeddings folder, and the lookup prompt
encoding uses to put their vectors in place of the words that name them.

Formats (A1111's `create_embedding_from_data`): A1111's own `.pt` ({"string_to_param":
{"*": (n, C)}, "step", "sd_checkpoint", "sd_checkpoint_name", ...}), diffusers concepts
({"<token>": (C,) or (n, C)}, `.bin`/`.safetensors`), and SDXL pairs ({"clip_l": (n, 768),
"clip_g": (n, 1280)}). Pickles load with `weights_only=True` like every other model file.
Images (.png, .webp, .jxl, .avif) may carry an A1111 embedding in a text chunk or in their
pixels (image_embeddings.py); the name is then the one stored inside, and images without
one (preview pictures) are skipped quietly.

An embedding fits a model when its width equals the sum of the model's text-encoder widths
(768 for SD1, 1024 for SD2, 768 + 1280 for SDXL); the others are listed as "skipped" in
/sdapi/v1/embeddings, as A1111 does.

The contract for prompt encoding (`LoadedModel.embeddings` is an `EmbeddingStore`):

    match = model.embeddings.match_at(token_ids, position)   # longest name starting there
    if match is not None:
        vectors = match.embedding.vectors_for("text_encoder")  # (n, C) float32, CPU
        ... the n vectors replace the name's `match.token_count` tokens (A1111: they are
        written over the token embeddings, before position embeddings are added)

Token ids are those of the CLIP BPE vocabulary without BOS/EOS; CLIP-L and OpenCLIP share it,
so one lookup serves both encoders of SDXL.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui_api.engine.image_embeddings import IMAGE_EXTENSIONS, BadImageEmbedding, NotAnEmbedding, read_image_embedding
from webui_api.engine.loading.discovery import ModelPaths, embedding_files
from webui_api.engine.loading.hashes import HashCache

log = logging.getLogger(__name__)

ENCODER_SLOTS = ("text_encoder", "text_encoder_2")
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


class EmbeddingFormatError(ValueError):
    """A file in the embeddings folder that is not an embedding we can read."""


@dataclass(frozen=True)
class Embedding:
    """One textual inversion: its vectors per text-encoder slot, and A1111's listing fields."""

    name: str
    vectors: Mapping[str, torch.Tensor]  # slot ("text_encoder" / "text_encoder_2") -> (n, C) float32
    filename: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sha256: str | None = None

    @property
    def vector_count(self) -> int:
        """Vectors per use (SDXL pairs: CLIP-G's count, as A1111 reports)."""
        return int(self.vectors.get("text_encoder_2", next(iter(self.vectors.values()))).shape[0])

    @property
    def shape(self) -> int:
        """A1111's `shape`: the total width over the encoders it covers."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    @property
    def shorthash(self) -> str:
        """12 hex digits, what A1111's "TI hashes" infotext shows."""
        return self.sha256[:12] if self.sha256 else ""

    def vectors_for(self, slot: str) -> torch.Tensor:
        """The (n, C) vectors for one encoder slot. A single-encoder embedding answers for any
        slot (the refiner's only encoder is `text_encoder_2`); KeyError otherwise."""
        if slot in self.vectors:
            return self.vectors[slot]
        if len(self.vectors) == 1:
            return next(iter(self.vectors.values()))
        raise KeyError(f"embedding {self.name!r} has vectors for {sorted(self.vectors)}, not {slot!r}")

    def fits(self, widths: Mapping[str, int]) -> bool:
        """Whether this embedding can be used with encoders of these widths (by slot)."""
        if len(self.vectors) == 1:
            return self.shape == sum(widths.values())
        return {slot: int(v.shape[-1]) for slot, v in self.vectors.items()} == dict(widths)

    def api_item(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "shape": self.shape,
            "vectors": self.vector_count,
        }


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().to(torch.float32).cpu()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def embedding_vectors(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The vectors of a loaded embedding file, by encoder slot (A1111's three formats)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingFormatError("string_to_param must hold exactly one term")
        return {"text_encoder": _as_matrix(next(iter(params.values())))}
    if "clip_l" in data and "clip_g" in data:
        return {slot: _as_matrix(data[key]) for key, slot in SDXL_KEYS.items()}
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:
        return {"text_encoder": _as_matrix(tensors[0])}
    raise EmbeddingFormatError(
        f"neither a textual inversion nor a diffusers concept (keys: {sorted(map(str, data))[:5]})"
    )


def read_embedding_file(path: Path, allow_unsafe_pickle: bool = False) -> Mapping[str, Any]:
    """The raw mapping stored in an embedding file (non-tensor fields kept)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            return read_image_embedding(path)
        except BadImageEmbedding as err:
            raise EmbeddingFormatError(str(err)) from err
    if path.suffix.lower() == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except (safetensors.SafetensorError, OSError, ValueError) as err:
            raise EmbeddingFormatError(f"unreadable safetensors ({err})") from err
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as err:
        reason = "the pickle holds more than tensors and plain values; refused (--disable-safe-unpickle)"
        raise EmbeddingFormatError(reason) from err
    except (EOFError, OSError, RuntimeError, ValueError) as err:
        raise EmbeddingFormatError(f"unreadable pickle ({type(err).__name__}: {err})") from err
    if not isinstance(data, Mapping):
        raise EmbeddingFormatError(f"expected a mapping, found {type(data).__name__}")
    return data


def load_embedding(path: Path, hashes: HashCache | None = None, allow_unsafe_pickle: bool = False) -> Embedding:
    """One embedding file; its name is the file name without extension, or for an image the
    `name` stored in its data (A1111)."""
    data = read_embedding_file(path, allow_unsafe_pickle)
    name = path.stem
    if path.suffix.lower() in IMAGE_EXTENSIONS and isinstance(data.get("name"), str):
        name = data["name"]
    sha256 = hashes.sha256(path, f"textual_inversion/{name}") if hashes is not None else None
    return Embedding(
        name=name,
        vectors=embedding_vectors(data),
        filename=str(path),
        step=_plain(data.get("step"), int),
        sd_checkpoint=_plain(data.get("sd_checkpoint"), str),
        sd_checkpoint_name=_plain(data.get("sd_checkpoint_name"), str),
        sha256=sha256,
    )


def _plain(value: Any, kind: type) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return kind(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class EmbeddingMatch:
    """An embedding found in a token sequence, and how many tokens its name took."""

    embedding: Embedding
    token_count: int


@dataclass
class EmbeddingStore:
    """The embeddings usable with one model, looked up by the token ids of their names.

    `loaded` fit the model's encoders; `skipped` do not (their width differs).
    """

    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, Embedding] = field(default_factory=dict)
    _by_first_token: dict[int, list[tuple[tuple[int, ...], Embedding]]] = field(default_factory=dict)

    @classmethod
    def build(cls, embeddings: Sequence[Embedding], widths: Mapping[str, int], tokenizer: Any) -> EmbeddingStore:
        """Sort `embeddings` into loaded/skipped for a model whose encoder slots have `widths`
        (empty: no model, everything counts as loaded) and index the loaded ones by token ids."""
        store = cls()
        for embedding in sorted(embeddings, key=lambda e: e.name.lower()):
            fits = not widths or embedding.fits(widths)
            (store.loaded if fits else store.skipped)[embedding.name] = embedding
        if tokenizer is not None:
            for embedding in store.loaded.values():
                store.register(tuple(tokenizer(embedding.name, add_special_tokens=False)["input_ids"]), embedding)
        return store

    def register(self, ids: tuple[int, ...], embedding: Embedding) -> None:
        """Index an embedding under its name's token ids, longest names first per first id."""
        if not ids:
            return
        candidates = self._by_first_token.setdefault(ids[0], [])
        candidates.append((ids, embedding))
        candidates.sort(key=lambda item: len(item[0]), reverse=True)

    def match_at(self, tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        """The longest embedding name whose token ids start at `position`, if any."""
        if not 0 <= position < len(tokens):
            return None
        for ids, embedding in self._by_first_token.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                return EmbeddingMatch(embedding, len(ids))
        return None

    def api_listing(self) -> dict[str, dict[str, Any]]:
        """The /sdapi/v1/embeddings body."""
        return {
            "loaded": {name: e.api_item() for name, e in self.loaded.items()},
            "skipped": {name: e.api_item() for name, e in self.skipped.items()},
        }


def encoder_widths(model: Any) -> dict[str, int]:
    """Hidden width of each text encoder a LoadedModel has, by slot."""
    widths = {}
    for slot in ENCODER_SLOTS:
        encoder = getattr(model, slot, None)
        if encoder is not None:
            widths[slot] = int(encoder.config.hidden_size)
    return widths


class EmbeddingLibrary:
    """Every readable embedding file of the embeddings folders, read on `refresh`."""

    def __init__(self, paths: ModelPaths, hashes: HashCache | None = None, allow_unsafe_pickle: bool = False) -> None:
        self.paths = paths
        self.hashes = hashes
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._embeddings: tuple[Embedding, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        found = []
        for path in embedding_files(self.paths):
            try:
                found.append(load_embedding(path, self.hashes, self.allow_unsafe_pickle))
            except NotAnEmbedding as err:
                log.debug("Not an embedding: %s (%s)", path, err)
            except EmbeddingFormatError as err:
                log.warning("Skipping embedding file %s: %s", path, err)
        self._embeddings = tuple(found)

    def embeddings(self) -> list[Embedding]:
        return list(self._embeddings)

    def store_for(self, model: Any | None) -> EmbeddingStore:
        """The store for a LoadedModel (None: no model loaded, everything listed as loaded)."""
        if model is None:
            return EmbeddingStore.build(self._embeddings, {}, None)
        tokenizer = model.tokenizer if model.tokenizer is not None else model.tokenizer_2
        return EmbeddingStore.build(self._embeddings, encoder_widths(model), tokenizer)


TI_NAME_SYMBOLS = str.maketrans("", "", ":,")  # A1111 drops these from names in "TI hashes"


def used_embeddings(store: EmbeddingStore, tokenizer: Any, texts: Sequence[str]) -> list[Embedding]:
    """The embeddings whose names appear in `texts` (by token ids, as encoding finds them), in
    order of first appearance."""
    found: dict[str, Embedding] = {}
    if tokenizer is None or not store.loaded:
        return []
    for text in dict.fromkeys(texts):
        tokens = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        position = 0
        while position < len(tokens):
            match = store.match_at(tokens, position)
            if match is None:
                position += 1
                continue
            found.setdefault(match.embedding.name, match.embedding)
            position += match.token_count
    return list(found.values())


def ti_hashes_infotext(embeddings: Sequence[Embedding]) -> dict[str, str]:
    """A1111's "TI hashes" (textual_inversion_add_hashes_to_infotext): "name: 12-digit sha256"
    per used embedding that has a file hash; no key when none has."""
    hashes = [f"{e.name.translate(TI_NAME_SYMBOLS)}: {e.shorthash}" for e in embeddings if e.shorthash]
    return {"TI hashes": ", ".join(hashes)} if hashes else {}
