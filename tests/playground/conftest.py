"""A real server on a loopback port (uvicorn in a thread, the session's tiny engine) and a
headless Chromium driven by Playwright. The browser is the system's (Debian's `chromium`):
nothing is downloaded, and without it these tests skip saying why."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "playground"


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="package")
def browser():
    """Package scope, not session: Playwright's sync API keeps an event loop running on the main
    thread while it is open, and later tests' asyncio.run() would fail beside it."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system chromium (apt-get install chromium): the playground's browser tests need one")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def live_server(engine, tmp_path):
    """Factory: start a server with these Settings overrides; returns its base URL."""
    import uvicorn

    from webui_api.app import create_app

    from ..factories import settings_for_tests

    servers = []

    def start(**overrides) -> str:
        port = free_port()
        app = create_app(settings_for_tests(tmp_path, **overrides), engine=engine)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, name=f"uvicorn {port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}/"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def screenshot(page, name: str) -> Path:
    """Saved under test-artifacts/playground/ (CI keeps the folder as an artifact)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
