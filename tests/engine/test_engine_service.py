"""The Engine service: checkpoint list and lookup, lazy idempotent loading, unload, memory."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from webui_api.engine.models import EMBEDDED_MODEL_NAME
from webui_api.engine.service import Engine, resolve_dtype
from webui_api.errors import UnknownCheckpoint
from webui_api.progress import CancelToken


@pytest.fixture()
def engine():
    """A private Engine (tests here unload it, so it must not be the shared one)."""
    return Engine(device="cpu", dtype="auto")


def test_defaults_on_cpu(engine):
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        Engine(device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="device"):
        Engine(device="warp-drive")


def test_checkpoint_list_and_lookup(engine):
    (info,) = engine.checkpoints()
    assert engine.current == info and info.model_name == EMBEDDED_MODEL_NAME
    for alias in (info.title, EMBEDDED_MODEL_NAME, info.hash, info.sha256):
        assert engine.find_checkpoint(alias) == info
    with pytest.raises(UnknownCheckpoint) as caught:
        engine.find_checkpoint("v1-5-pruned.safetensors")
    assert caught.value.status_code == 404 and "v1-5-pruned.safetensors" in caught.value.detail


def test_load_is_lazy_and_idempotent(engine):
    assert engine.loaded is None
    model = engine.load()
    assert engine.load() is model
    assert engine.load(EMBEDDED_MODEL_NAME) is model
    assert model.info == engine.current


def test_unload_frees_and_reload_works(engine):
    model = engine.load()
    unet_ref = weakref.ref(model.unet)
    del model
    engine.unload()
    gc.collect()
    assert engine.loaded is None
    assert unet_ref() is None
    reloaded = engine.load()
    assert reloaded.unet is not None and engine.loaded is reloaded


def test_txt2img_loads_on_demand_and_is_deterministic(engine):
    job = make_job(seeds=(77,), steps=2)
    first = engine.txt2img(job, RecordingObserver(), CancelToken())
    engine.unload()
    second = engine.txt2img(job, RecordingObserver(), CancelToken())
    assert np.array_equal(np.asarray(first.images[0].image), np.asarray(second.images[0].image))


def test_txt2img_with_unknown_model_title(engine):
    job = make_job()
    bad = type(job)(**{**job.__dict__, "model_title": "missing-model"})
    with pytest.raises(UnknownCheckpoint):
        engine.txt2img(bad, RecordingObserver(), CancelToken())


def test_memory_shape(engine):
    memory = engine.memory()
    ram = memory["ram"]
    assert set(ram) == {"free", "used", "total"} or set(ram) == {"error"}
    if "total" in ram:
        assert 0 < ram["used"] <= ram["total"] and ram["free"] == ram["total"] - ram["used"]
    cuda = memory["cuda"]
    if torch.cuda.is_available():
        assert set(cuda) == {"system", "active", "allocated", "reserved", "inactive", "events"}
    else:
        assert cuda == {"error": "unavailable"}
