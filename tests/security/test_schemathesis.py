"""Property-based API testing over /openapi.json (schemathesis): positive and negative data,
every check, against a loopback server running the embedded tiny model. 0 server errors.

The limits are tight (a few steps, tiny images) so that accepted generations stay cheap; the
fast run sends a few examples per operation (~1 min on a CI runner), the slow one many more.

Checks excluded, by name, and why (known false alarms, not server faults):
- positive_data_acceptance: the schema cannot say everything the server checks (width and
  height multiples of 8, limits set by flags, names of samplers/checkpoints that must exist),
  so schema-valid data is legitimately refused with a 4xx.
- ignored_auth / missing_required_header: the test server runs without --api-auth or keys
  (tests/security and tests/serving test authentication themselves).
- use_after_free / ensure_resource_availability: stateful link checks; the task routes answer
  agent-scheduler's `{"success": false}` with 200 for unknown ids, as that extension does.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")  # in the `test` extra

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from tests.security.loopback import loopback_server  # noqa: E402

EXCLUDED_CHECKS = (
    "positive_data_acceptance",
    "ignored_auth",
    "missing_required_header",
    "use_after_free",
    "ensure_resource_availability",
)
FAST_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "4"))
# Long-lived streams: for a task id not seen yet they wait `wait` seconds (up to an hour) by
# design, past any request timeout; tests/api/test_task_progress.py tests them.
EXCLUDED_OPERATIONS = frozenset({"/sdapi/v1/progress/{task_id}/events"})


@pytest.fixture(scope="module")
def api_schema(engine, tmp_path_factory):
    from tests.factories import settings_for_tests
    from webui_api.app import create_app
    from webui_api.serving.guards import RequestLimits

    limits = RequestLimits(
        max_pixels=64 * 64,
        max_batch=2,
        max_steps=2,
        max_prompt_length=200,
        max_body_bytes=1024 * 1024,
        max_input_pixels=128 * 128,
    )
    settings = settings_for_tests(tmp_path_factory.mktemp("schemathesis"), guards=limits, queue_timeout=30.0)
    with loopback_server(create_app(settings, engine=engine)) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        yield schema


def _checks() -> tuple[list, list]:
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    every = list(CHECKS.get_all())
    excluded = [check for check in every if getattr(check, "__name__", "") in EXCLUDED_CHECKS]
    assert len(excluded) == len(EXCLUDED_CHECKS), "an excluded check was renamed: update EXCLUDED_CHECKS"
    return every, excluded


def run_schemathesis(schema, max_examples: int) -> list[str]:
    """Every operation, positive then negative data; the failures as text (schemathesis'
    pytest plugin does not run under this pytest, so hypothesis drives each operation here)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    every, excluded = _checks()
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in EXCLUDED_OPERATIONS:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=max_examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def check(case) -> None:
                case.call_and_validate(checks=every, excluded_checks=excluded, timeout=120)

            try:
                check()
            except Unsatisfiable:
                continue  # nothing about this operation can be negated (no parameters, no body)
            except BaseException as exc:  # noqa: BLE001 - failure groups included; collected, reported below
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:1500]}")
    return failures


def test_api_answers_generated_requests_without_server_errors_or_schema_violations(api_schema):
    failures = run_schemathesis(api_schema, FAST_EXAMPLES)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_api_longer_run(api_schema):
    failures = run_schemathesis(api_schema, 60)
    assert not failures, "\n\n".join(failures)
