"""Who may call: --api-auth HTTP Basic (as A1111 applies it), API keys from --api-keys-file,
per-caller rate limits, and CORS from the command-line flags.

A1111 answers a failed check with 401 through its generic error handler, so the response
carries no WWW-Authenticate header; clients rely on the status only. When no auth is
configured the Authorization header is ignored entirely (Open WebUI sends "Basic " with
nothing after it). With both keys and Basic configured, either one is accepted.

Every API route depends on `require_api_auth`: it resolves the `Caller` (kept on
`request.state.caller` for priorities and the audit log), checks the key's route groups
(403) and counts work submissions against the caller's rate limit (429).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from .errors import ApiError, Unauthorized
from .serving.audit import request_entry
from .serving.context import PRIORITY_HEADER, RequestContext, context_for
from .serving.groups import DOCS_ROUTES, is_classified, is_submission, route_group
from .serving.keys import Caller, KeyRing
from .serving.ratelimit import RateLimiter
from .settings import Settings


class Forbidden(ApiError):
    """A valid key calling a route group it was not given (403)."""

    status_code = 403


@dataclass(frozen=True)
class Gate:
    """The app's access policy: keys, Basic pairs, the default rate limit and the limiter."""

    keys: KeyRing
    basic: tuple[tuple[str, str], ...]
    limiter: RateLimiter
    default_rate_limit: str | None = None  # for callers without a limit of their own

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or bool(self.basic)


def parse_basic_header(header: str | None) -> tuple[str, str]:
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


