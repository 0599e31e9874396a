"""Which route group a route belongs to (what a key's `groups` allow), and which routes
count against rate limits.

Groups follow what a client role needs: `generate` (generation plus the progress, interrupt
and skip calls made around it), `catalog` (read-only lists), `options`, `admin` (model
unload/reload, refreshes, server stop), `tasks` (agent-scheduler's async routes) and `metrics`.
Only submissions of work count against a rate limit: polling /progress every half second
must not use up a "10/minute" budget.
"""

from __future__ import annotations

_SDAPI = "/sdapi/v1/"
_GENERATE = frozenset({"txt2img", "img2img", "extra-single-image", "extra-batch-images", "interrogate",
                       "png-info", "progress", "interrupt", "skip"})
_ADMIN = frozenset({"unload-checkpoint", "reload-checkpoint", "server-kill", "server-restart", "server-stop"})
_SUBMISSIONS = frozenset({"txt2img", "img2img", "extra-single-image", "extra-batch-images", "interrogate"})
TASKS_PREFIX = "/agent-scheduler/"
_INTERNAL = "/internal/"
_GENERATE_FAMILIES = frozenset({"progress", "outputs"})  # per-job progress streams, images sent as URLs


def route_group(route_path: str) -> str:
    """The group of a route template such as '/sdapi/v1/txt2img' or '/agent-scheduler/v1/task/{task_id}'."""
    if route_path.startswith(TASKS_PREFIX):
        return "tasks"
    if route_path == "/metrics":
        return "metrics"
    if route_path.startswith(_INTERNAL):  # A1111's task progress
        return "generate"
    name = route_path[len(_SDAPI):] if route_path.startswith(_SDAPI) else ""
    if name in _GENERATE or name.split("/")[0] in _GENERATE_FAMILIES:
        return "generate"
    if name == "options":
        return "options"
    if name in _ADMIN or name.startswith("refresh-"):
        return "admin"
    return "catalog"


def is_submission(route_path: str, method: str) -> bool:
    """A request that queues device work: the ones a rate limit counts."""
    if method != "POST":
        return False
    if route_path.startswith(TASKS_PREFIX + "v1/queue/"):
        return True
    return route_path.startswith(_SDAPI) and route_path[len(_SDAPI):] in _SUBMISSIONS
