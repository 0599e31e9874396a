"""The options store shared by several ingress replicas through Redis (`RedisOptionsStore`).

Two stores on one key stand for two ingress replicas of one deployment; a real redis-server on
loopback (tests/redis_server.py) answers, as in production.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="the redis client is not installed")

import redis

from tests.redis_server import REDIS_MISSING, redis_available, running_redis_server
from webui_api.errors import BadRequest
from webui_api.options import OptionsBusy
from webui_api.options_redis import RedisOptionsStore


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not redis_available():
        pytest.skip(REDIS_MISSING)
    with running_redis_server() as url:
        yield url


@pytest.fixture()
def client(redis_url: str) -> Any:
    return redis.Redis.from_url(redis_url)


@pytest.fixture()
def key() -> str:
    return f"test:{uuid.uuid4().hex}"  # one deployment per test


def replica(client: Any, key: str, config: Path | None = None, **kwargs: Any) -> RedisOptionsStore:
    return RedisOptionsStore(client, key, config, **kwargs)


def test_a_change_on_one_replica_is_read_on_another(client: Any, key: str) -> None:
    a, b = replica(client, key), replica(client, key)
    assert b.get("CLIP_stop_at_last_layers") == 1
    a.apply({"CLIP_stop_at_last_layers": 2, "sd_vae": "tiny.safetensors"})
    assert b.get("CLIP_stop_at_last_layers") == 2
    assert b.snapshot()["sd_vae"] == "tiny.safetensors"  # what the next job on b runs with
    assert b.as_api_dict()["CLIP_stop_at_last_layers"] == 2
    assert b.with_overrides({"CLIP_stop_at_last_layers": 3})["CLIP_stop_at_last_layers"] == 3
    assert a.get("CLIP_stop_at_last_layers") == 2  # an override leaves the shared values alone


def test_the_first_replica_seeds_from_its_config_file_later_ones_adopt(client: Any, key: str, tmp_path: Path) -> None:
    first_config, second_config = tmp_path / "first.json", tmp_path / "second.json"
    first_config.write_text(json.dumps({"CLIP_stop_at_last_layers": 4}))
    second_config.write_text(json.dumps({"CLIP_stop_at_last_layers": 7}))
    replica(client, key, first_config)
    second = replica(client, key, second_config)
    assert second.get("CLIP_stop_at_last_layers") == 4
    second.apply({"eta_noise_seed_delta": 31337})
    saved = json.loads(second_config.read_text())  # the replica that took the change writes config.json
    assert (saved["CLIP_stop_at_last_layers"], saved["eta_noise_seed_delta"]) == (4, 31337)


def test_another_deployment_starts_from_its_config_file(client: Any, key: str) -> None:
    replica(client, key).apply({"CLIP_stop_at_last_layers": 5})
    assert replica(client, f"{key}:next").get("CLIP_stop_at_last_layers") == 1


def test_a_change_planned_on_stale_values_is_planned_again(client: Any, key: str, tmp_path: Path) -> None:
    """b saves while a publishes in between (inside b's WATCH): b's commit fails and b plans
    again on a's values, so neither change is lost."""
    a, b = replica(client, key), replica(client, key, tmp_path / "b.json")
    save_file = b._save_file
    raced: list[bool] = []

    def racing_save(new_stored: Any) -> None:
        if not raced:
            raced.append(True)
            a.apply({"CLIP_stop_at_last_layers": 2})
        save_file(new_stored)

    b._save_file = racing_save  # type: ignore[method-assign]
    assert b.apply({"eta_noise_seed_delta": 7}) == {"eta_noise_seed_delta": (0, 7)}
    for store in (a, b, replica(client, key)):
        assert (store.get("CLIP_stop_at_last_layers"), store.get("eta_noise_seed_delta")) == (2, 7)


def test_a_change_that_always_loses_the_race_is_a_503(client: Any, key: str) -> None:
    a, b = replica(client, key), replica(client, key)
    counter = iter(range(2, 100))
    b._save_file = lambda _new: a.apply({"CLIP_stop_at_last_layers": next(counter)})  # type: ignore[method-assign]
    with pytest.raises(OptionsBusy) as refused:
        b.apply({"eta_noise_seed_delta": 7})
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "1"}
    assert a.get("eta_noise_seed_delta") == 0


def test_internal_facts_reach_every_replica(client: Any, key: str) -> None:
    a, b = replica(client, key), replica(client, key)
    b.set_internal({"sd_model_checkpoint": "beta.safetensors [0123456789]", "sd_checkpoint_hash": "0123456789ab"})
    assert a.get("sd_model_checkpoint") == "beta.safetensors [0123456789]"
    assert a.get("sd_checkpoint_hash") == "0123456789ab"


def test_frozen_keys_stay_frozen(client: Any, key: str) -> None:
    store = replica(client, key, frozen_keys=frozenset({"CLIP_stop_at_last_layers"}))
    with pytest.raises(BadRequest):
        store.apply({"CLIP_stop_at_last_layers": 2})


def test_a_flushed_redis_gets_the_replicas_values_again(client: Any, key: str) -> None:
    a = replica(client, key)
    a.apply({"CLIP_stop_at_last_layers": 2})
    client.delete(*client.keys(f"webui-api:options:{key}:*"))
    assert a.get("CLIP_stop_at_last_layers") == 2  # a republishes what it holds
    assert replica(client, key).get("CLIP_stop_at_last_layers") == 2


def test_the_server_shares_its_options_only_with_several_ingress_replicas(redis_url: str, tmp_path: Path) -> None:
    from tests.factories import settings_for_tests
    from webui_api.app import options_store
    from webui_api.options import OptionsStore
    from webui_api.workers import RayOptions

    def store_for(**overrides: Any) -> OptionsStore:
        return options_store(settings_for_tests(tmp_path, **overrides))

    shared = store_for(ray=RayOptions(ingress_replicas=2, deployment_id=uuid.uuid4().hex), redis_url=redis_url)
    assert isinstance(shared, RedisOptionsStore)
    assert type(store_for(ray=RayOptions(ingress_replicas=1), redis_url=redis_url)) is OptionsStore
    assert type(store_for(redis_url=redis_url)) is OptionsStore  # one process: config.json only, as before
