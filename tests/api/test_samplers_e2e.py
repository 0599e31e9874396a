"""Every A1111 sampler end to end: POST /sdapi/v1/txt2img on the embedded tiny model (64x64,
few steps), deterministic for a fixed seed; progress and interrupt for every sampler.

The fast set runs each sampler over HTTP with one scheduler, checks determinism for one
sampler of each family, and runs every sampler through the engine with Automatic (progress,
previews, interrupt); the whole sampler x scheduler matrix, twice each for determinism, is
marked slow.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from samplers.registry import SAMPLERS, SCHEDULERS
from tests.api.payloads import webuiapi_txt2img
from tests.engine.helpers import RecordingObserver, make_job

NAMES = [s.name for s in SAMPLERS]
STEPS = 4  # UniPC needs at least its order (3) of DDIM timesteps
EXTRA_SCHEDULER = {name: ("exponential" if i % 2 else "karras") for i, name in enumerate(NAMES)}


def _pixels(body: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    return np.asarray(image.convert("RGB"))


def _generate(client, sampler: str, scheduler: str, seed: int = 77, **extra) -> dict:
    payload = webuiapi_txt2img(sampler_name=sampler, sampler_index=sampler, scheduler=scheduler, seed=seed,
                               steps=STEPS, eta=None, **extra)
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, f"{sampler} / {scheduler}: {response.text}"
    return response.json()


def test_samplers_endpoint_lists_all_twenty(client):
    listed = client.get("/sdapi/v1/samplers").json()
    assert [entry["name"] for entry in listed] == NAMES and len(NAMES) == 20


@pytest.mark.parametrize("sampler", NAMES)
def test_every_sampler_runs_over_http(client, sampler):
    """One request per sampler with a non-default scheduler (Automatic runs in the progress test
    below); determinism is checked for one sampler of each family here and for every sampler
    x scheduler pair in the slow matrix."""
    body = _generate(client, sampler, EXTRA_SCHEDULER[sampler])
    info = json.loads(body["info"])
    assert info["sampler_name"] == sampler
    assert f"Sampler: {sampler}," in info["infotexts"][0]
    assert _pixels(body).shape == (64, 64, 3)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DDIM", "LCM"])
def test_a_fixed_seed_is_deterministic(client, sampler):
    first = _generate(client, sampler, "automatic")
    assert np.array_equal(_pixels(first), _pixels(_generate(client, sampler, "automatic")))


@pytest.mark.parametrize("sampler", ["UniPC"])
def test_the_seed_matters(client, sampler):
    first, other = _generate(client, sampler, "automatic"), _generate(client, sampler, "automatic", seed=78)
    assert not np.array_equal(_pixels(first), _pixels(other))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [s.name for s in SCHEDULERS])
@pytest.mark.parametrize("sampler", NAMES)
def test_sampler_scheduler_matrix(client, sampler, scheduler):
    body = _generate(client, sampler, scheduler)
    assert np.array_equal(_pixels(body), _pixels(_generate(client, sampler, scheduler)))


def test_unknown_sampler_with_a_scheduler_suffix_keeps_the_scheduler(client):
    """A1111 strips a known scheduler suffix first, then falls back to DPM++ 2M for the rest."""
    import json

    payload = webuiapi_txt2img(sampler_name="Euler z Karras", sampler_index=None)
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sampler_name"] == "DPM++ 2M"


def test_unipc_with_too_few_steps_says_why(client):
    payload = webuiapi_txt2img(sampler_name="UniPC", sampler_index="UniPC", steps=2)
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 400
    assert "UniPC order must be < sampling steps" in response.text


# --- progress and interrupt, through the engine pipeline -------------------------------------------


@pytest.fixture(scope="module")
def tiny(engine):
    """The API tests' engine model (built once per session)."""
    return engine.loaded


@pytest.mark.parametrize("sampler", NAMES)
def test_progress_and_interrupt_in_every_sampler(tiny, sampler):
    """Each step is reported with a preview (adaptive samplers included); an interrupt at step 2
    stops the sampler at its next model call, the running batch decodes its last estimate and
    the second batch never starts."""
    from webui_api.engine.pipeline import run_txt2img
    from webui_api.progress import CancelToken

    cancel = CancelToken()
    observer = RecordingObserver(on_step=lambda step: cancel.interrupt() if step == 2 else None, render_previews=True)
    result = run_txt2img(tiny, make_job(sampler=sampler, steps=8, n_iter=2, seeds=(1, 2)), observer, cancel)
    assert observer.steps_of_batch(0) == [0, 1, 2]
    assert len(observer.previews) == 3 and all(p is not None for p in observer.previews)
    assert result.interrupted and len(result.images) == 1


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize(
    "sampler",
    [
        "DPM++ 2M SDE",
        pytest.param("DPM++ SDE", marks=pytest.mark.slow),
        pytest.param("DPM++ 3M SDE", marks=pytest.mark.slow),
    ],
)
def test_sde_samplers_give_an_image_the_same_noise_in_any_batch(tiny, sampler):
    """A1111's reason for the per-image Brownian trees: seed 6 alone or second in a batch of two
    samples with the same noise (the images agree up to the UNet's batched rounding)."""
    from webui_api.engine.pipeline import run_txt2img
    from webui_api.progress import CancelToken

    pair = run_txt2img(tiny, make_job(sampler=sampler, steps=6, batch_size=2, seeds=(5, 6)), RecordingObserver(),
                       CancelToken())
    alone = run_txt2img(tiny, make_job(sampler=sampler, steps=6, seeds=(6,)), RecordingObserver(), CancelToken())
    diff = np.abs(np.asarray(pair.images[1].image, dtype=int) - np.asarray(alone.images[0].image, dtype=int))
    assert diff.max() <= 1


def test_brownian_noise_sampler_wiring(tiny):
    from samplers.brownian import BrownianTreeNoise
    from webui_api.engine.denoiser import make_inner
    from webui_api.engine.pipeline import BatchSpec, make_image_rng, make_noise_sampler, make_schedule, resolve_plan

    for source in ("CPU", "GPU"):
        job = make_job(sampler="DPM++ 2M SDE", steps=5, batch_size=2, seeds=(3, 4), randn_source=source)
        plan = resolve_plan(job)
        batch = BatchSpec.of(job, 0)
        schedule = make_schedule(tiny, job, plan, make_inner(tiny, plan.sampler.kind))
        noise = make_noise_sampler(tiny, job, plan, batch, make_image_rng(tiny, job, batch), schedule)
        assert isinstance(noise, BrownianTreeNoise) and len(noise.trees) == 2
    euler_a = make_job(sampler="Euler a", steps=5)
    plan = resolve_plan(euler_a)
    batch = BatchSpec.of(euler_a, 0)
    rng = make_image_rng(tiny, euler_a, batch)
    assert not isinstance(make_noise_sampler(tiny, euler_a, plan, batch, rng, torch.ones(6)), BrownianTreeNoise)
