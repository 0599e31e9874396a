"""The /sdapi/v1/options store shared by several ingress replicas (`--ray-ingress-replicas N`
with `--redis-url`): a POST on one replica is what a GET on any other answers, and the next
job on any replica runs with it (its checkpoint, VAE, clip skip ...).

The stored document (what differs from the defaults, as `OptionsStore` keeps it) lives in
Redis under two keys: `<key>:doc` (JSON) and `<key>:version` (a counter). Every read first
compares the version (one MGET on loopback-fast Redis) and adopts a newer document. A change
is published with optimistic locking: WATCH the version, check it is the one the change was
planned on, write config.json, then SET the document and INCR the version in one MULTI; a
replica that lost the race plans its change again on the new values (`OptionsStore.apply`).

`key` names one deployment of the application (`RayOptions.options_key`): the first replica
of a deployment seeds the document from its config.json, later replicas (and replicas Serve
restarts) adopt it, and the next deployment starts again from config.json, which every
change was written to, as a restarted single-process server does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import OptionsStore, StaleOptions, locked_option_keys

if TYPE_CHECKING:
    from .settings import Settings

KEY_PREFIX = "webui-api:options:"


class RedisOptionsStore(OptionsStore):
    """`OptionsStore` whose values are published to (and refreshed from) one Redis document."""

    def __init__(
        self,
        client: Any,
        key: str,
        config_path: Path | None,
        frozen_keys: frozenset[str] = frozenset(),
        overrides: Mapping[str, Any] | None = None,
        *,
        ignored_keys: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(config_path, frozen_keys, overrides, ignored_keys=ignored_keys)
        self._redis = client
        self._doc_key = f"{KEY_PREFIX}{key}:doc"
        self._version_key = f"{KEY_PREFIX}{key}:version"
        self._version = -1  # the version self._stored holds; -1: none adopted yet
        with self._lock:
            self._refresh()

    @classmethod
    def for_cluster(cls, settings: Settings, key: str, client: Any = None) -> RedisOptionsStore:
        """The store of one ingress replica: the flags' frozen/hidden keys, config.json as the seed."""
        if client is None:
            import redis

            client = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
        frozen, ignored = locked_option_keys(settings)
        return cls(client, key, settings.ui_settings_file, frozen, ignored_keys=ignored)

    def _seed(self) -> None:
        """Publish this replica's values unless a document is there already (the first replica wins)."""
        with self._redis.pipeline() as pipe:
            pipe.setnx(self._doc_key, json.dumps(self._stored))
            pipe.setnx(self._version_key, 0)
            pipe.execute()

    def _refresh(self) -> None:
        doc, version = self._redis.mget(self._doc_key, self._version_key)
        if doc is None or version is None:  # first replica, or Redis lost its data: publish ours
            self._seed()
            doc, version = self._redis.mget(self._doc_key, self._version_key)
        if int(version) != self._version:
            self._stored = json.loads(doc)
            self._version = int(version)

    def _commit(self, new_stored: dict[str, Any], save_file: bool = True) -> None:
        """Publish `new_stored` if nobody published since our refresh; StaleOptions otherwise."""
        import redis

        with self._redis.pipeline() as pipe:
            try:
                pipe.watch(self._version_key)
                current = pipe.get(self._version_key)
                if current is None or int(current) != self._version:
                    raise StaleOptions(self._version_key)
                if save_file:
                    self._save_file(new_stored)
                pipe.multi()
                pipe.set(self._doc_key, json.dumps(new_stored))
                pipe.incr(self._version_key)
                _set, version = pipe.execute()
            except redis.WatchError:
                raise StaleOptions(self._version_key) from None
        self._stored = new_stored
        self._version = int(version)
