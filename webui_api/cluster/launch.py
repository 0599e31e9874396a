"""`launch.py --ray`: start or join a Ray cluster, run the Serve application, wait until stopped."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..settings import Settings

log = logging.getLogger(__name__)
SHUTDOWN_SECONDS = 30


def start_ray(settings: Settings, **init_kwargs: Any) -> None:
    """Join `--ray-address` or start a local instance; Serve's HTTP proxy listens where the
    single-process server would (--listen/--port)."""
    import ray
    from ray import serve

    options = settings.ray
    if not ray.is_initialized():
        ray.init(address=options.address, **init_kwargs)
    serve.start(http_options={"host": settings.host, "port": settings.port})


def run_application(settings: Settings, blocking: bool = False) -> Any:
    """Deploy ingress + workers under the app name; returns the ingress handle."""
    from ray import serve

    from .deployments import build_application

    route_prefix = f"/{settings.subpath.strip('/')}" if settings.subpath else "/"
    return serve.run(build_application(settings), name=settings.ray.app_name, route_prefix=route_prefix,
                     blocking=blocking)


def serve_ray(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut the application down (replicas drain their jobs)."""
    from ray import serve

    start_ray(settings)
    run_application(settings)
    options = settings.ray
    log.info("webui-api on Ray Serve: http://%s:%d/sdapi/v1, %s worker replica(s), %g GPU each",
             settings.host, settings.port,
             f"{options.min_workers}-{options.max_workers}" if options.autoscaling else options.workers,
             options.gpus_per_worker)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    # replicas drain their jobs; bounded, because a signal sent to the whole process group (a
    # terminal's Ctrl-C, `timeout`) may have stopped the local Ray instance already
    deleting = threading.Thread(target=serve.delete, args=(options.app_name,), daemon=True)
    deleting.start()
    deleting.join(SHUTDOWN_SECONDS)
    if deleting.is_alive():
        log.warning("the Serve application did not stop within %d s; exiting anyway", SHUTDOWN_SECONDS)