def presented_key(request: HTTPConnection) -> str | None:
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`; None when neither is sent."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def client_address(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def identify(request: HTTPConnection, gate: Gate) -> Caller:
    """The caller behind a request, or Unauthorized. A key wins when one is presented."""
    anonymous = Caller(name="anonymous", identity=f"ip:{client_address(request)}")
    if not gate.enabled:
        return anonymous
    secret = presented_key(request) if gate.keys else None
    if secret is not None:
        key = gate.keys.match(secret)
        if key is None:
            raise Unauthorized("Invalid API key")
        return Caller(key.name, f"key:{key.name}", key.priority, key.rate_limit, key.groups, sees_all_tasks=key.admin)
    if not gate.basic:
        raise Unauthorized("Not authenticated")
    user, password = parse_basic_header(request.headers.get("authorization"))
    if not credentials_match(user, password, gate.basic):
        raise Unauthorized("Incorrect username or password")
    return Caller(name=user, identity=f"user:{user}", sees_all_tasks=False)


def route_template(request: HTTPConnection) -> str:
    """The matched route's template ('/agent-scheduler/v1/task/{task_id}'), else the path."""
    return getattr(request.scope.get("route"), "path", request.url.path)


def require_api_auth(request: HTTPConnection) -> None:
    """FastAPI dependency on every API router (HTTP and WebSocket routes alike, hence the
    HTTPConnection), so no route can skip it: authenticate, authorise
    the route's group, count submissions against the rate limit, and leave the caller and its
    serving context (identity, priority) on the request for the route, the audit and metrics.
    Open (anonymous, unlimited) when nothing is configured."""
    gate: Gate = request.app.state.gate
    caller = identify(request, gate)
    request.state.caller = caller
    request_context(request)  # before the checks: a refused submission is audited too
    route_path = route_template(request)
    group = route_group(route_path)
    if group not in caller.groups:
        raise Forbidden(f"The key {caller.name!r} may not call {group!r} routes; it may call {sorted(caller.groups)}")
    if is_submission(route_path, request.scope.get("method", "GET")):
        gate.limiter.check(caller.identity, caller.name, caller.rate_limit or gate.default_rate_limit)


def request_caller(request: HTTPConnection) -> Caller:
    """The caller `require_api_auth` resolved (anonymous for routes outside the API routers)."""
    return getattr(request.state, "caller", None) or Caller(name="anonymous", identity=f"ip:{client_address(request)}")


def request_context(request: HTTPConnection, requested_priority: Any = None) -> RequestContext:
    """The serving context of a request: its caller and its priority, from the X-Priority
    header (or a body field the route passes), capped by the caller's tier. One per request:
    the audit of unrecorded work (`record_work`) reads what the route's hooks filled in."""
    existing: RequestContext | None = getattr(request.state, "serving_context", None)
    if existing is not None and requested_priority is None:
        return existing
    wanted = requested_priority if requested_priority is not None else request.headers.get(PRIORITY_HEADER)
    context = context_for(request_caller(request), wanted)
    request.state.serving_context = context
    return context


async def record_work(request: Request, status: int, duration: float) -> None:
    """After every API response: count it by route group in /metrics, and audit a submission
    of work that wrote no generation entry of its own (refused ones included), so no work
    route can escape the audit log. Called by the app's outermost HTTP middleware."""
    context: RequestContext | None = getattr(request.state, "serving_context", None)
    runtime = getattr(request.app.state, "runtime", None)
    if context is None or runtime is None:
        return  # not an API route (health, docs) or the app is not started
    route_path = route_template(request)
    runtime.metrics.count_request(route_group(route_path), status)
    if is_submission(route_path, request.method) and not context.audited:
        entry = request_entry(context.caller, request.method, route_path, status, duration)
        await asyncio.to_thread(runtime.serving.audit.write, entry)


def build_gate(settings: Settings) -> Gate:
    """Read the keys file and connect the limiter once, at app creation: a bad file fails the start."""
    from .serving.keys import load_keys, parse_rate_limit

    keys = load_keys(settings.api_keys_file) if settings.api_keys_file else KeyRing()
    return Gate(
        keys=keys,
        basic=settings.api_auth,
        limiter=RateLimiter.for_redis(settings.redis_url),
        default_rate_limit=parse_rate_limit(settings.rate_limit, "--rate-limit"),
    )


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


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def exposure_warnings(settings: Settings) -> list[str]:
    """What the start-up log warns about: a server reachable from the network that anyone may
    use. A1111 starts this way silently with --listen; a shared server should not."""
    warnings: list[str] = []
    exposed = settings.host not in _LOOPBACK_HOSTS and not settings.host.startswith("127.")
    unauthenticated = not settings.api_auth and settings.api_keys_file is None
    if exposed and unauthenticated:
        warnings.append(
            f"Listening on {settings.host}:{settings.port} WITHOUT authentication (no --api-auth or --api-keys-file): "
            "anyone who can reach this port can generate images, change settings and read every async task."
        )
        if settings.api_server_stop:
            warnings.append("--api-server-stop is on without authentication: anyone on the network may stop it.")
    if settings.api_docs_auth and unauthenticated:
        warnings.append("--api-docs-auth has no effect without --api-auth or --api-keys-file.")
    return warnings


def protect_docs(app: FastAPI, settings: Settings) -> None:
    """--api-docs-auth: /docs, /redoc and /openapi.json ask for the same credentials as the API
    (A1111 leaves them open, and so do we by default: they describe the API, not its data)."""
    if not settings.api_docs_auth:
        return

    @app.middleware("http")
    async def docs_gate(request: Request, call_next: Any) -> Any:
        path = request.scope["path"]
        if settings.root_path and path.startswith(settings.root_path):
            path = path[len(settings.root_path):]
        if path in DOCS_ROUTES:
            try:
                identify(request, request.app.state.gate)
            except Unauthorized as exc:
                return JSONResponse(status_code=exc.status_code, content=exc.to_body())
        return await call_next(request)


def route_paths(app: FastAPI) -> list[str]:
    """Every route template the app serves (newer FastAPI keeps included routers lazily)."""
    from fastapi import routing

    if hasattr(routing, "iter_route_contexts"):
        paths = (context.path for context in routing.iter_route_contexts(app.routes))
        return [path for path in paths if path is not None]  # like the fallback: routes with a path
    return [route.path for route in app.routes if hasattr(route, "path")]


def unclassified_routes(app: FastAPI) -> list[str]:
    """Routes missing from the group table (serving/groups.py): they are treated as admin work,
    which is safe but surely not meant; create_app logs them so the omission shows at once."""
    return sorted({path for path in route_paths(app) if not is_classified(path)})
