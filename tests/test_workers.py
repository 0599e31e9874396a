"""The worker interface behind the scheduler: lanes, lost workers, per-lane progress (no Ray)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from webui_api.lane_progress import LaneProgress
from webui_api.progress import CancelToken, ProgressTracker
from webui_api.scheduler import Scheduler, WorkItem, batch_item
from webui_api.workers import LocalWorker, RayOptions, RemoteCall, WorkerLost


class FlakyWorker:
    """Loses the first `losses` items it is handed (as a dead replica would), then runs them."""

    def __init__(self, name: str, losses: int) -> None:
        self.name = name
        self.losses = losses
        self.calls = 0

    def execute(self, item: WorkItem, progress: Any) -> Any:
        self.calls += 1
        if self.calls <= self.losses:
            raise WorkerLost(item.label, "replica died")
        return item.run(item.cancel)

    def close(self) -> None:
        pass


def started(workers: list[Any]) -> Scheduler:
    scheduler = Scheduler(ProgressTracker(), workers=workers)
    scheduler.start()
    return scheduler


def test_two_lanes_run_two_items_at_once():
    scheduler = started([LocalWorker(), LocalWorker()])
    both_in = threading.Barrier(2, timeout=10)

    def run(_cancel: CancelToken) -> str:
        both_in.wait()  # only passes when the second item runs while the first still does
        return threading.current_thread().name

    try:
        futures = [scheduler.submit(WorkItem(run=run, label=f"job{n}")) for n in range(2)]
        names = {future.result(timeout=20) for future in futures}
    finally:
        scheduler.stop(timeout=5)
    assert names == {"webui-api-worker-0", "webui-api-worker-1"}


def test_one_lane_keeps_the_single_worker_thread_name():
    scheduler = started([LocalWorker()])
    try:
        name = scheduler.submit(WorkItem(run=lambda _c: threading.current_thread().name, label="x")).result(10)
    finally:
        scheduler.stop(timeout=5)
    assert name == "webui-api-worker"


def test_a_lost_worker_gets_the_item_once_more():
    worker = FlakyWorker("flaky", losses=1)
    scheduler = started([worker])
    try:
        result = scheduler.submit(WorkItem(run=lambda _c: "made it", label="txt2img")).result(10)
    finally:
        scheduler.stop(timeout=5)
    assert (result, worker.calls) == ("made it", 2)


def test_a_second_loss_is_a_503_with_retry_after():
    worker = FlakyWorker("flaky", losses=2)
    scheduler = started([worker])
    try:
        future = scheduler.submit(WorkItem(run=lambda _c: "never", label="txt2img"))
        with pytest.raises(WorkerLost) as caught:
            future.result(10)
    finally:
        scheduler.stop(timeout=5)
    assert caught.value.status_code == 503 and caught.value.headers["Retry-After"]
    assert worker.calls == 2
    # the lane lives on
    scheduler2 = started([FlakyWorker("ok", losses=0)])
    try:
        assert scheduler2.submit(WorkItem(run=lambda _c: 1, label="x")).result(10) == 1
    finally:
        scheduler2.stop(timeout=5)


def test_interrupt_reaches_items_on_every_lane():
    scheduler = started([LocalWorker(), LocalWorker()])
    running = threading.Barrier(3, timeout=10)

    def run(cancel: CancelToken) -> bool:
        running.wait()
        deadline = time.monotonic() + 10
        while not cancel.interrupted and time.monotonic() < deadline:
            time.sleep(0.01)
        return cancel.interrupted

    try:
        futures = [scheduler.submit(WorkItem(run=run, label=f"job{n}")) for n in range(2)]
        running.wait()
        scheduler.interrupt()
        assert [future.result(10) for future in futures] == [True, True]
    finally:
        scheduler.stop(timeout=5)


def test_lane_progress_shows_the_longest_running_job_and_keeps_lanes_apart():
    progress = LaneProgress(ProgressTracker)
    first_in, second_done = threading.Event(), threading.Event()

    def lane_a() -> None:
        progress.begin("job-a", 1, "1", CancelToken(), 0)
        progress.sampling_step(3, 10, lambda: None)
        first_in.set()
        second_done.wait(10)

    def lane_b() -> None:
        first_in.wait(10)
        progress.begin("job-b", 1, "2", CancelToken(), 0)
        progress.sampling_step(7, 20, lambda: None)
        snapshot = progress.snapshot()
        assert snapshot["state"]["job"] == "job-a" and snapshot["state"]["sampling_step"] == 3
        assert [s["state"]["job"] for s in progress.lane_snapshots()] == ["job-a", "job-b"]
        progress.end()
        second_done.set()

    threads = [threading.Thread(target=lane_a), threading.Thread(target=lane_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert progress.busy  # lane a never ended its job
    assert progress.snapshot()["state"]["job_timestamp"] == "1"


class _Job:
    def __init__(self, title: str, vae: str = "Automatic", steps: int = 5) -> None:
        self.model_title = title
        self.options = {"sd_vae": vae}

        class _Sampling:
            pass

        self.sampling = _Sampling()
        self.sampling.steps = steps  # type: ignore[attr-defined]


def test_model_key_is_checkpoint_plus_vae():
    a = RemoteCall("txt2img", (_Job("a.safetensors [1234]"),))
    b = RemoteCall("txt2img", (_Job("a.safetensors [1234]", vae="x.vae.pt"),))
    assert a.model_key == "a.safetensors [1234]|Automatic"
    assert a.model_key != b.model_key


def test_batch_item_joins_remote_jobs_and_cancels_all():
    items = [WorkItem(run=lambda _c: None, label="txt2img", remote=RemoteCall("txt2img", (_Job("m"),), 4))
             for _ in range(3)]
    joined = batch_item(items)
    assert joined.remote.kind == "txt2img_batch" and len(joined.remote.jobs) == 3 and joined.remote.unet_rows == 4
    items[1].cancel.interrupt()
    assert joined.cancel.interrupted
    joined.cancel.skip()
    assert all(item.cancel.skipped for item in items)
    with pytest.raises(ValueError):
        batch_item([WorkItem(run=lambda _c: None, label="extras")])


def test_ray_options_checks_and_lanes():
    assert RayOptions(workers=3).lanes == 3
    assert RayOptions(min_workers=1, max_workers=4).lanes == 4
    assert RayOptions(min_workers=1, max_workers=4).autoscaling
    for bad in ({"workers": 0}, {"min_workers": 2}, {"min_workers": 3, "max_workers": 2}, {"gpus_per_worker": -1}):
        with pytest.raises(ValueError):
            RayOptions(**bad)


def test_ray_flags_parse_without_ray_installed():
    from webui_api.cli import build_parser, ray_options

    parser = build_parser(".")
    args, _ = parser.parse_known_args(["--ray", "--ray-address", "auto", "--ray-min-workers", "1",
                                       "--ray-max-workers", "3"])
    options = ray_options(args, visible_gpus=2)
    assert (options.address, options.workers, options.gpus_per_worker) == ("auto", 2, 1.0)
    assert (options.min_workers, options.max_workers) == (1, 3)
    args, _ = parser.parse_known_args(["--ray"])
    assert ray_options(args, visible_gpus=0).workers == 1 and ray_options(args, visible_gpus=0).gpus_per_worker == 0
    args, _ = parser.parse_known_args([])
    assert ray_options(args) is None


def test_several_ingress_replicas_need_the_shared_task_store():
    from webui_api.cli import build_parser, parse_args, ray_options

    parser = build_parser(".")
    args, _ = parser.parse_known_args(["--ray"])
    assert ray_options(args, visible_gpus=0).ingress_replicas == 1
    args, _ = parser.parse_known_args(["--ray", "--ray-ingress-replicas", "3", "--redis-url", "redis://127.0.0.1:1/0"])
    assert ray_options(args, visible_gpus=0).ingress_replicas == 3
    args, _ = parser.parse_known_args(["--ray", "--ray-ingress-replicas", "2"])
    with pytest.raises(ValueError, match="--ray-ingress-replicas 2 needs --redis-url"):
        ray_options(args, visible_gpus=0)
    with pytest.raises(ValueError, match="needs --redis-url"):
        parse_args(["--ray", "--ray-workers", "1", "--ray-gpus-per-worker", "0", "--ray-ingress-replicas", "2"])
    with pytest.raises(ValueError, match="must be >= 1"):
        RayOptions(ingress_replicas=0)


def test_the_server_modules_do_not_import_ray():
    """Ray stays optional: only --ray (webui_api.cluster) imports it."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, webui_api.app, webui_api.cli, webui_api.scheduler, webui_api.workers, "
            "webui_api.cluster.board; print('ray' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False"


