"""CUDA out of memory in the middle of a job: that client gets a 503, memory is released, the
next job runs. The OOM is raised from the model's own forward (patched on the instance)."""

from __future__ import annotations

import pytest
import torch

from webui_api.engine.device_errors import client_error_for
from webui_api.errors import DeviceOutOfMemory

PAYLOAD = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}


def test_oom_mid_job_is_a_503_then_the_next_job_runs(engine, make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[bool] = []
    real_free = engine.free_memory
    monkeypatch.setattr(engine, "free_memory", lambda: (freed.append(True), real_free())[1])
    client = make_client()
    unet = engine.loaded.unet
    real_forward = unet.forward
    calls = {"n": 0}

    def forward_that_runs_out(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the second UNet call: mid-sampling
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_that_runs_out)
    failed = client.post("/sdapi/v1/txt2img", json=PAYLOAD)
    assert failed.status_code == 503
    body = failed.json()
    assert body["error"] == "OutOfMemoryError" and "Tried to allocate 20.00 GiB" in body["detail"]
    assert set(body) == {"error", "detail", "body", "errors"}
    assert int(failed.headers["Retry-After"]) > 0
    assert freed == [True]

    after = client.post("/sdapi/v1/txt2img", json=PAYLOAD)
    assert after.status_code == 200 and len(after.json()["images"]) == 1
    assert calls["n"] > 2


def test_other_failures_are_left_as_they_are() -> None:
    failure = ValueError("bad")
    assert client_error_for(failure) is failure
    assert isinstance(client_error_for(torch.OutOfMemoryError("")), DeviceOutOfMemory)


def test_a_cuda_engine_empties_the_cuda_cache_when_freeing(monkeypatch: pytest.MonkeyPatch) -> None:
    from webui_api.engine.facade import Engine

    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    Engine(device="cuda", dtype="float32").free_memory()  # built, never run: no CUDA needed
    Engine(device="cpu").free_memory()
    assert emptied == [True]
