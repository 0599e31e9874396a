"""Class 5 (leftover): the configured image pixel budget reaches the work that runs outside a
request's context: the scheduler's lane threads and the async task runner. (A new thread
starts with a fresh context, so without the lane scope the worker saw the default budget.)"""

from __future__ import annotations

from webui_api.pixel_budget import DEFAULT_MAX_IMAGE_PIXELS, current_budget
from webui_api.scheduler import WorkItem
from webui_api.serving.guards import RequestLimits

LOWERED = 96 * 96


def test_the_worker_lanes_run_under_the_configured_budget(make_client):
    client = make_client(guards=RequestLimits(max_input_pixels=LOWERED))
    scheduler = client.app.state.runtime.scheduler
    seen = scheduler.submit(WorkItem(run=lambda cancel: current_budget(), label="budget probe")).result(timeout=30)
    assert seen == LOWERED != DEFAULT_MAX_IMAGE_PIXELS


def test_zero_reaches_the_worker_as_no_limit(make_client):
    client = make_client(guards=RequestLimits(max_input_pixels=0))
    scheduler = client.app.state.runtime.scheduler
    assert scheduler.submit(WorkItem(run=lambda cancel: current_budget(), label="probe")).result(timeout=30) == 0


def test_an_async_task_runs_under_the_configured_budget(make_client, monkeypatch):
    """The runner sets the budget itself (it also inherits it from the app's lifespan, which
    the budget middleware wraps, but it need not rely on that)."""
    from tests.api.test_tasks import wait_for_status
    from tests.security.helpers import TINY
    from webui_api.generation import task_runner

    seen = []

    async def recording(request, runtime, **kwargs):
        seen.append(current_budget())
        return {"images": [], "parameters": {}, "info": "{}"}

    monkeypatch.setattr(task_runner, "run_txt2img", recording)
    client = make_client(guards=RequestLimits(max_input_pixels=LOWERED))
    task_id = client.post("/agent-scheduler/v1/queue/txt2img", json=TINY).json()["task_id"]
    wait_for_status(client, task_id)
    assert seen == [LOWERED]