def test_around_wrappers_time_the_item_on_any_worker_retry_included():
    """Timings (serving hooks) wrap the execution, not the local closure, so a remote worker's
    jobs are timed too; a retried item is timed once, over both tries."""
    worker = FlakyWorker("remote-like", losses=1)
    calls: list[str] = []

    def around(execute: Any) -> Any:
        calls.append("before")
        result = execute()
        calls.append("after")
        return result

    scheduler = started([worker])
    try:
        result = scheduler.submit(WorkItem(run=lambda _c: "ok", label="txt2img", around=(around,))).result(10)
    finally:
        scheduler.stop(timeout=5)
    assert (result, calls, worker.calls) == ("ok", ["before", "after"], 2)


def test_a_batch_call_gives_each_member_its_own_cancel_token():
    """On the replica, one request's interrupt stops only its rows (engine.batched's GroupCancel)."""
    from types import SimpleNamespace

    from webui_api.workers import run_call

    class BatchEngine:
        def txt2img_batch(self, jobs, progress, cancels, unet_rows):
            self.cancels = cancels
            return [f"result {n}" for n in range(len(jobs))]

    engine, tokens = BatchEngine(), [CancelToken(), CancelToken()]
    call = RemoteCall("txt2img_batch", (SimpleNamespace(), SimpleNamespace()), unet_rows=4)
    assert run_call(engine, None, call, tokens) == ["result 0", "result 1"]
    assert engine.cancels == tokens
    with pytest.raises(ValueError, match="needs 2 cancel token"):
        run_call(engine, None, call, tokens[:1])
