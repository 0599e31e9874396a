"""Reading weight files safely: safetensors, and pickles only as far as plain tensors go.

A `.ckpt` / `.pt` file is a Python pickle, and unpickling can run arbitrary code. Like
A1111's safe unpickler, we load pickles with `torch.load(weights_only=True)`, which accepts
tensors, containers and primitive values only; anything else is refused with a message naming
A1111's escape hatch, `--disable-safe-unpickle`, the only way to load such a file.

Every failure here is an `UnusableModelFile` (a 400): the client named a file that exists
but cannot be used, which is a fact about that file, not a server fault.
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from webui_api.errors import BadRequest

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNSAFE_FLAG = "--disable-safe-unpickle"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit


class UnusableModelFile(BadRequest):
    """A model file that exists but cannot be loaded (truncated, not a model, unsafe pickle,
    unknown architecture). The server keeps serving whatever it had loaded before."""

    error_name = "RuntimeError"

    def __init__(self, path: Path | str, reason: str) -> None:
        name = Path(path).name
        super().__init__(f"Cannot load {name}: {reason}", errors=reason)
        self.path = str(path)
        self.reason = reason


def is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == SAFETENSORS_SUFFIX


def read_state_dict(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weight file on the CPU, in the file's dtype.

    A Lightning checkpoint's "state_dict" wrapper is unwrapped as A1111 does; non-tensor
    entries (step counters, hyper-parameters) are dropped.
    """
    path = Path(path)
    if is_safetensors(path):
        raw = _read_safetensors(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        raw = _read_pickle(path, allow_unsafe_pickle)
    else:
        raise UnusableModelFile(path, f"unsupported file type {path.suffix!r}; expected .safetensors, .ckpt or .pt")
    return _tensors_only(path, raw)


def _read_safetensors(path: Path) -> dict[str, Any]:
    import safetensors.torch

    check_safetensors_header(path)
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UnusableModelFile(path, f"not a readable safetensors file ({err})") from err


def _read_pickle(path: Path, allow_unsafe: bool) -> Any:
    if allow_unsafe:
        log.warning("Loading %s with full unpickling (%s): this can run code stored in the file", path, UNSAFE_FLAG)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as err:
        reason = (
            "the pickle holds more than tensors and plain values (possibly code), so it was refused; "
            f"convert it to .safetensors, or start the server with {UNSAFE_FLAG} if you trust this file"
        )
        log.warning("Refused %s: %s (%s)", path, reason, str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise UnusableModelFile(path, reason) from err
    except (EOFError, OSError, RuntimeError, ValueError) as err:
        raise UnusableModelFile(path, f"not a readable PyTorch pickle ({type(err).__name__}: {err})") from err


def _tensors_only(path: Path, raw: Any) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise UnusableModelFile(path, f"expected a mapping of tensor names to tensors, found {type(raw).__name__}")
    tensors = {key: value for key, value in raw.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        raise UnusableModelFile(path, "the file contains no tensors")
    return tensors


def _header_bytes(path: Path) -> bytes:
    """The JSON header of a safetensors file, after checking its declared size fits the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UnusableModelFile(path, f"file is {size} bytes, too short to be safetensors")
        (length,) = struct.unpack("<Q", prefix)
        if length < 2 or length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise UnusableModelFile(path, f"header length {length} does not fit a {size}-byte file (truncated?)")
        return handle.read(length)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed header: {tensor name: {dtype, shape, data_offsets}, "__metadata__": {...}}."""
    try:
        header = json.loads(_header_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnusableModelFile(path, f"safetensors header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise UnusableModelFile(path, "safetensors header is not a JSON object")
    return header


def check_safetensors_header(path: Path) -> None:
    """Refuse a file whose tensors would reach past its end (a truncated download), before
    anything is read into memory."""
    header = read_safetensors_header(path)
    data_size = path.stat().st_size - 8 - len(_header_bytes(path))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if ends and max(ends) > data_size:
        raise UnusableModelFile(
            path, f"tensor data ends at byte {max(ends)} but the file holds {data_size} (truncated?)"
        )


def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """A1111's view of `__metadata__`: string values, JSON-decoded when they look like objects."""
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    result: dict[str, Any] = {}
    for key, value in metadata.items():
        result[key] = _maybe_json(value)
    return result


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def safetensors_body_offset(path: Path) -> int:
    """Where tensor data starts (8 + header length): kohya's "addnet" hash covers only that part."""
    return 8 + len(_header_bytes(path))
