"""The per-job ProgressTracker and A1111's /internal/progress view, without an engine."""

from __future__ import annotations

import asyncio

from PIL import Image

from webui_api.postprocess.previews import encode_preview, preview_encoder
from webui_api.progress import COMPLETED, CancelToken, JobOutcome, ProgressTracker
from webui_api.task_progress import create_task_id, internal_progress, job_events, queue_textinfo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker_with_clock() -> tuple[ProgressTracker, Clock]:
    clock = Clock()
    return ProgressTracker(encode_preview=preview_encoder(lambda: "png"), clock=clock), clock


def small_image() -> Image.Image:
    return Image.new("RGB", (16, 16), (0, 128, 255))


def test_task_ids_look_like_a1111s():
    task_id = create_task_id("img2img")
    assert task_id.startswith("task(img2img-") and task_id.endswith(")")
    suffix = task_id[len("task(img2img-"):-1]
    assert len(suffix) == 7 and suffix.isalnum() and suffix.upper() == suffix


def test_active_job_progress_eta_and_preview_ids():
    tracker, clock = tracker_with_clock()
    tracker.begin("scripts_txt2img", 2, "20260101000000", CancelToken(), 1, task_ids=("task(a)",))
    tracker.batch_started(0, 2)
    tracker.sampling_step(4, 10, small_image)
    clock.now += 10
    view = tracker.view("task(a)")
    assert view.active and not view.completed
    assert view.fraction == 4 / 10 / 2  # A1111's formula: job_no/job_count + step/steps/job_count
    assert abs(view.eta - (10 / 0.2 - 10)) < 1e-9
    first = internal_progress(view, [], id_live_preview=-1)
    assert first["live_preview"].startswith("data:image/png;base64,") and first["id_live_preview"] == 1
    repeat = internal_progress(view, [], id_live_preview=1)
    assert repeat["live_preview"] is None and repeat["id_live_preview"] == 1
    assert internal_progress(view, [], previews_enabled=False)["live_preview"] is None
    tracker.sampling_step(5, 10, small_image)
    assert tracker.view("task(a)").preview.id == 2
    # the global A1111 /progress view is the same job
    assert tracker.snapshot()["state"]["job"] == "Batch 1 out of 2" and tracker.snapshot()["current_image"]


def test_a_batch_of_jobs_is_active_together_and_then_completed():
    tracker, _ = tracker_with_clock()
    tracker.begin("scripts_txt2img", 1, "0", CancelToken(), 0, task_ids=("task(a)", "task(b)"))
    assert tracker.view("task(a)").active and tracker.view("task(b)").active
    tracker.end()
    for task in ("task(a)", "task(b)"):
        view = tracker.view(task)
        assert not view.active and view.completed
        assert internal_progress(view, [])["textinfo"] == "Waiting..."
    assert tracker.snapshot()["state"]["job_count"] == 0


def test_only_the_last_16_finished_jobs_count_as_completed():
    tracker, _ = tracker_with_clock()
    for n in range(17):
        tracker.begin("x", 1, "0", CancelToken(), 0, task_ids=(f"task({n})",))
        tracker.end()
    assert not tracker.view("task(0)").completed and tracker.view("task(1)").completed


def test_queue_text():
    assert queue_textinfo("b", ["a", "b", "c"]) == "In queue: 2/3"
    assert queue_textinfo("z", ["a"]) == "Waiting..."


def test_live_preview_format_follows_the_option():
    encoded = encode_preview(small_image().convert("RGBA"), "jpeg")
    assert encoded.data_uri.startswith("data:image/jpeg;base64,/9j/")
    assert encoded.png_base64.startswith("iVBOR")
    assert encode_preview(small_image(), "webp").data_uri.startswith("data:image/webp;base64,UklGR")


def test_event_stream_is_ordered_and_ends_with_done():
    tracker, _ = tracker_with_clock()

    async def scenario() -> list:
        queue: list[str] = ["task(a)"]
        events: list = []

        async def consume() -> None:
            async for item in job_events(tracker, "task(a)", lambda: list(queue)):
                if item is not None:
                    events.append(item)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        queue.clear()
        tracker.begin("x", 1, "0", CancelToken(), 0, task_ids=("task(a)",))
        await asyncio.sleep(0.05)
        for step in range(3):
            tracker.sampling_step(step, 3, small_image)
            await asyncio.sleep(0.02)
        tracker.batch_finished(0)
        tracker.end()
        tracker.complete("task(a)", JobOutcome(COMPLETED, result={"images": 1}))
        await asyncio.wait_for(consumer, 5)
        return events

    events = asyncio.run(scenario())
    names = [name for name, _ in events]
    assert names[0] == "status" and events[0][1]["state"] == "queued" and events[0][1]["position"] == 1
    assert names[-1] == "done" and events[-1][1]["result"] == {"images": 1}
    states = [data["state"] for name, data in events if name == "status"]
    assert states == ["queued", "active", "completed"]
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and steps[-1] == 3


def test_lane_progress_answers_per_job_views_across_lanes():
    import threading

    from webui_api.lane_progress import LaneProgress

    lanes = LaneProgress(lambda: ProgressTracker(encode_preview=preview_encoder(lambda: "png")))
    started, release = threading.Event(), threading.Event()

    def lane(task_id: str) -> None:
        lanes.begin("x", 1, "0", CancelToken(), 0, task_ids=(task_id,))
        lanes.sampling_step(1, 4, small_image)
        started.set()
        release.wait(5)
        lanes.end()

    thread = threading.Thread(target=lane, args=("task(lane)",))
    thread.start()
    assert started.wait(5)
    view = lanes.view("task(lane)")
    assert view.active and view.sampling_steps == 4
    release.set()
    thread.join(5)
    lanes.complete("task(lane)", JobOutcome(COMPLETED, result={"images": 1}))
    done = lanes.view("task(lane)")
    assert not done.active and done.completed and done.outcome.result == {"images": 1}
    assert not lanes.view("task(other)").completed
