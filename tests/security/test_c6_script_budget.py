"""Class 6 (leftover): one budget for a whole script run, not only for each of its jobs.

Every x/y/z cell and prompts-from-file line passes the per-job guards, but their number is the
caller's; --max-script-images and --max-script-work bound the run as a whole, checked while it
is planned, so an oversized run is refused before anything is queued."""

from __future__ import annotations

import pytest

from tests.security.helpers import assert_a1111_error, decode
from tests.security.test_c6_script_guards import PROMPTS, prompts_script, xyz_script
from webui_api.serving.guards import RequestLimits
from webui_api.serving.script_budget import JobWork, ScriptBudget, ScriptLimits

SEED_AXIS = "Seed"


def seeds(count: int) -> str:
    return ", ".join(str(n) for n in range(1, count + 1))


@pytest.fixture()
def budgeted(make_client, monkeypatch):
    """A server allowing 4 images and 1 step-megapixel per script run; `queued` records every
    work item submitted to the scheduler (a refused run must submit none)."""
    client = make_client(guards=RequestLimits(max_script_images=4, max_script_work=1))
    scheduler = client.app.state.runtime.scheduler
    original = scheduler.submit
    client.queued = []

    def spy(item, *args, **kwargs):
        client.queued.append(item.label)
        return original(item, *args, **kwargs)

    monkeypatch.setattr(scheduler, "submit", spy)
    return client


def test_an_xyz_plot_over_the_image_budget_is_refused_before_anything_runs(budgeted):
    response = budgeted.post("/sdapi/v1/txt2img", json=xyz_script(SEED_AXIS, seeds(5)))
    body = assert_a1111_error(response, 413, "--max-script-images", "x/y/z plot", "at least 5")
    assert body["error"] == "LimitExceeded" and body["errors"] == "--max-script-images 4"
    assert budgeted.queued == []


def test_an_xyz_plot_within_the_budget_runs(budgeted):
    response = budgeted.post("/sdapi/v1/txt2img", json=xyz_script(SEED_AXIS, seeds(4)))
    assert response.status_code == 200, response.text
    assert budgeted.queued == ["txt2img script"]
    assert decode(response.json()["images"][0]).size == (4 * 32, 32)  # the grid of the four cells


def test_prompts_from_file_with_many_lines_is_refused_before_anything_runs(budgeted):
    lines = "\n".join(f"line {n}" for n in range(500))
    response = budgeted.post("/sdapi/v1/txt2img", json=prompts_script(lines))
    assert_a1111_error(response, 413, "--max-script-images", PROMPTS)
    assert budgeted.queued == []


def test_prompts_from_file_over_the_work_budget_is_refused(budgeted):
    """Each line is 10 steps x 256x256 = 0.66 step-megapixels: the second takes the run over 1."""
    lines = "\n".join('--prompt "a cat" --steps 10 --width 256 --height 256' for _ in range(3))
    response = budgeted.post("/sdapi/v1/txt2img", json=prompts_script(lines))
    assert_a1111_error(response, 413, "--max-script-work", "at least 1.31")
    assert budgeted.queued == []


def test_prompts_from_file_within_the_budget_runs(budgeted):
    response = budgeted.post("/sdapi/v1/txt2img", json=prompts_script("one\ntwo"))
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2


def test_an_async_task_over_the_budget_is_refused_at_submission(budgeted):
    response = budgeted.post("/agent-scheduler/v1/queue/txt2img", json=xyz_script(SEED_AXIS, seeds(5)))
    assert_a1111_error(response, 413, "--max-script-images")
    assert budgeted.get("/agent-scheduler/v1/queue").json()["total_pending_tasks"] == 0
    assert budgeted.queued == []


def test_zero_turns_the_budget_off(make_client):
    client = make_client(guards=RequestLimits(max_script_images=0, max_script_work=0, max_steps=10))
    assert client.post("/sdapi/v1/txt2img", json=xyz_script(SEED_AXIS, seeds(5))).status_code == 200


def test_the_budget_counts_batches_and_hires_passes():
    """job_work: images = batch_size x n_iter; a hires pass adds its own steps at its own size."""
    from webui_api.job_builder import build_txt2img
    from webui_api.schemas.generation import Txt2ImgRequest
    from webui_api.serving.script_budget import job_work

    plain = build_txt2img(Txt2ImgRequest(steps=10, width=512, height=512, batch_size=2, n_iter=3), {})
    assert job_work(plain) == JobWork(6, 6 * 10 * 512 * 512 / 1e6)
    hires = build_txt2img(
        Txt2ImgRequest(steps=10, width=512, height=512, enable_hr=True, hr_scale=2, hr_second_pass_steps=5),
        {},
    )
    assert job_work(hires) == JobWork(1, (10 * 512 * 512 + 5 * 1024 * 1024) / 1e6)


def test_a_budget_stops_at_the_first_job_over_it():
    budget = ScriptBudget(ScriptLimits(max_images=3, max_work=0), "script 'x'")
    budget.charge(JobWork(2, 1.0))
    budget.charge(JobWork(1, 1.0))
    with pytest.raises(Exception, match=r"at least 4, more than the limit of 3 \(--max-script-images\)"):
        budget.charge(JobWork(1, 1.0))


def test_sd_upscale_charges_its_tiles_not_its_base_job():
    """sd upscale runs one job per tile batch: the budget sees tiles x n_iter images."""
    from types import SimpleNamespace

    from webui_api.builtin_scripts.sd_upscale import tile_work

    base = SimpleNamespace(sampling=SimpleNamespace(steps=20), width=512, height=512)
    assert tile_work(base, 9) == JobWork(9, 9 * 20 * 512 * 512 / 1e6)
