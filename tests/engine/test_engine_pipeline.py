"""txt2img end to end on the tiny model: determinism, seeds, batches, interrupt and skip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.pipeline import run_txt2img
from webui_api.errors import BadRequest
from webui_api.progress import CancelToken


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(g.image) for g in result.images]


def run(model, job, observer=None, cancel=None):
    return run_txt2img(model, job, observer or RecordingObserver(), cancel or CancelToken())


def test_same_job_twice_gives_identical_pixels(tiny_model):
    job = make_job(seeds=(123,))
    first, second = pixels(run(tiny_model, job)), pixels(run(tiny_model, job))
    assert first[0].shape == (64, 64, 3)
    assert np.array_equal(first[0], second[0])


def test_different_seeds_differ(tiny_model):
    a = pixels(run(tiny_model, make_job(seeds=(1,))))[0]
    b = pixels(run(tiny_model, make_job(seeds=(2,))))[0]
    assert not np.array_equal(a, b)


def test_prompt_changes_the_image(tiny_model):
    a = pixels(run(tiny_model, make_job(prompts=("a cat",))))[0]
    b = pixels(run(tiny_model, make_job(prompts=("a dog",))))[0]
    assert not np.array_equal(a, b)


def test_batches_give_images_in_order_with_their_seeds(tiny_model):
    job = make_job(
        prompts=("p0", "p1", "p2", "p3"),
        negative_prompts=("n0", "n1", "n2", "n3"),
        seeds=(10, 11, 12, 13),
        subseeds=(20, 21, 22, 23),
        batch_size=2,
        n_iter=2,
    )
    observer = RecordingObserver()
    result = run(tiny_model, job, observer)
    assert [(g.seed, g.subseed, g.prompt, g.negative_prompt) for g in result.images] == [
        (10, 20, "p0", "n0"),
        (11, 21, "p1", "n1"),
        (12, 22, "p2", "n2"),
        (13, 23, "p3", "n3"),
    ]
    assert not result.interrupted
    assert observer.events[0] == ("batch_started", 0, 2) and observer.events[-1] == ("batch_finished", 1)
    assert observer.steps_of_batch(0) == [0, 1, 2, 3] and observer.steps_of_batch(1) == [0, 1, 2, 3]
    assert all(e[2] == 4 for e in observer.events if e[0] == "step")


def test_image_in_a_batch_matches_it_generated_alone(tiny_model):
    batch = run(tiny_model, make_job(prompts=("a cat",), seeds=(5, 6), batch_size=2))
    alone = run(tiny_model, make_job(prompts=("a cat",), seeds=(6,), subseeds=(1001,)))
    # same noise and conditioning; batching the UNet may move a few pixels by one level
    diff = np.abs(pixels(batch)[1].astype(int) - pixels(alone)[0].astype(int))
    assert diff.max() <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "LMS"])
def test_other_samplers_run_deterministically(tiny_model, sampler):
    job = make_job(sampler=sampler, seeds=(3,))
    assert np.array_equal(pixels(run(tiny_model, job))[0], pixels(run(tiny_model, job))[0])


def test_ensd_changes_ancestral_images_only(tiny_model):
    def image(sampler, ensd):
        return pixels(run(tiny_model, make_job(sampler=sampler, seeds=(3,), eta_noise_seed_delta=ensd)))[0]

    assert not np.array_equal(image("Euler a", 0), image("Euler a", 31337))
    assert np.array_equal(image("Euler", 0), image("Euler", 31337))  # s_churn 0: its noise is unused


def test_interrupt_at_step_3_returns_images_and_stops(tiny_model):
    cancel = CancelToken()
    observer = RecordingObserver(on_step=lambda step: cancel.interrupt() if step == 2 else None)
    job = make_job(seeds=(1, 2, 3, 4), batch_size=2, n_iter=2, steps=6)
    result = run(tiny_model, job, observer, cancel)
    assert result.interrupted
    assert [g.seed for g in result.images] == [1, 2]
    assert observer.steps_of_batch(0) == [0, 1, 2]
    assert ("batch_started", 1, 2) not in observer.events


def test_interrupted_batch_decodes_the_last_x0_estimate(tiny_model):
    cancel = CancelToken()
    observer = RecordingObserver(on_step=lambda step: cancel.interrupt() if step == 2 else None)
    interrupted = pixels(run(tiny_model, make_job(seeds=(9,), steps=6), observer, cancel))[0]
    finished = pixels(run(tiny_model, make_job(seeds=(9,), steps=6)))[0]
    assert interrupted.std() > 0  # a real decoded image, not a blank
    assert not np.array_equal(interrupted, finished)


def test_skip_ends_only_the_current_batch(tiny_model):
    cancel = CancelToken()
    seen = {"batch": 0}

    def on_step(step):
        if seen["batch"] == 0 and step == 2:
            cancel.skip()

    observer = RecordingObserver(on_step=on_step)
    original_finished = observer.batch_finished

    def batch_finished(n):
        seen["batch"] = n + 1
        original_finished(n)

    observer.batch_finished = batch_finished
    job = make_job(seeds=(1, 2), n_iter=2, steps=5)
    result = run(tiny_model, job, observer, cancel)
    assert not result.interrupted
    assert [g.seed for g in result.images] == [1, 2]
    assert observer.steps_of_batch(0) == [0, 1, 2]
    assert observer.steps_of_batch(1) == [0, 1, 2, 3, 4]
    full = pixels(run(tiny_model, make_job(seeds=(2,), steps=5)))[0]
    assert np.array_equal(pixels(result)[1], full)


def test_interrupt_before_start_gives_no_images(tiny_model):
    cancel = CancelToken()
    cancel.interrupt()
    observer = RecordingObserver()
    result = run(tiny_model, make_job(), observer, cancel)
    assert result.images == [] and result.interrupted and observer.events == []


def test_previews_are_small_images(tiny_model):
    observer = RecordingObserver(render_previews=True)
    run(tiny_model, make_job(steps=2), observer)
    assert [p.size for p in observer.previews] == [(8, 8), (8, 8)]


def test_global_rng_untouched_by_a_job(tiny_model):
    before = torch.get_rng_state()
    run(tiny_model, make_job(sampler="Euler a", steps=2))
    assert torch.equal(before, torch.get_rng_state())


def test_a_sampler_without_a_function_is_rejected(tiny_model):
    """Names are resolved by the job builder (tests/test_job_sampler_resolution.py); the engine
    still refuses an entry it cannot run."""
    job = make_job()
    job = replace(job, sampling=replace(job.sampling, sampler=replace(job.sampling.sampler, function=None)))
    with pytest.raises(BadRequest, match="not implemented"):
        run(tiny_model, job)


def test_mismatched_lists_are_rejected(tiny_model):
    job = make_job(seeds=(1, 2))  # one image but two seeds
    with pytest.raises(BadRequest, match="batch_size"):
        run(tiny_model, job)


@pytest.mark.slow
def test_512_image_20_steps_is_fast(tiny_model):
    import time

    start = time.perf_counter()
    result = run(tiny_model, make_job(width=512, height=512, steps=20))
    assert result.images[0].image.size == (512, 512)
    assert time.perf_counter() - start < 5.0


def test_eta_ancestral_option_zero_makes_euler_a_deterministic_like_euler(tiny_model):
    euler = pixels(run(tiny_model, make_job(sampler="Euler", seeds=(4,))))[0]
    euler_a = pixels(run(tiny_model, make_job(sampler="Euler a", seeds=(4,))))[0]
    euler_a_eta0 = pixels(run(tiny_model, make_job(sampler="Euler a", seeds=(4,), options={"eta_ancestral": 0.0})))[0]
    assert not np.array_equal(euler, euler_a)
    assert np.abs(euler.astype(int) - euler_a_eta0.astype(int)).max() <= 1


@pytest.mark.parametrize("options", [{"sgm_noise_multiplier": True}, {"sigma_max": 10.0}, {"rho": 3.0}])
def test_schedule_options_change_the_image(tiny_model, options):
    job = make_job(scheduler="karras", seeds=(4,))
    changed = make_job(scheduler="karras", seeds=(4,), options=options)
    assert not np.array_equal(pixels(run(tiny_model, job))[0], pixels(run(tiny_model, changed))[0])
