"""Cross-request batching end to end: concurrent txt2img requests merged into one UNet batch
answer with exactly the bytes each request gets on its own."""

from __future__ import annotations

import json
import threading

import pytest

from tests.api.payloads import webuiapi_txt2img
from tests.test_scheduler_guards import hold_worker

SAMPLERS = ["Euler a", "DPM++ SDE"]


@pytest.fixture()
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def payloads(sampler: str) -> list[dict]:
    return [
        webuiapi_txt2img(
            prompt="a lighthouse", negative_prompt="fog", seed=11, subseed=5, sampler_name=sampler, width=64, height=48
        ),
        webuiapi_txt2img(
            prompt=", ".join(f"tag{i}" for i in range(80)),
            seed=12,
            subseed=6,
            batch_size=2,
            sampler_name=sampler,
            width=64,
            height=48,
        ),
        webuiapi_txt2img(
            prompt="a boat", negative_prompt="", seed=13, subseed=7, sampler_name=sampler, width=64, height=48
        ),
    ]


def post_concurrently(client, bodies: list[dict]) -> list[dict]:
    """Hold the worker, queue every request, then let it go: the queued jobs form one batch."""
    runtime = client.app.state.runtime
    blocker = hold_worker(runtime.scheduler)
    answers: list = [None] * len(bodies)

    def post(index: int) -> None:
        answers[index] = client.post("/sdapi/v1/txt2img", json=bodies[index])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for _ in range(200):
        if runtime.scheduler.pending >= len(bodies):
            break
        threading.Event().wait(0.05)
    assert runtime.scheduler.pending == len(bodies), "the requests never queued"
    blocker.release.set()
    for thread in threads:
        thread.join(60)
    assert all(answer.status_code == 200 for answer in answers), [a.text[:300] for a in answers]
    return [answer.json() for answer in answers]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_batched_requests_answer_the_bytes_they_get_alone(make_client, one_thread, sampler):
    batches = []
    client = make_client(batch_max_size=4)
    client.app.state.runtime.scheduler.on_batch = batches.append
    merged = post_concurrently(client, payloads(sampler))
    assert batches == [3]
    alone = [client.post("/sdapi/v1/txt2img", json=body).json() for body in payloads(sampler)]
    assert batches == [3], "a lone request must not form a batch"
    for together, single in zip(merged, alone, strict=True):
        assert together["images"] == single["images"]
        assert json.loads(together["info"])["infotexts"] == json.loads(single["info"])["infotexts"]


def test_different_steps_are_never_batched(make_client, one_thread):
    batches = []
    client = make_client(batch_max_size=4)
    client.app.state.runtime.scheduler.on_batch = batches.append
    bodies = [webuiapi_txt2img(seed=1, steps=3), webuiapi_txt2img(seed=2, steps=4), webuiapi_txt2img(seed=3, steps=3)]
    answers = post_concurrently(client, bodies)
    assert batches == [2]
    assert [len(a["images"]) for a in answers] == [1, 1, 1]


def test_batching_off_is_the_plain_pipeline(make_client, engine, one_thread):
    """--batch-max-size 1: work items carry no batch slot and answer what the engine gives."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from tests.engine.helpers import RecordingObserver
    from webui_api.job_builder import build_txt2img
    from webui_api.progress import CancelToken
    from webui_api.schemas.generation import Txt2ImgRequest

    client = make_client(batch_max_size=1)
    body = webuiapi_txt2img(seed=21)
    answer = client.post("/sdapi/v1/txt2img", json=body).json()
    runtime = client.app.state.runtime
    job = build_txt2img(Txt2ImgRequest(**body), runtime.options.with_overrides({}))
    direct = engine.txt2img(job, RecordingObserver(), CancelToken())  # no unet_rows: the plain pipeline
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
    assert np.array_equal(served, np.asarray(direct.images[0].image.convert("RGB")))
