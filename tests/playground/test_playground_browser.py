"""End-to-end tests of the playground at `/` in headless Chromium: type a prompt, Generate,
watch the live preview and the final image, read and reuse the infotext, cancel a queued job,
sign in. Screenshots go to test-artifacts/playground/."""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import pytest

from .conftest import screenshot

expect = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed").expect

LONG_WAIT_MS = 120_000
STEPS = 1000


def fill_form(page, prompt: str, steps: int, size: int = 64) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Width").fill(str(size))
    page.get_by_label("Height").fill(str(size))


def wait_for_catalogs(page) -> None:
    expect(page.locator("#sampler_name option")).not_to_have_count(0)


def test_generate_shows_live_preview_final_image_and_infotext(live_server, page):
    base = live_server()
    hosts = set()
    page.on("request", lambda request: hosts.add(urlparse(request.url).netloc or urlparse(request.url).scheme))
    page.goto(base)
    wait_for_catalogs(page)
    fill_form(page, "a lighthouse at dusk", steps=STEPS)
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#preview[data-source=live]")).to_be_visible(timeout=LONG_WAIT_MS)
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"\d+%"))
    expect(page.locator("#queue")).to_contain_text("running")
    screenshot(page, "1-generating")
    # Enough steps that the page sees live previews on any machine; then /interrupt ends the
    # sampling and the task still delivers its image (A1111's interrupt), so the test stays short.
    assert page.request.post(f"{base}sdapi/v1/interrupt").ok

    result = page.get_by_role("img", name="Result 1: a lighthouse at dusk")
    expect(result).to_be_visible(timeout=LONG_WAIT_MS)
    expect(page.locator("#preview")).to_have_attribute("data-source", "result")
    assert page.locator("#gallery img").first.get_attribute("src").startswith("data:image/png;base64,")
    screenshot(page, "2-result")

    page.get_by_role("button", name="Infotext of result 1: a lighthouse at dusk").click()
    info = page.get_by_role("textbox", name="Infotext")
    expect(info).to_have_value(re.compile(rf"^a lighthouse at dusk\nSteps: {STEPS}, Sampler: Euler a, .*Size: 64x64"))
    screenshot(page, "3-infotext")

    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Steps").fill("5")
    page.get_by_role("button", name="Send to form").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse at dusk")
    expect(page.get_by_label("Steps")).to_have_value(str(STEPS))
    expect(page.locator("#info-dialog")).not_to_be_visible()
    # everything the page loaded came from the server itself (or is an inline data: URL)
    assert hosts <= {urlparse(base).netloc, "data"}, hosts


def test_cancel_a_queued_job_and_the_running_one(live_server, page):
    base = live_server()
    page.goto(base)
    wait_for_catalogs(page)
    fill_form(page, "long running job", steps=1000)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#queue li .status.running")).to_be_visible(timeout=LONG_WAIT_MS)
    fill_form(page, "queued job", steps=1000)
    page.get_by_role("button", name="Generate").click()
    queued = page.locator("#queue li", has_text="queued job")
    expect(queued.locator(".status")).to_have_text("pending")
    screenshot(page, "4-queue")

    queued.get_by_role("button", name="Cancel queued job").click()
    expect(queued).to_have_count(0)
    page.get_by_role("button", name="Cancel long running job").click()
    expect(page.locator("#queue")).to_have_text("Empty", timeout=LONG_WAIT_MS)
    expect(page.locator("#gallery img")).to_have_count(0)
    screenshot(page, "5-cancelled")


@pytest.fixture()
def keys_file(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "browser", "key": "playground-key-1"}]))
    return path


def test_signing_in_with_an_api_key(live_server, page, keys_file):
    page.goto(live_server(api_keys_file=keys_file))
    expect(page.locator("#auth")).to_be_visible()  # the catalogs answered 401: the page asks
    screenshot(page, "6-credentials")
    page.get_by_label("API key").fill("playground-key-1")
    page.get_by_role("button", name="Save credentials").click()
    wait_for_catalogs(page)
    fill_form(page, "signed in", steps=4)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("img", name="Result 1: signed in")).to_be_visible(timeout=LONG_WAIT_MS)


def test_signing_in_with_api_auth_user_and_password(live_server, page):
    page.goto(live_server(api_auth=(("ada", "lovelace"),)))
    expect(page.locator("#auth")).to_be_visible()
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill("lovelace")
    page.get_by_role("button", name="Save credentials").click()
    wait_for_catalogs(page)
    expect(page.locator("#form-error")).to_have_text("")
