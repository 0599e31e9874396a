"""Several ingress replicas meet on the job board: any replica shows the cluster's current job
in /progress, and an /interrupt or /skip sent to one reaches the jobs of every other.

Plain Python: the board class the Ray actor wraps, two `ClusterJobControl`s standing for two
replicas, their heartbeats called by hand.
"""

from __future__ import annotations

from typing import Any

from webui_api.cluster.board import INGRESS_STALE_SECONDS, JobBoard
from webui_api.cluster.ingress_control import ClusterJobControl
from webui_api.progress import CancelToken, ProgressTracker


class RecordingScheduler:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def interrupt(self) -> None:
        self.calls.append("interrupt")

    def skip(self) -> None:
        self.calls.append("skip")


def replica(board: JobBoard, name: str) -> tuple[ClusterJobControl, RecordingScheduler, ProgressTracker]:
    scheduler, progress = RecordingScheduler(), ProgressTracker(encode_preview=_fake_preview)
    return ClusterJobControl(board, name, scheduler, progress), scheduler, progress  # type: ignore[arg-type]


def _fake_preview(image: Any) -> Any:
    from webui_api.progress import EncodedPreview

    return EncodedPreview(png_base64=image, data_uri=f"data:image/png;base64,{image}")


def without_eta(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "eta_relative"}  # it moves with the clock


def start_job(progress: ProgressTracker, timestamp: str = "20261207013000", step: int = 3) -> None:
    progress.begin("txt2img", 2, timestamp, CancelToken(), 1)
    progress.batch_started(0, 2)
    progress.sampling_step(step, 10, lambda: f"preview-{step}")


def test_an_interrupt_sent_to_one_replica_reaches_the_others_once() -> None:
    board = JobBoard()
    a, a_scheduler, _ = replica(board, "A")
    b, b_scheduler, _ = replica(board, "B")
    a.sync()
    b.sync()
    a.interrupt()
    assert a_scheduler.calls == ["interrupt"]  # at once, on the replica that got the call
    b.sync()
    b.sync()
    a.sync()
    assert b_scheduler.calls == ["interrupt"] and a_scheduler.calls == ["interrupt"]


def test_every_skip_is_applied_once_per_replica() -> None:
    board = JobBoard()
    a, _, _ = replica(board, "A")
    b, b_scheduler, _ = replica(board, "B")
    a.sync()
    b.sync()
    a.skip()
    b.sync()
    a.skip()
    b.sync()
    b.sync()
    assert b_scheduler.calls == ["skip", "skip"]


def test_calls_made_before_a_replica_started_are_history() -> None:
    board = JobBoard()
    a, _, _ = replica(board, "A")
    a.interrupt()
    a.skip()
    late, late_scheduler, _ = replica(board, "late")
    late.sync()
    late.sync()
    assert late_scheduler.calls == []


def test_an_idle_replica_shows_the_job_another_replica_runs() -> None:
    board = JobBoard()
    a, _, a_progress = replica(board, "A")
    b, _, b_progress = replica(board, "B")
    start_job(a_progress)
    a.sync()
    b.sync()
    shown = b.progress()
    assert without_eta(shown) == without_eta(a_progress.snapshot())
    assert shown["state"]["sampling_step"] == 3 and shown["current_image"] == "preview-3"
    assert shown["progress"] > 0 and set(shown) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert b.progress(skip_current_image=True)["current_image"] is None
    a_progress.end()
    a.sync()
    b.sync()
    assert b.progress() == b_progress.snapshot()  # nothing runs anywhere: the replica's own idle view


def test_the_longest_running_job_is_shown_everywhere() -> None:
    board = JobBoard()
    a, _, a_progress = replica(board, "A")
    b, _, b_progress = replica(board, "B")
    start_job(b_progress, "20261207013000", step=5)
    b.sync()
    start_job(a_progress, "20261207013005", step=1)
    a.sync()
    b.sync()
    assert a.progress()["state"]["sampling_step"] == 5  # b's job started first
    assert without_eta(b.progress()) == without_eta(b_progress.snapshot())


def test_an_unchanged_preview_is_not_sent_again_but_still_shown() -> None:
    board = JobBoard()
    a, _, a_progress = replica(board, "A")
    b, _, _ = replica(board, "B")
    start_job(a_progress)
    a.sync()
    sent: list[Any] = []
    sync = board.ingress_sync

    def recording_sync(name: str, view: Any, image_changed: bool = True) -> Any:
        sent.append((view["current_image"], image_changed))
        return sync(name, view, image_changed)

    board.ingress_sync = recording_sync  # type: ignore[method-assign]
    a.sync()
    assert sent == [(None, False)]
    board.ingress_sync = sync  # type: ignore[method-assign]
    b.sync()
    assert b.progress()["current_image"] == "preview-3"


def test_a_replica_that_stopped_syncing_is_no_longer_shown() -> None:
    board = JobBoard()
    busy = {"progress": 0.5, "eta_relative": 1.0, "state": {"job_timestamp": "1"}, "current_image": None,
            "textinfo": None}
    board.ingress_sync("dead", busy, now=100.0)
    assert board.ingress_sync("B", None, now=101.0)["current"]["replica"] == "dead"
    assert board.ingress_sync("B", None, now=101.0 + INGRESS_STALE_SECONDS)["current"] is None
