"""Cross-request batching without a model: the batch key and how the scheduler forms batches."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from tests.engine.helpers import make_job
from tests.test_scheduler_guards import hold_worker
from webui_api.batching import BatchingConfig, batch_key, network_tags, why_not_batchable
from webui_api.jobs import HiresParams
from webui_api.progress import ProgressTracker
from webui_api.scheduler import BatchSlot, Scheduler, WorkItem

# -- the key -------------------------------------------------------------------------------


def test_jobs_differing_only_per_image_share_a_key():
    a = make_job(prompts=("a cat",), seeds=(1,), options={"eta_ancestral": 1.0})
    b = make_job(
        prompts=("a dog, long prompt",), negative_prompts=("ugly",), seeds=(99,), options={"eta_ancestral": 1.0}
    )
    assert batch_key(a) is not None and batch_key(a) == batch_key(b)


@pytest.mark.parametrize("change", [
    {"steps": 5}, {"sampler": "Euler a"}, {"scheduler": "karras"}, {"cfg_scale": 5.0},
    {"width": 72}, {"height": 72}, {"options": {"sd_vae": "other.safetensors"}},
])
def test_anything_that_changes_sampling_separates_keys(change):
    assert batch_key(make_job(**change)) != batch_key(make_job())


def test_clip_skip_tiling_model_and_loras_separate_keys():
    base = make_job()
    for other in (dataclasses.replace(base, clip_skip=2), dataclasses.replace(base, tiling=True),
                  dataclasses.replace(base, model_title="other.safetensors"),
                  dataclasses.replace(base, prompts=("a cat <lora:x:0.5>",))):
        assert batch_key(other) != batch_key(base)
    assert network_tags("a <lora:x:0.5> b <hypernet:y:1>") == ("<lora:x:0.5>", "<hypernet:y:1>")


def test_jobs_that_must_run_alone_have_no_key():
    hires = HiresParams(128, 128, "Latent", "bilinear", False, 4, 0.5, make_job().sampling, ("a",), ("",))
    for job, reason in [
        (make_job(n_iter=2, seeds=(1, 2)), "n_iter 2"),
        (dataclasses.replace(make_job(), hires=hires), "hires fix"),
        (make_job(sampler="DPM adaptive"), "sampler 'DPM adaptive'"),
        (dataclasses.replace(make_job(), restore_faces=True), "restore_faces"),
        (dataclasses.replace(make_job(), kind="img2img"), "kind 'img2img'"),
    ]:
        assert why_not_batchable(job) == reason and batch_key(job) is None


def test_config_is_validated():
    assert not BatchingConfig(max_size=1).enabled and BatchingConfig(max_size=2).enabled
    with pytest.raises(ValueError, match="max_size=0"):
        BatchingConfig(max_size=0)


# -- the scheduler --------------------------------------------------------------------------


class Recorder:
    """Batchable fake items: records which items ran together, in which order."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def item(
        self, name: str, key="k", size: int = 1, fail_in_group: bool = False, fail_alone: bool = False
    ) -> WorkItem:
        def run(_cancel):
            with self.lock:
                self.runs.append((name,))
            if fail_alone:
                raise RuntimeError(f"{name} fails")
            return name

        def run_group(items):
            with self.lock:
                self.runs.append(tuple(i.label for i in items))
            if any(i.batch.payload["fail_in_group"] for i in items):
                raise RuntimeError("the group fails")
            return [i.label for i in items]

        slot = BatchSlot(key=key, size=size, run_group=run_group, payload={"fail_in_group": fail_in_group})
        return WorkItem(run=run, label=name, batch=slot)


@pytest.fixture()
def make_scheduler():
    made = []

    def make(max_size=4, wait_ms=0.0, **kwargs) -> Scheduler:
        scheduler = Scheduler(ProgressTracker(), batching=BatchingConfig(max_size, wait_ms), **kwargs)
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=5)


