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
    server = uvicorn.Server(config)
    app.state.request_shutdown = lambda: setattr(server, "should_exit", True)
    log.info("webui-api serving the A1111 API on http://%s:%d/sdapi/v1", settings.host, settings.port)
    server.run()
