"""API keys from a YAML or JSON file, and the caller identity every request resolves to.

A key file lists, per client: a `name` (shown in logs and the audit trail, never the key),
the key itself (`key`) or its SHA-256 (`sha256`, so the file need not hold secrets), a
`tier` (admin/high/normal/low or a scheduler priority number: lower runs first; `admin` runs
at high priority and sees every key's async tasks), an optional
`rate_limit` ("10/minute", the `limits` library's notation) and the route `groups` it may
call (default: all). Presented keys are hashed and compared against every stored hash with
`hmac.compare_digest`, so neither timing nor an early exit tells which key came close.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..scheduler import PRIORITY_HIGH, PRIORITY_NORMAL
from .groups import ROUTE_GROUPS

PRIORITY_LOW = 20
TIERS = {"admin": PRIORITY_HIGH, "high": PRIORITY_HIGH, "normal": PRIORITY_NORMAL, "low": PRIORITY_LOW}
ADMIN_TIER = "admin"  # high priority, and sees every caller's async tasks
_KEY_FIELDS = frozenset({"name", "key", "sha256", "tier", "rate_limit", "groups"})


class KeyFileError(ValueError):
    """The keys file cannot be used; the message names the entry and the field."""


@dataclass(frozen=True)
class ApiKey:
    """One configured key; only the SHA-256 of the secret is kept in memory."""

    name: str
    sha256: bytes
    priority: int
    rate_limit: str | None
    groups: frozenset[str]
    admin: bool = False  # tier "admin": sees and manages every key's async tasks


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key, a Basic-auth user or an anonymous client (then `identity` is its IP).

    `identity` is the rate-limit bucket and the owner of its async tasks; `priority` is the
    best scheduler priority allowed. `sees_all_tasks`: anonymous callers of a server without
    auth (agent-scheduler's behaviour) and admin-tier keys; everyone else sees their own."""

    name: str
    identity: str
    priority: int = PRIORITY_NORMAL
    rate_limit: str | None = None
    groups: frozenset[str] = ROUTE_GROUPS
    sees_all_tasks: bool = True

    def owns(self, owner: str | None) -> bool:
        """Whether a task stored with `owner` is this caller's to see, read and delete."""
        return self.sees_all_tasks or owner == self.identity


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The configured keys; `match` checks a presented secret against all of them."""

    keys: tuple[ApiKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys)

    def match(self, secret: str) -> ApiKey | None:
        """Constant-time over every key: each comparison runs, whichever matched."""
        presented = hash_key(secret)
        found = None
        for key in self.keys:
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found


def load_keys(path: Path) -> KeyRing:
    """Read a keys file (.json, else YAML); raise KeyFileError saying what is wrong where."""
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if Path(path).suffix.lower() == ".json" else _yaml(text)
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise KeyFileError(f"{path}: expected a list of keys (or {{'keys': [...]}}), got {type(entries).__name__}")
    keys = tuple(parse_key(entry, index) for index, entry in enumerate(entries))
    _check_unique(keys, path)
    return KeyRing(keys)


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _check_unique(keys: tuple[ApiKey, ...], path: Path) -> None:
    names = [key.name for key in keys]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise KeyFileError(f"{path}: key names must be unique; repeated: {duplicates}")
    hashes = [key.sha256 for key in keys]
    if len(set(hashes)) != len(hashes):
        raise KeyFileError(f"{path}: two entries have the same key")


def parse_key(entry: Any, index: int) -> ApiKey:
    """One entry of the file: {name, key | sha256, tier, rate_limit, groups}."""
    where = f"key #{index + 1}"
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _KEY_FIELDS
    if unknown:
        raise KeyFileError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(_KEY_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise KeyFileError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    where = f"key {name!r}"
    return ApiKey(
        name=name.strip(),
        sha256=_secret_hash(entry, where),
        priority=parse_tier(entry.get("tier", "normal"), where),
        rate_limit=parse_rate_limit(entry.get("rate_limit"), where),
        groups=_groups(entry.get("groups"), where),
        admin=str(entry.get("tier", "")).strip().lower() == ADMIN_TIER,
    )


def _secret_hash(entry: dict[str, Any], where: str) -> bytes:
    key, digest = entry.get("key"), entry.get("sha256")
    if (key is None) == (digest is None):
        raise KeyFileError(f"{where}: give exactly one of 'key' (the secret) or 'sha256' (its hex digest)")
    if key is not None:
        if not isinstance(key, str) or len(key) < 8:
            raise KeyFileError(f"{where}: 'key' must be a string of at least 8 characters")
        return hash_key(key)
    try:
        raw = bytes.fromhex(str(digest))
    except ValueError as exc:
        raise KeyFileError(f"{where}: 'sha256' must be 64 hex digits, got {digest!r}") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{where}: 'sha256' must be 64 hex digits, got {len(str(digest))} characters")
    return raw


def parse_tier(value: Any, where: str = "tier") -> int:
    """'admin'/'high'/'normal'/'low' or a priority number (0 = high, 10 = normal, 20 = low)."""
    if isinstance(value, bool):
        raise KeyFileError(f"{where}: tier must be one of {sorted(TIERS)} or an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lower() in TIERS:
        return TIERS[value.strip().lower()]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise KeyFileError(f"{where}: tier must be one of {sorted(TIERS)} or an integer, got {value!r}")


def parse_rate_limit(value: Any, where: str = "rate limit") -> str | None:
    """Validate with the `limits` parser now, so a typo fails at start and not per request."""
    if value is None or value == "":
        return None
    from limits import parse_many

    try:
        parse_many(str(value))
    except ValueError as exc:
        raise KeyFileError(f"{where}: rate_limit {value!r} is not like '10/minute' or '100/hour;5/second'") from exc
    return str(value)


def _groups(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return ROUTE_GROUPS
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise KeyFileError(f"{where}: 'groups' must be a list of names, got {value!r}")
    unknown = set(value) - ROUTE_GROUPS
    if unknown:
        raise KeyFileError(f"{where}: unknown route groups {sorted(unknown)}; known: {sorted(ROUTE_GROUPS)}")
    return frozenset(value)
