"""Faults mid-job: an engine exception and an out-of-memory error reach that client as a clear
error in A1111's shape, the worker recovers (memory released), and the next job succeeds."""

from __future__ import annotations

import gc
import weakref

from tests.security.helpers import TINY

FOUR_STEPS = {**TINY, "steps": 4, "seed": 77}


def failing_once(original, make_error, held: list):
    """engine.txt2img that dies at sampling step 2 of its first call, holding a 32 MB tensor
    (what a real job holds when the device runs out), and runs normally afterwards."""
    import torch

    calls = []

    def txt2img(job, progress, cancel, **kwargs):
        calls.append(job)
        if len(calls) > 1:
            return original(job, progress, cancel, **kwargs)

        class DiesMidJob:
            def __getattr__(self, name):
                return getattr(progress, name)

            def sampling_step(self, step, total_steps, make_preview):
                if step >= 2:
                    activations = torch.empty(8 * 1024 * 1024)
                    held.append(weakref.ref(activations))
                    raise make_error()
                progress.sampling_step(step, total_steps, make_preview)

        return original(job, DiesMidJob(), cancel, **kwargs)

    return txt2img, calls


def run_fault(make_client, engine, monkeypatch, make_error):
    held: list = []
    freed: list = []
    original_free = engine.free_memory
    monkeypatch.setattr(engine, "free_memory", lambda: (freed.append(True), original_free()))
    patched, calls = failing_once(engine.txt2img, make_error, held)
    monkeypatch.setattr(engine, "txt2img", patched)
    client = make_client()
    failed = client.post("/sdapi/v1/txt2img", json=FOUR_STEPS)
    recovered = client.post("/sdapi/v1/txt2img", json=FOUR_STEPS)
    gc.collect()
    return failed, recovered, held, freed, calls, client


def test_an_engine_exception_mid_job_is_that_clients_error_and_the_next_job_runs(make_client, engine, monkeypatch):
    failed, recovered, held, freed, calls, client = run_fault(
        make_client, engine, monkeypatch, lambda: RuntimeError("simulated kernel failure at step 2")
    )
    assert failed.status_code == 500
    body = failed.json()
    assert body == {"error": "RuntimeError", "detail": "", "body": "", "errors": "simulated kernel failure at step 2"}
    assert recovered.status_code == 200 and len(recovered.json()["images"]) == 1
    assert len(calls) == 2 and freed, "the scheduler frees memory after a failed item"
    assert held and held[0]() is None, "the failed job's tensors are released"
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_out_of_memory_mid_job_is_a_clear_error_memory_is_released_and_the_next_job_matches(
    make_client, engine, monkeypatch
):
    import torch

    message = "CUDA out of memory. Tried to allocate 20.00 GiB"
    failed, recovered, held, freed, _, client = run_fault(
        make_client, engine, monkeypatch, lambda: torch.OutOfMemoryError(message)
    )
    assert failed.status_code == 503 and failed.headers["Retry-After"]  # the device is busy, not the input bad
    body = failed.json()
    assert body["error"] == "OutOfMemoryError"
    assert freed and held and held[0]() is None
    assert recovered.status_code == 200
    monkeypatch.undo()
    clean = make_client().post("/sdapi/v1/txt2img", json=FOUR_STEPS)
    assert clean.json()["images"] == recovered.json()["images"], "the job after the fault is not disturbed by it"
