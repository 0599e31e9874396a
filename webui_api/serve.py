"""Run the app under uvicorn with the settings parsed from A1111's flags."""

from __future__ import annotations

import logging

from .settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=settings.timeout_keep_alive,
        ssl_keyfile=settings.tls_keyfile,
        ssl_certfile=settings.tls_certfile,
        log_level="info",
    )
    server = _draining_server_class(uvicorn.Server)(config, on_exit=lambda: begin_drain(app))

    def request_shutdown() -> None:
        begin_drain(app)
        server.should_exit = True

    app.state.request_shutdown = request_shutdown
    log.info("webui-api serving the A1111 API on http://%s:%d/sdapi/v1", settings.host, settings.port)
    server.run()


def begin_drain(app) -> None:
    """Stop intake as soon as a stop is asked for: /ready turns 503 and new generations are
    refused while uvicorn lets the requests in flight finish (then the lifespan re-queues tasks)."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.serving.lifecycle.begin_drain()


def _draining_server_class(base: type) -> type:
    """uvicorn.Server that reports the stop signal first (built late: uvicorn is imported lazily)."""

    class DrainingServer(base):
        def __init__(self, config, on_exit) -> None:
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig, frame) -> None:
            self._on_exit()
            super().handle_exit(sig, frame)

    return DrainingServer
