"""Result cache: a repeated deterministic request is answered with the same bytes, engine untouched."""

from __future__ import annotations

import json

from tests.api.payloads import webuiapi_txt2img
from webui_api.schemas.generation import Img2ImgRequest, Txt2ImgRequest
from webui_api.serving.result_cache import DiskResultStore, RedisResultStore, cache_key, is_deterministic

FIXED = webuiapi_txt2img(steps=2, width=64, height=64, seed=42, batch_size=2)


def test_a_repeat_is_a_hit_with_identical_bytes_and_no_engine_call(spy_client):
    client, spy = spy_client(result_cache_mb=16)
    first = client.post("/sdapi/v1/txt2img", json=FIXED)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss" and spy.calls == ["txt2img"]
    second = client.post("/sdapi/v1/txt2img", json=FIXED)
    assert second.status_code == 200 and second.headers["X-Cache"] == "hit"
    assert second.content == first.content
    assert spy.calls == ["txt2img"]  # the engine was not called again
    changed = client.post("/sdapi/v1/txt2img", json={**FIXED, "cfg_scale": 6.5})
    assert changed.headers["X-Cache"] == "miss" and spy.calls == ["txt2img", "txt2img"]


def test_random_seeds_are_never_cached(spy_client):
    client, spy = spy_client(result_cache_mb=16)
    random_seed = {**FIXED, "seed": -1}
    for _ in range(2):
        assert client.post("/sdapi/v1/txt2img", json=random_seed).headers["X-Cache"] == "miss"
    assert spy.calls == ["txt2img", "txt2img"]


def test_an_options_change_is_a_different_entry(spy_client):
    client, spy = spy_client(result_cache_mb=16)
    client.post("/sdapi/v1/txt2img", json=FIXED)
    other = client.post("/sdapi/v1/txt2img", json={**FIXED, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert other.headers["X-Cache"] == "miss" and len(spy.calls) == 2


def test_img2img_is_cached_too(spy_client):
    client, spy = spy_client(result_cache_mb=16)
    image = client.post("/sdapi/v1/txt2img", json={**FIXED, "batch_size": 1}).json()["images"][0]
    payload = {**FIXED, "batch_size": 1, "init_images": [image], "denoising_strength": 0.5}
    first = client.post("/sdapi/v1/img2img", json=payload)
    second = client.post("/sdapi/v1/img2img", json=payload)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.content == first.content and spy.calls == ["txt2img", "img2img"]


def test_off_by_default_in_settings(spy_client):
    client, spy = spy_client()
    client.post("/sdapi/v1/txt2img", json=FIXED)
    assert client.post("/sdapi/v1/txt2img", json=FIXED).headers["X-Cache"] == "miss" and len(spy.calls) == 2


def test_determinism_rules():
    def request(**fields):
        return Txt2ImgRequest.model_validate(webuiapi_txt2img(**fields))

    assert is_deterministic(request(seed=1))
    assert not is_deterministic(request(seed=-1))
    assert not is_deterministic(request(seed=1, subseed=-1, subseed_strength=0.3))
    assert is_deterministic(request(seed=1, subseed=7, subseed_strength=0.3))
    assert not is_deterministic(request(seed=1, save_images=True))
    options = {"sd_model_checkpoint": "a [1234]"}
    assert cache_key("txt2img", request(seed=1), options) == cache_key("txt2img", request(seed=1), dict(options))
    assert cache_key("txt2img", request(seed=1), options) != cache_key("img2img", request(seed=1), options)
    assert cache_key("txt2img", request(seed=1), options) != cache_key(
        "txt2img", request(seed=1), {"sd_model_checkpoint": "b"}
    )
    echo = Img2ImgRequest(seed=1, init_images=["x"], include_init_images=True)
    assert cache_key("img2img", echo, options) != cache_key(
        "img2img", Img2ImgRequest(seed=1, init_images=["x"]), options
    )


def _key(n: int) -> str:
    return f"{n:064x}"


def test_disk_store_evicts_least_recently_used_past_its_budget(tmp_path):
    store = DiskResultStore(tmp_path, max_bytes=250)
    for n in range(3):
        store.put(_key(n), bytes([n]) * 100)
        _age(tmp_path, n)
    # 300 bytes > 250: the oldest untouched entry (0) went
    assert store.get(_key(0)) is None and store.get(_key(1)) is not None
    store.put(_key(3), b"x" * 100)  # 2 was read less recently than 1 (just read): 2 goes
    assert store.get(_key(2)) is None and store.get(_key(1)) == bytes([1]) * 100
    assert store.total_bytes <= 250
    store.put(_key(9), b"y" * 1000)  # larger than the whole budget: not stored, nothing evicted
    assert store.get(_key(9)) is None and store.get(_key(3)) is not None


def _age(root, n: int) -> None:
    """Give entry n an older access time than later ones (file times can be coarse)."""
    import os

    path = root / f"{_key(n)}.json"
    os.utime(path, (1000 + n, 1000 + n))


def test_redis_store_round_trip_and_eviction(redis_url):
    store = RedisResultStore(redis_url, max_bytes=250)
    for n in range(3):
        store.put(_key(n), bytes([n]) * 100)
    assert store.get(_key(0)) is None and store.get(_key(2)) == bytes([2]) * 100
    assert store.total_bytes <= 250


def test_redis_backed_cache_through_the_api(spy_client, redis_url):
    client, spy = spy_client(result_cache_mb=16, redis_url=redis_url)
    first = client.post("/sdapi/v1/txt2img", json=FIXED)
    second = client.post("/sdapi/v1/txt2img", json=FIXED)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert first.content == second.content and spy.calls == ["txt2img"]
    assert isinstance(client.app.state.runtime.serving.cache.store, RedisResultStore)


def test_an_unreachable_redis_is_a_miss_not_an_error(spy_client):
    client, spy = spy_client(result_cache_mb=16, redis_url="redis://127.0.0.1:1/0")
    response = client.post("/sdapi/v1/txt2img", json=FIXED)
    assert response.status_code == 200 and response.headers["X-Cache"] == "miss"
    assert json.loads(response.json()["info"])["all_seeds"] == [42, 43]
