"""Class 6: scripts and list prompts pass the same guards, audit, metrics and tier as direct jobs."""

from __future__ import annotations

import json

import pytest

from tests.api.payloads import a1111_test_payload
from tests.security.helpers import assert_a1111_error
from webui_api.serving.guards import RequestLimits

LIMITS = RequestLimits(max_pixels=128 * 128, max_batch=4, max_steps=10, max_prompt_length=50)
PROMPTS = "prompts from file or textbox"
XYZ = "x/y/z plot"
STEPS_AXIS, NOTHING = 4, 0


def prompts_script(text: str, **overrides) -> dict:
    return a1111_test_payload(
        script_name=PROMPTS, script_args=[False, False, "start", text], steps=1, width=32, height=32, **overrides
    )


def xyz_script(axis: int, values: str) -> dict:
    args = [
        axis,
        values,
        [],
        NOTHING,
        "",
        [],
        NOTHING,
        "",
        [],
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        0,
        False,
    ]
    return a1111_test_payload(script_name=XYZ, script_args=args, steps=1, width=32, height=32)


@pytest.fixture()
def limited(make_client):
    return make_client(guards=LIMITS)


@pytest.mark.parametrize(
    ("line", "flag"),
    [
        ('--prompt "a cat" --steps 50', "--max-steps"),
        ('--prompt "a cat" --width 512 --height 512', "--max-pixels"),
        ('--prompt "a cat" --batch_size 4 --n_iter 4', "--max-batch"),
        ("--prompt " + "x" * 60, "--max-prompt-length"),
    ],
)
def test_prompts_from_file_lines_cannot_exceed_the_limits(limited, line, flag):
    response = limited.post("/sdapi/v1/txt2img", json=prompts_script(f"fine\n{line}"))
    assert_a1111_error(response, 422, flag)


@pytest.mark.parametrize(
    ("axis", "values", "flag"),
    [
        (STEPS_AXIS, "1, 50", "--max-steps"),
        ("Size", "32x32, 512x512", "--max-pixels"),
        ("Steps", "2, 3, 11", "--max-steps"),
    ],
)
def test_xyz_axes_cannot_exceed_the_limits(limited, axis, values, flag):
    response = limited.post("/sdapi/v1/txt2img", json=xyz_script(axis, values))
    assert_a1111_error(response, 422, flag)


def test_a_list_prompt_counts_against_the_prompt_length(limited):
    body = a1111_test_payload(prompt=["x" * 30, "y" * 30], batch_size=2, steps=1, width=32, height=32)
    assert_a1111_error(limited.post("/sdapi/v1/txt2img", json=body), 422, "--max-prompt-length", "60")
    task = limited.post("/agent-scheduler/v1/queue/txt2img", json=body)
    assert_a1111_error(task, 422, "--max-prompt-length")
    short = a1111_test_payload(prompt=["x" * 20, "y" * 20], batch_size=2, steps=1, width=32, height=32)
    assert limited.post("/sdapi/v1/txt2img", json=short).status_code == 200


def test_a_script_run_is_audited_counted_and_queued_at_the_callers_priority(make_client, tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    client = make_client(audit_log=audit)
    scheduler = client.app.state.runtime.scheduler
    priorities = []
    original = scheduler.run

    async def spy(item, priority=None, **kwargs):
        priorities.append(priority)
        return await original(item, priority, **kwargs)

    monkeypatch.setattr(scheduler, "run", spy)
    response = client.post("/sdapi/v1/txt2img", json=prompts_script("one\ntwo"), headers={"X-Priority": "low"})
    assert response.status_code == 200, response.text
    from webui_api.serving.keys import PRIORITY_LOW

    assert priorities == [PRIORITY_LOW]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["route"] == "txt2img" and entries[0]["status"] == "ok"
    assert entries[0]["params"]["script_name"] == PROMPTS and len(entries[0]["images_sha256"]) == 2
    metrics = client.get("/metrics").text
    assert 'webui_api_generations_total{route="txt2img"} 1.0' in metrics
    assert 'webui_api_run_seconds_count{route="txt2img"} 1.0' in metrics


def test_a_planning_context_guards_with_the_default_limits_unless_told_otherwise():
    """A script planned outside the server (no configured limits) is not unguarded."""
    from types import SimpleNamespace

    from webui_api.builtin_scripts.base import ScriptContext
    from webui_api.errors import LimitExceeded

    def job(width: int) -> SimpleNamespace:
        return SimpleNamespace(
            width=width,
            height=width,
            hires=None,
            image_count=1,
            sampling=SimpleNamespace(steps=10),
            seeds=SimpleNamespace(seed_resize_from_w=0, seed_resize_from_h=0),
            prompts=("a",),
            negative_prompts=("",),
        )

    context = ScriptContext(tab="txt2img", options={}, styles=())
    context.check_job(job(512))
    with pytest.raises(LimitExceeded, match="--max-pixels"):
        context.check_job(job(4096))
