"""Live previews are decoded off the sampling thread (issue: no host syncs in the sampling loop).

The worker only captures the latent when a preview is due; the decode runs on the tracker's
preview thread, newest capture first. The tests order events with blocking decoders instead of
timing them: a decoder that cannot finish until sampling has finished would hang the run if the
loop waited on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import torch
from PIL import Image

from tests.engine.helpers import make_job
from webui_api.engine import previews
from webui_api.engine.facade import Engine
from webui_api.postprocess.previews import encode_preview, preview_encoder
from webui_api.progress import CancelToken, ProgressTracker

RELEASE_TIMEOUT_S = 20.0


def step_image(step: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (step * 20, 0, 0))


class BlockedDecodes:
    """Preview decodes that record their thread and wait until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[int, bool]] = []  # (thread id, released before the timeout)

    def decode(self, result: Callable[[], Image.Image]) -> Image.Image:
        released = self.release.wait(RELEASE_TIMEOUT_S)
        self.calls.append((threading.get_ident(), released))
        return result()


class CapturingSource:
    """A PreviewSource stand-in: capture() snapshots the step now, the decode runs later."""

    def __init__(self, step: int, decodes: BlockedDecodes, captured_on: list[int]) -> None:
        self.step, self.decodes, self.captured_on = step, decodes, captured_on

    def __call__(self) -> Image.Image:
        raise AssertionError("the tracker must not decode on the sampling thread")

    def capture(self) -> Callable[[], Image.Image]:
        self.captured_on.append(threading.get_ident())
        step = self.step
        return lambda: self.decodes.decode(lambda: step_image(step))


def tracker() -> ProgressTracker:
    return ProgressTracker(encode_preview=preview_encoder(lambda: "png"))


def test_sampling_steps_do_not_wait_for_a_slow_decode_and_the_newest_step_is_shown() -> None:
    progress, decodes, captured_on = tracker(), BlockedDecodes(), []
    progress.begin("txt2img", 1, "0", CancelToken(), 1, task_ids=("task(a)",))
    for step in range(6):  # would hang for RELEASE_TIMEOUT_S per decode if a step waited on one
        progress.sampling_step(step, 6, CapturingSource(step, decodes, captured_on))
    assert progress.snapshot()["state"]["sampling_step"] == 5
    decodes.release.set()
    assert progress.wait_for_previews(RELEASE_TIMEOUT_S)
    worker = threading.get_ident()
    assert captured_on == [worker] * 6
    assert decodes.calls and all(thread != worker and released for thread, released in decodes.calls)
    assert len(decodes.calls) < 6  # stale captures were dropped, not queued
    assert progress.snapshot()["current_image"] == encode_preview(step_image(5), "png").png_base64
    assert progress.view("task(a)").preview.id == len(decodes.calls)


def test_no_capture_and_no_decode_when_no_preview_is_due() -> None:
    progress, decodes, captured_on = tracker(), BlockedDecodes(), []
    progress.begin("txt2img", 1, "0", CancelToken(), 0, task_ids=("task(a)",))
    for step in range(4):
        progress.sampling_step(step, 4, CapturingSource(step, decodes, captured_on))
    decodes.release.set()
    assert progress.wait_for_previews(RELEASE_TIMEOUT_S)
    assert captured_on == [] and decodes.calls == [] and progress.snapshot()["current_image"] is None


def test_a_preview_decoded_after_its_job_ended_is_not_shown() -> None:
    progress, decodes, captured_on = tracker(), BlockedDecodes(), []
    progress.begin("txt2img", 1, "0", CancelToken(), 1, task_ids=("task(a)",))
    progress.sampling_step(0, 2, CapturingSource(0, decodes, captured_on))
    progress.end()
    decodes.release.set()
    assert progress.wait_for_previews(RELEASE_TIMEOUT_S)
    assert len(decodes.calls) == 1 and progress.view("task(a)").preview is None


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    loaded = Engine(device="cpu")
    loaded.load()
    yield loaded


class RecordingTracker(ProgressTracker):
    """Keeps each step's preview latent as the engine reported it."""

    def __init__(self) -> None:
        super().__init__(encode_preview=preview_encoder(lambda: "png"))
        self.step_latents: list[torch.Tensor] = []

    def sampling_step(self, step: int, total_steps: int, make_preview: Callable[[], object]) -> None:
        assert isinstance(make_preview, previews.PreviewSource)
        self.step_latents.append(make_preview.latest()[:1].clone())
        super().sampling_step(step, total_steps, make_preview)


def test_the_engine_run_does_not_wait_for_the_preview_decoder(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes, decoded = BlockedDecodes(), []
    real_live_preview = previews.live_preview

    def slow_live_preview(model, preview_type: str, latent: torch.Tensor, auto_upcast: bool = True) -> Image.Image:
        assert not auto_upcast  # off the worker the preview never changes the model
        decoded.append(latent.clone())
        return decodes.decode(lambda: real_live_preview(model, preview_type, latent, auto_upcast))

    monkeypatch.setattr(previews, "live_preview", slow_live_preview)
    progress = RecordingTracker()
    progress.begin("txt2img", 1, "0", CancelToken(), 1, task_ids=("task(e)",))
    engine.txt2img(make_job(steps=4, width=32, height=32), progress, CancelToken())
    sampled_on = threading.get_ident()
    decodes.release.set()  # only now can any decode finish: the run above never waited for one
    assert progress.wait_for_previews(RELEASE_TIMEOUT_S)
    assert len(progress.step_latents) == 4
    assert decodes.calls and all(thread != sampled_on and released for thread, released in decodes.calls)
    assert torch.equal(decoded[-1], progress.step_latents[-1])  # the newest step is the one shown
    assert progress.snapshot()["current_image"] is not None
