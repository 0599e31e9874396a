"""Builders the tests share (kept out of the package: production code has no test factories)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui_api.cli import default_cmd_flags
from webui_api.settings import Settings


def settings_for_tests(data_dir: Path, **overrides: Any) -> Settings:
    """A complete Settings rooted at `data_dir`, with A1111's folder layout and the default
    /cmd-flags for that folder; nothing is created on disk. Overrides replace fields as given."""
    base = Settings.layout(Path(data_dir))
    return replace(base, cmd_flags=MappingProxyType(default_cmd_flags(Path(data_dir))), **overrides)
