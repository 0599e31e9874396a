"""--api-auth HTTP Basic, the way A1111 applies it, and CORS from the command-line flags.

A1111 answers a failed check with 401 through its generic error handler, so the response
carries no WWW-Authenticate header; clients rely on the status only. When auth is off the
Authorization header is ignored entirely (Open WebUI sends "Basic " with nothing after it).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from .errors import Unauthorized
from .settings import Settings


def parse_basic_header(header: Optional[str]) -> tuple[str, str]:
    """Return (user, password) from an Authorization header or raise Unauthorized."""
    if not header:
        raise Unauthorized("Not authenticated")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("Not authenticated")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("Invalid authentication credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("Invalid authentication credentials")
    return user, password


def credentials_match(user: str, password: str, allowed: tuple[tuple[str, str], ...]) -> bool:
    """Constant-time comparison against every configured pair."""
    found = False
    for allowed_user, allowed_password in allowed:
        user_ok = secrets.compare_digest(user.encode(), allowed_user.encode())
        password_ok = secrets.compare_digest(password.encode(), allowed_password.encode())
        found |= user_ok and password_ok
    return found


def require_api_auth(request: Request) -> None:
    """FastAPI dependency put on every /sdapi route; a no-op when --api-auth is not set."""
    allowed = request.app.state.settings.api_auth
    if not allowed:
        return
    user, password = parse_basic_header(request.headers.get("authorization"))
    if not credentials_match(user, password, allowed):
        raise Unauthorized("Incorrect username or password")


def add_cors(app: FastAPI, settings: Settings) -> None:
    """A1111 always installs CORS; only the flags' origins are allowed."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_allow_origins),
        allow_origin_regex=settings.cors_allow_origins_regex,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )
