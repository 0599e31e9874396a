"""Tiny random-weight files for the fetcher tests, and a registry that pins their digests."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from tests.postprocess.upscaler_files import write_esrgan
from webui_api.weights import WeightsRegistry
from webui_api.weights.registry import WeightFile


def tiny_esrgan_bytes(tmp_path: Path, scale: int = 4) -> bytes:
    return write_esrgan(tmp_path / "tiny-src" / f"x{scale}.pth", scale=scale).read_bytes()


def pinned_to(registry: WeightsRegistry, name: str, data: bytes) -> tuple[WeightsRegistry, WeightFile]:
    """`registry` with `name` expecting exactly `data`; the entry as changed."""
    entry = replace(registry.get(name), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return registry.with_entries(entry), entry


def origin_path(entry: WeightFile) -> str:
    """The path a mirror serves `entry` under (the pinned URL without its origin)."""
    from urllib.parse import urlsplit

    return urlsplit(entry.url).path
