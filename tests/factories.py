"""Builders the tests share (kept out of the package: production code has no test factories)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def served_on_loopback(app: Any, port: int) -> Iterator[int]:
    """Run `app` under a real uvicorn server on 127.0.0.1:`port` in a thread (clients that open
    their own connections, like webuiapi, need one); yields the port, stops the server after."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, f"the test server on port {port} did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