def queue_then_release(scheduler: Scheduler, items_with_priority) -> list:
    blocker = hold_worker(scheduler)
    futures = [scheduler.submit(item, priority) for item, priority in items_with_priority]
    blocker.release.set()
    return [future.result(timeout=30) if not future.cancelled() else None for future in futures]


def test_compatible_queued_jobs_run_as_one_batch_in_priority_order(make_scheduler):
    sizes = []
    scheduler = make_scheduler(on_batch=sizes.append)
    rec = Recorder()
    results = queue_then_release(scheduler, [
        (rec.item("a"), 10), (rec.item("x", key="other"), 10), (rec.item("b"), 10), (rec.item("first"), 0),
    ])
    assert results == ["a", "x", "b", "first"]
    assert rec.runs == [("first", "a", "b"), ("x",)]
    assert sizes == [3]


def test_the_head_is_always_the_highest_priority_job(make_scheduler):
    rec = Recorder()
    queue_then_release(make_scheduler(), [(rec.item("low", key="k1"), 10), (rec.item("high", key="k2"), 0)])
    assert rec.runs == [("high",), ("low",)]


def test_max_batch_size_counts_images(make_scheduler):
    rec = Recorder()
    queue_then_release(make_scheduler(max_size=4), [
        (rec.item("a", size=2), 10), (rec.item("b", size=3), 10), (rec.item("c", size=1), 10),
        (rec.item("d", size=1), 10), (rec.item("e", size=1), 10),
    ])
    assert rec.runs == [("a", "c", "d"), ("b", "e")]


def test_a_failing_batch_retries_each_job_alone(make_scheduler):
    scheduler = make_scheduler()
    rec = Recorder()
    blocker = hold_worker(scheduler)
    good = scheduler.submit(rec.item("good"))
    bad = scheduler.submit(rec.item("bad", fail_in_group=True, fail_alone=True))
    blocker.release.set()
    assert good.result(timeout=30) == "good"
    with pytest.raises(RuntimeError, match="bad fails"):
        bad.result(timeout=30)
    assert rec.runs == [("good", "bad"), ("good",), ("bad",)]


def test_a_job_cancelled_while_queued_is_left_out(make_scheduler):
    scheduler = make_scheduler()
    rec = Recorder()
    blocker = hold_worker(scheduler)
    futures = [scheduler.submit(rec.item(name)) for name in ("a", "b", "c")]
    assert futures[1].cancel()
    blocker.release.set()
    assert futures[0].result(timeout=30) == "a" and futures[2].result(timeout=30) == "c"
    assert rec.runs == [("a", "c")]


def test_batching_off_runs_every_job_alone(make_scheduler):
    rec = Recorder()
    queue_then_release(make_scheduler(max_size=1), [(rec.item("a"), 10), (rec.item("b"), 10)])
    assert rec.runs == [("a",), ("b",)]


def test_the_wait_window_gathers_a_job_that_arrives_late(make_scheduler):
    scheduler = make_scheduler(wait_ms=2000.0)
    rec = Recorder()
    first = scheduler.submit(rec.item("a"))
    second = scheduler.submit(rec.item("b"))  # arrives while "a" waits for partners
    assert first.result(timeout=30) == "a" and second.result(timeout=30) == "b"
    assert rec.runs == [("a", "b")]


def test_interrupt_reaches_every_job_of_the_running_batch(make_scheduler):
    scheduler = make_scheduler()
    started, release, seen = threading.Event(), threading.Event(), []

    def run_group(items):
        started.set()
        assert release.wait(30)
        seen.extend(item.cancel.interrupted for item in items)
        return [None for _ in items]

    def item(name):
        return WorkItem(run=lambda _c: None, label=name, batch=BatchSlot("k", 1, run_group))

    blocker = hold_worker(scheduler)
    futures = [scheduler.submit(item(n)) for n in ("a", "b")]
    blocker.release.set()
    assert started.wait(30)
    scheduler.interrupt()
    release.set()
    for future in futures:
        future.result(timeout=30)
    assert seen == [True, True]
