"""The /sdapi/v1/options store: A1111's settings, typed, lock-guarded and saved to config.json.

One `OptionsStore` is built at startup and passed to whoever needs it (no module globals).
It keeps only what differs from the built-in defaults table (`option_defaults`): the values
read from config.json, plus what clients set since. Everything else is filled in from the
table when read, which is also what A1111's GET does through its response model.

Rules taken from A1111 (see the API reference, section 1.4) and where we deliberately differ:
- GET serves every known key, typed like A1111 (int options as floats, falsy-default ones as-is).
- POST accepts the whole GET body back: unchanged values, OptionHTML text and `restrict_api`
  keys are skipped silently, so a client that round-trips GET never fails.
- An unknown key is refused (A1111: KeyError, 500; here 400), unless config.json already had it.
- Values are coerced to the option's type ("20" -> 20, 80.0 -> 80 for int options) and a value
  of the wrong type is refused with a 400 naming the key; A1111 stored whatever it was sent.
- A POST is all-or-nothing: everything is validated (the checkpoint name included) before the
  file is written and the new values become visible.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui_api.errors import ApiError, BadRequest, ServiceUnavailable, UnknownOption
from webui_api.option_defaults import DYNAMIC_KEY_PREFIXES, OPTION_DEFS, OPTIONS_BY_KEY, OptionDef
from webui_api.paths import check_confined

if TYPE_CHECKING:
    from webui_api.settings import Settings

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "sd_model_checkpoint"
VAE_KEY = "sd_vae"
# Output folders and filename patterns: the options that decide where files are written.
PATH_OPTION_KEYS = frozenset(option.key for option in OPTION_DEFS if option.dir_config and option.value_type is str)
_OUTPUT_FOLDER_KEYS = frozenset(key for key in PATH_OPTION_KEYS if key.startswith("outdir_") or key == "temp_dir")
_TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}


# --- values: coercion in, A1111 typing out ---------------------------------------------------


def _describe(value: Any) -> str:
    """How a received value is named in error messages: its JSON-ish type and a short repr."""
    kind = "null" if value is None else type(value).__name__
    text = repr(value)
    return f"{kind} {text[:60] + '...' if len(text) > 60 else text}"


def _wrong_type(option: OptionDef, target: type, value: Any) -> BadRequest:
    expected = _TYPE_NAMES.get(target, target.__name__)
    return BadRequest(
        f"Invalid value for option {option.key!r}: expected {expected}, got {_describe(value)}",
        errors=f"{option.key}: expected {expected}",
    )


def _parse_number(value: Any) -> float | int | None:
    """A real number from a JSON number or a numeric string; None when it is neither (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _as_int_option(number: float | int) -> float | int:
    """Int options keep ints (80.0 from a GET round trip becomes 80) but may hold fractions,
    because A1111 types them as float (e.g. a 0..1 slider whose default happens to be 1)."""
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def coerce_value(option: OptionDef, value: Any) -> Any:
    """The value to store for `option`, converted where it is unambiguous; BadRequest otherwise."""
    target = option.value_type
    if target is None:
        return value
    converted: Any = None
    if value is None:
        converted = None
    elif target is bool:
        converted = _as_bool(value)
    elif target in (int, float):
        number = _parse_number(value)
        converted = None if number is None else (_as_int_option(number) if target is int else float(number))
    elif target is str:
        converted = value if isinstance(value, str) else None
    elif target is list:
        converted = list(value) if isinstance(value, (list, tuple)) else None
    if converted is None:
        raise _wrong_type(option, target, value)
    return converted


def api_value(option: OptionDef, value: Any) -> Any:
    """`value` as A1111's GET serialises it: Optional[type(default)] with int widened to float."""
    if option.api_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return copy.deepcopy(value)


# --- config.json ------------------------------------------------------------------------------


def _backup_path(path: Path) -> Path:
    """A free name next to `path` for keeping a corrupt file: config.json.corrupt, .corrupt-1, ..."""
    candidate = path.with_name(path.name + ".corrupt")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{counter}")
        counter += 1
    return candidate


def _set_aside_corrupt(path: Path, reason: str) -> None:
    """Move an unreadable config.json out of the way so the next save starts clean."""
    backup = _backup_path(path)
    try:
        os.replace(path, backup)
    except OSError as exc:
        logger.warning("config file %s is unusable (%s) and could not be moved aside: %s", path, reason, exc)
        return
    logger.warning("config file %s is unusable (%s); moved it to %s and using defaults", path, reason, backup)


def read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when the file is missing, unreadable or not an object."""
    try:
        text = path.read_text(encoding="utf8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read config file %s (%s); using defaults", path, exc)
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _set_aside_corrupt(path, f"invalid JSON: {exc}")
        return {}
    if not isinstance(data, dict):
        _set_aside_corrupt(path, f"expected a JSON object, found {type(data).__name__}")
        return {}
    return data


def write_config_file(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically (temp file in the same folder, then rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    temp_path = Path(handle.name)
    try:
        with handle:
            json.dump(data, handle, indent=4, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def _clean_loaded(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Stored values from a config file: known keys coerced (bad ones dropped with a warning),
    OptionHTML keys dropped (A1111 never saves them), unknown keys kept as they are."""
    cleaned: dict[str, Any] = {}
    for key, value in raw.items():
        option = OPTIONS_BY_KEY.get(key)
        if option is None:
            cleaned[key] = value
        elif not option.html:
            try:
                cleaned[key] = coerce_value(option, value)
            except BadRequest as exc:
                logger.warning("%s: ignoring bad setting, using the default instead: %s", source, exc.detail)
    return cleaned


# --- freezing ---------------------------------------------------------------------------------


def frozen_option_keys(
    *, freeze_all: bool = False, sections: tuple[str, ...] = (), keys: tuple[str, ...] = ()
) -> frozenset[str]:
    """Keys locked by --freeze-settings, --freeze-settings-in-sections and --freeze-specific-settings."""
    if freeze_all:
        return frozenset(option.key for option in OPTION_DEFS)
    wanted = set(sections)
    in_sections = {option.key for option in OPTION_DEFS if option.section in wanted}
    return frozenset(in_sections | set(keys))


def locked_option_keys(settings: Settings) -> tuple[frozenset[str], frozenset[str]]:
    """(frozen, ignored): the keys the --freeze-settings* flags lock, and the ones
    --hide-ui-dir-config makes the API ignore."""
    frozen = frozen_option_keys(
        freeze_all=settings.freeze_settings,
        sections=settings.freeze_settings_in_sections,
        keys=settings.freeze_specific_settings,
    )
    return frozen, dir_config_keys() if settings.hide_ui_dir_config else frozenset()


def dir_config_keys() -> frozenset[str]:
    """Keys A1111 silently refuses to change under --hide-ui-dir-config (output paths, patterns)."""
    return frozenset(option.key for option in OPTION_DEFS if option.dir_config)


class _Skip:
    """Marker: this key of a POST changes nothing (unchanged, read-only or silently ignored)."""


_SKIP = _Skip()
COMMIT_ATTEMPTS = 8  # a shared store: plans made again when another process published in between


class StaleOptions(Exception):
    """A shared store's commit lost a race: another process published a change since the refresh."""


class OptionsBusy(ServiceUnavailable):
    """A change lost every race against other processes' changes (a 503 the client may retry)."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"The options changed concurrently {attempts} times while saving; try again")
        self.headers = {"Retry-After": "1"}


# --- the store --------------------------------------------------------------------------------


class OptionsStore:
    """Thread-safe holder of the current options, persisted to `config_path` on every change.

    `frozen_keys` cannot be changed through `apply` (a 400 when a POST tries to);
    `ignored_keys` are dropped silently, like A1111 does under --hide-ui-dir-config;
    `overrides` are set on top of config.json at startup (saved with the next change).
    With `config_path=None` nothing is read or written (tests, ephemeral servers).

    The values live in this process. A store shared by several processes (the ingress
    replicas of a cluster: `options_redis.RedisOptionsStore`) overrides the two hooks below:
    `_refresh` (adopt what another process published, before every read and write) and
    `_commit` (publish a change, or raise `StaleOptions` when another process published first;
    `apply` and `set_internal` then plan again on the fresh values).
    """

    def __init__(
        self,
        config_path: Path | None,
        frozen_keys: frozenset[str] = frozenset(),
        overrides: Mapping[str, Any] | None = None,
        *,
        ignored_keys: frozenset[str] = frozenset(),
    ) -> None:
        self._lock = threading.RLock()
        self._path = Path(config_path) if config_path is not None else None
        self._frozen = frozenset(frozen_keys)
        self._ignored = frozenset(ignored_keys)
        loaded = read_config_file(self._path) if self._path is not None else {}
        self._stored: dict[str, Any] = _clean_loaded(loaded, str(self._path))
        self._stored.update(_clean_loaded(overrides or {}, "startup overrides"))

    @classmethod
    def from_settings(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> OptionsStore:
        """The store a server runs with: its config file and the keys its flags lock."""
        frozen, ignored = locked_option_keys(settings)
        return cls(settings.ui_settings_file, frozen, overrides, ignored_keys=ignored)

    @property
    def config_path(self) -> Path | None:
        return self._path

    # reading

    def _current(self, key: str) -> Any:
        option = OPTIONS_BY_KEY.get(key)
        if option is not None and (option.html or key not in self._stored):
            return option.fresh_default()
        return self._stored[key]

    def get(self, key: str) -> Any:
        """The current value of one option (its default when never set); UnknownOption if unknown."""
        with self._lock:
            self._refresh()
            if key not in OPTIONS_BY_KEY and key not in self._stored:
                raise UnknownOption(f"unknown option {key!r}", errors=repr(key))
            return copy.deepcopy(self._current(key))

    def snapshot(self) -> dict[str, Any]:
        """Every key with plain Python values (ints stay ints), a private copy for one job."""
        with self._lock:
            self._refresh()
            values = {option.key: self._current(option.key) for option in OPTION_DEFS}
            values.update((key, value) for key, value in self._stored.items() if key not in OPTIONS_BY_KEY)
            return copy.deepcopy(values)

    def as_api_dict(self) -> dict[str, Any]:
        """The GET /sdapi/v1/options body: every known key in A1111's order and typing, then any
        extra keys config.json carried (A1111's response model would drop those; we keep them so
        a GET -> POST round trip is lossless)."""
        with self._lock:
            self._refresh()
            body = {option.key: api_value(option, self._current(option.key)) for option in OPTION_DEFS}
            body.update((k, copy.deepcopy(v)) for k, v in self._stored.items() if k not in OPTIONS_BY_KEY)
            return body

    def with_overrides(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """A per-job copy with a request's override_settings applied; the store is untouched.

        The same restrictions as a POST apply, because A1111 sets overrides through the same
        `opts.set`: unknown, OptionHTML and restrict_api keys are ignored, --hide-ui-dir-config
        keys are ignored, a changed frozen key is refused (400), a value of the wrong type is a
        400. Path-like values must stay relative and inside the data dir: a request never
        chooses where the server writes."""
        values = self.snapshot()
        for key, raw in overrides.items():
            value = self._plan_override(key, raw, values)
            if value is not _SKIP:
                values[key] = value
        return values

    def _plan_override(self, key: str, raw: Any, values: Mapping[str, Any]) -> Any:
        option = OPTIONS_BY_KEY.get(key)
        if option is None or option.html or option.restrict_api or key in self._ignored:
            return _SKIP
        value = coerce_value(option, raw)
        if _same_value(value, values.get(key)):
            return _SKIP
        self._check_not_frozen(key)
        if key in PATH_OPTION_KEYS and value:
            check_confined(value, key)
        return value

    def _check_not_frozen(self, key: str) -> None:
        if key in self._frozen:
            raise BadRequest(
                f"Option {key!r} is frozen by a command-line flag and cannot be changed",
                errors=f"not possible to set {key!r}: frozen with --freeze-settings* flags",
            )

    # writing

    def apply(
        self,
        updates: Mapping[str, Any],
        *,
        validate_checkpoint: Callable[[str], str] | None = None,
        validate_vae: Callable[[str], str] | None = None,
    ) -> dict[str, tuple[Any, Any]]:
        """POST /sdapi/v1/options: validate every key, then save and publish all changes at once.

        `validate_checkpoint` maps a requested `sd_model_checkpoint` to its canonical title or
        raises (e.g. UnknownCheckpoint); it runs before anything changes, and so does
        `validate_vae` for `sd_vae` (a name that is not a VAE would fail every later job). Returns
        {key: (old, new)} for the keys whose value actually changed, so the caller can reload
        the checkpoint or VAE when those keys are among them.
        """
        for _attempt in range(COMMIT_ATTEMPTS):
            try:
                return self._apply_once(updates, validate_checkpoint, validate_vae)
            except StaleOptions:
                continue  # another process published first: plan again on its values
        raise OptionsBusy(COMMIT_ATTEMPTS)

    def _apply_once(
        self, updates: Mapping[str, Any], validate_checkpoint: Callable[[str], str] | None,
        validate_vae: Callable[[str], str] | None,
    ) -> dict[str, tuple[Any, Any]]:
        with self._lock:
            self._refresh()
            planned: dict[str, Any] = {}
            for key, raw in updates.items():
                value = self._plan(key, raw, validate_checkpoint, validate_vae)
                if value is not _SKIP:
                    planned[key] = value
            if not planned:
                return {}
            changes = {key: (self._old_value(key), value) for key, value in planned.items()}
            self._commit({**self._stored, **planned})
            return changes

    def set_internal(self, updates: Mapping[str, Any]) -> None:
        """Server-side updates that are facts, not requests (the loaded checkpoint's title and
        hash): typed like any value but never frozen, and saved with the next `apply`, the way
        A1111 writes them straight into its options data."""
        typed = {key: raw if key not in OPTIONS_BY_KEY else coerce_value(OPTIONS_BY_KEY[key], raw)
                 for key, raw in updates.items()}
        for _attempt in range(COMMIT_ATTEMPTS):
            with self._lock:
                self._refresh()
                try:
                    self._commit({**self._stored, **typed}, save_file=False)
                    return
                except StaleOptions:
                    continue
        raise OptionsBusy(COMMIT_ATTEMPTS)

    def _old_value(self, key: str) -> Any:
        """The value before a change; None for a run-time key (prioritized_callbacks_*) never set."""
        if key in OPTIONS_BY_KEY or key in self._stored:
            return copy.deepcopy(self._current(key))
        return None

    def _plan(
        self, key: str, raw: Any, validate_checkpoint: Callable[[str], str] | None,
        validate_vae: Callable[[str], str] | None = None,
    ) -> Any:
        """The new value for one POSTed key, `_SKIP` when nothing changes; raises if refused."""
        option = OPTIONS_BY_KEY.get(key)
        if option is None:
            return self._plan_extra(key, raw)
        if option.html or option.restrict_api or key in self._ignored:
            return _SKIP
        current = self._current(key)
        if _same_value(raw, current) or (key == CHECKPOINT_KEY and raw is None):
            return _SKIP  # a null checkpoint changes nothing in A1111 (it reloads the same model)
        value = coerce_value(option, raw)
        if key == CHECKPOINT_KEY:
            value = _checkpoint_title(value, validate_checkpoint)
        if _same_value(value, current):
            return _SKIP
        self._check_not_frozen(key)
        if key == VAE_KEY and validate_vae is not None and value is not None:
            value = validate_vae(value)
        if key in PATH_OPTION_KEYS and value:
            _check_configured_path(key, value)
        return value

    def _plan_extra(self, key: str, raw: Any) -> Any:
        """A key outside the table: allowed when config.json carried it (or A1111 makes such keys
        at run time, like prioritized_callbacks_*); stored as sent."""
        if key in self._stored:
            return _SKIP if _same_value(raw, self._stored[key]) else raw
        if key.startswith(DYNAMIC_KEY_PREFIXES):
            return raw
        raise UnknownOption(f"unknown option {key!r}: GET /sdapi/v1/options lists the known keys", errors=repr(key))

    def _refresh(self) -> None:
        """Adopt values another process published; the local store has none (called under the lock)."""

    def _commit(self, new_stored: dict[str, Any], save_file: bool = True) -> None:
        """Save first, then publish: if the write fails, the store keeps its old values."""
        if save_file:
            self._save_file(new_stored)
        self._stored = new_stored

    def _save_file(self, new_stored: Mapping[str, Any]) -> None:
        if self._path is not None:
            try:
                write_config_file(self._path, new_stored)
            except OSError as exc:
                raise ApiError(f"Could not save options to {self._path.name}: {exc.strerror or exc}") from exc


def _checkpoint_title(name: Any, validate: Callable[[str], str] | None) -> Any:
    """A requested checkpoint must be a name; the caller's registry turns it into the title."""
    if not isinstance(name, str):
        raise BadRequest(
            f"Invalid value for option {CHECKPOINT_KEY!r}: expected a checkpoint name, got {_describe(name)}",
            errors=f"{CHECKPOINT_KEY}: expected a string",
        )
    return validate(name) if validate is not None else name


def _check_configured_path(key: str, value: str) -> None:
    """POST /options is operator configuration: an output folder may be absolute (it becomes
    that folder's root), but no path-like value may climb out with ".."; a filename pattern
    is always relative to its folder."""
    if key in _OUTPUT_FOLDER_KEYS and Path(value).is_absolute():
        return
    check_confined(value, key)


def _same_value(a: Any, b: Any) -> bool:
    """Equality that treats 80 and 80.0 as the same but True and 1 as different."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b
