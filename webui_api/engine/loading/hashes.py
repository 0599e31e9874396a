"""A1111's model hashes and its on-disk hash cache (`cache.json` in the data folder).

- sha256 of the whole file: the "hash" clients see is its first 10 hex digits (the shorthash,
  in checkpoint titles "name.safetensors [0123456789]" and the infotext's "Model hash").
- the legacy "model hash": sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits; A1111
  still accepts it as a checkpoint alias (old infotexts carry it).
- the "addnet" hash kohya's scripts use for LoRA safetensors: sha256 of the tensor data only
  (the header is skipped, so editing metadata keeps the hash); "Lora hashes" shows 12 digits.

Hashing a multi-GB checkpoint takes seconds, so results are cached in `cache.json` in A1111's
(pre-1.6) layout: {"hashes": {"checkpoint/<name>": {"mtime": ..., "sha256": ...}},
"hashes-addnet": {"lora/<name>": ...}}. An entry is valid while the file's mtime is not newer
than the recorded one, exactly A1111's rule, so an A1111 data folder's cache is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000
CHECKPOINT_SECTION = "hashes"
ADDNET_SECTION = "hashes-addnet"


def sha256_of_file(path: Path, start: int = 0) -> str:
    """sha256 of the file's bytes from `start` to the end, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-hex checkpoint hash (prone to collisions; kept because it is an alias)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(LEGACY_HASH_OFFSET)
            chunk = handle.read(LEGACY_HASH_LENGTH)
    except FileNotFoundError:
        return "NOFILE"
    return hashlib.sha256(chunk).hexdigest()[:8]


def addnet_hash(path: Path) -> str:
    """kohya's hash of a safetensors file: sha256 over the bytes after the JSON header."""
    from webui_api.engine.loading.files import safetensors_body_offset

    return sha256_of_file(path, start=safetensors_body_offset(path))


class HashCache:
    """The sha256 cache kept in `cache.json`; thread-safe, written atomically after each new hash.

    With `path=None` nothing is persisted (hashes are still remembered for the process).
    `enabled=False` mirrors `--no-hashing`: cached values are still used, nothing new is computed.
    """

    def __init__(self, path: Path | None, *, enabled: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = enabled
        self._lock = threading.Lock()
        self._data: dict[str, Any] | None = None

    def cached(self, filename: Path, key: str, section: str = CHECKPOINT_SECTION) -> str | None:
        """The cached sha256 for `key` if the file has not changed since it was recorded."""
        try:
            mtime = os.path.getmtime(filename)
        except OSError:
            return None
        with self._lock:
            entry = self._sections().get(section, {}).get(key)
        if not isinstance(entry, dict) or entry.get("sha256") is None:
            return None
        return entry["sha256"] if mtime <= float(entry.get("mtime", 0)) else None

    def sha256(self, filename: Path, key: str, section: str = CHECKPOINT_SECTION) -> str | None:
        """Cached or freshly computed (and then cached) sha256; None under --no-hashing when
        nothing is cached."""
        found = self.cached(filename, key, section)
        if found is not None or not self.enabled:
            return found
        log.info("Calculating sha256 for %s", filename)
        value = addnet_hash(Path(filename)) if section == ADDNET_SECTION else sha256_of_file(Path(filename))
        self._record(section, key, {"mtime": os.path.getmtime(filename), "sha256": value})
        return value

    def _sections(self) -> dict[str, Any]:
        """The cache file's content, read on first use; a corrupt file is ignored (and later
        overwritten) with a warning, as A1111 does."""
        if self._data is None:
            self._data = _read_json(self.path) if self.path is not None else {}
        return self._data

    def _record(self, section: str, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            data = self._sections()
            data.setdefault(section, {})[key] = entry
            if self.path is not None:
                _write_json(self.path, data)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("Ignoring unreadable hash cache %s (%s); it will be rewritten", path, err)
        return {}
    if not isinstance(data, dict):
        log.warning("Ignoring hash cache %s: expected a JSON object, found %s", path, type(data).__name__)
        return {}
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Temp file + rename, so a crash never leaves half a cache; failure only costs a rehash."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_file = tempfile.NamedTemporaryFile(
            "w", encoding="utf8", dir=path.parent, prefix=".cache.", suffix=".tmp", delete=False
        )
        with temp_file as handle:
            json.dump(data, handle, indent=4)
            temp = Path(handle.name)
        os.replace(temp, path)
    except OSError as err:
        log.warning("Could not write hash cache %s: %s", path, err)
