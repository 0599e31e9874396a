"""The web playground served at `/`: one static page (HTML, JS, CSS in static/, shipped as
package data) that calls the server's own API from the browser. No framework and no CDN: the
server is offline by design, so the page must work with nothing but this package.

The page queues each Generate as an async task (agent-scheduler routes), polls its progress
and live preview, shows the results with their infotext, and lets the user cancel queued or
running tasks. Credentials (an API key, or --api-auth's user and password) are kept in the
browser's session storage and sent with every call.
"""

from __future__ import annotations

from importlib import resources

# file name -> media type of every file the page may load; nothing else is served
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}

# The page loads only its own files and talks only to this server; previews are data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)


def asset(name: str) -> bytes:
    """The bytes of one of ASSETS (KeyError for any other name, so no path reaches the disk)."""
    if name not in ASSETS:
        raise KeyError(name)
    return (resources.files(__name__) / "static" / name).read_bytes()
