"""Which route group each route belongs to (what a key's `groups` allow) and which routes are
submissions of work (what rate limits count and the audit log always records).

One table, `ROUTES`, classifies every route template the app serves. `require_api_auth`
reads it for every request, so a route's group check, rate limit, priority and audit come from
its classification and not from code in the route; a route missing from the table is treated
as the most restricted kind (`admin`, a submission) and the route-table test fails until it
is classified.

Groups follow what a client role needs: `generate` (generation plus the progress, interrupt
and skip calls made around it), `catalog` (read-only lists), `options`, `admin` (model
unload/reload, refreshes, server stop), `tasks` (agent-scheduler's async routes) and `metrics`.
Only submissions of work count against a rate limit: polling /progress every half second
must not use up a "10/minute" budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GENERATE, CATALOG, OPTIONS, ADMIN, TASKS, METRICS = "generate", "catalog", "options", "admin", "tasks", "metrics"
ROUTE_GROUPS = frozenset({GENERATE, CATALOG, OPTIONS, ADMIN, TASKS, METRICS})


@dataclass(frozen=True)
class RouteClass:
    """A route's place in the access policy."""

    group: str
    submission: bool = False  # queues device or CPU work: rate limited, always audited

    @property
    def label(self) -> str:
        return f"{self.group}{' (work)' if self.submission else ''}"


_SDAPI = "/sdapi/v1/"
_AGENT = "/agent-scheduler/v1/"


def _table(group: str, paths: Iterable[str], submission: bool = False) -> dict[str, RouteClass]:
    return {path: RouteClass(group, submission) for path in paths}


ROUTES: Mapping[str, RouteClass] = {
    # generation: the work routes, then the calls a generating client makes around them
    **_table(GENERATE, [_SDAPI + name for name in (
        "txt2img", "img2img", "extra-single-image", "extra-batch-images", "interrogate")], submission=True),
    **_table(GENERATE, ["/v1/controlnet", "/controlnet/detect", "/v1/images/generations", "/v1/images/edits",
                        "/v1/images/variations"], submission=True),
    **_table(GENERATE, [_SDAPI + name for name in ("png-info", "progress", "interrupt", "skip")]),
    **_table(GENERATE, ["/internal/progress", "/internal/pending-tasks"]),
    **_table(GENERATE, [_SDAPI + "progress/{task_id}/events", _SDAPI + "progress/{task_id}/ws",
                        _SDAPI + "outputs/{name}"]),  # per-job progress streams, images sent as URLs
    # read-only catalogs
    **_table(CATALOG, [_SDAPI + name for name in (
        "samplers", "schedulers", "upscalers", "latent-upscale-modes", "sd-models", "sd-modules", "sd-vae",
        "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "embeddings", "loras", "scripts",
        "script-info", "extensions", "memory", "cmd-flags")]),
    **_table(CATALOG, ["/v1/models"]),  # the OpenAI-compatible checkpoint list
    **_table(CATALOG, ["/controlnet/version", "/controlnet/model_list", "/controlnet/module_list",
                       "/controlnet/settings", "/controlnet/control_types"]),
    # settings and administration
    _SDAPI + "options": RouteClass(OPTIONS),
    **_table(ADMIN, [_SDAPI + name for name in (
        "refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings", "unload-checkpoint",
        "reload-checkpoint", "server-kill", "server-restart", "server-stop")]),
    # agent-scheduler's async tasks
    **_table(TASKS, [_AGENT + "queue/txt2img", _AGENT + "queue/img2img"], submission=True),
    **_table(TASKS, [_AGENT + path for path in (
        "queue", "task/{task_id}", "task/{task_id}/position", "task/{task_id}/events", "task/{task_id}/results",
        "results/{task_id}", "delete/{task_id}")]),
    "/metrics": RouteClass(METRICS),
}

# Answer anyone: load balancers and orchestrators carry no credentials. They say up/down only.
OPEN_ROUTES = frozenset({"/health", "/ready"})
# The web playground's page and assets: static files holding no data, open so a browser can load
# them; every API call the page makes carries the user's credentials.
PAGE_ROUTES = frozenset({"/", "/playground/{name}"})
# FastAPI's own documentation routes: open like A1111 unless --api-docs-auth closes them.
DOCS_ROUTES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs-assets/{name}"})
UNCLASSIFIED = RouteClass(ADMIN, submission=True)  # fail closed: an admin key's work


def classify(route_path: str) -> RouteClass:
    """The class of a route template such as '/sdapi/v1/txt2img' or '/agent-scheduler/v1/task/{task_id}'."""
    return ROUTES.get(route_path, UNCLASSIFIED)


def is_classified(route_path: str) -> bool:
    return route_path in ROUTES or route_path in OPEN_ROUTES or route_path in DOCS_ROUTES or route_path in PAGE_ROUTES


def route_group(route_path: str) -> str:
    return classify(route_path).group


def is_submission(route_path: str, method: str) -> bool:
    """A request that queues work: the ones a rate limit counts (reads of the same path do not)."""
    return method == "POST" and classify(route_path).submission
