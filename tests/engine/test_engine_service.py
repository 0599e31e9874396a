"""The Engine service: checkpoint list and lookup, lazy idempotent loading, unload, memory."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.factories import settings_for_tests
from webui_api.engine.device import resolve_dtype
from webui_api.engine.facade import Engine
from webui_api.engine.models import EMBEDDED_MODEL_NAME
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


def test_txt2img_with_unknown_model_title_runs_on_the_selected_checkpoint(engine):
    """A1111's process_images drops an override naming no checkpoint (with a warning); only an
    explicit lookup is an error."""
    job = make_job(steps=1)
    bad = replace(job, model_title="missing-model")
    fallback = engine.txt2img(bad, RecordingObserver(), CancelToken())
    assert fallback.model_info == engine.current
    assert np.array_equal(np.asarray(fallback.images[0].image),
                          np.asarray(engine.txt2img(job, RecordingObserver(), CancelToken()).images[0].image))
    with pytest.raises(UnknownCheckpoint):
        engine.find_checkpoint("missing-model")


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


# ---------------------------------------------------------------------------
# Real checkpoint folders: hashing on load, switching, the LRU, bad files, VAEs
# ---------------------------------------------------------------------------

import hashlib  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.engine.ldm_checkpoints import build_networks, tiny_vae, write_checkpoint, write_vae  # noqa: E402
from webui_api.engine.loading.discovery import ModelPaths  # noqa: E402
from webui_api.engine.loading.files import UnusableModelFile  # noqa: E402


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """models/Stable-diffusion with two tiny SD1 checkpoints, a VAE folder with one file."""
    root = tmp_path_factory.mktemp("data")
    sd = root / "models" / "Stable-diffusion"
    write_checkpoint(sd / "alpha.safetensors", build_networks("sd1", seed=1))
    write_checkpoint(sd / "beta.safetensors", build_networks("sd1", seed=2))
    write_vae(root / "models" / "VAE" / "tiny-vae.safetensors", tiny_vae(seed=9))
    return root


def _folder_engine(root: Path, **kwargs) -> Engine:
    paths = ModelPaths(
        data_dir=root, ckpt_dirs=(root / "models" / "Stable-diffusion",), vae_dirs=(root / "models" / "VAE",)
    )
    return Engine(device="cpu", dtype="float32", paths=paths, **kwargs)


def _image(engine: Engine, **options) -> np.ndarray:
    result = engine.txt2img(make_job(seeds=(5,), steps=2, options=options), RecordingObserver(), CancelToken())
    return np.asarray(result.images[0].image)


def test_folder_engine_lists_files_and_hashes_on_first_load(model_dirs):
    engine = _folder_engine(model_dirs)
    titles = [info.title for info in engine.checkpoints()]
    assert titles[:2] == ["alpha.safetensors", "beta.safetensors"] or all("[" in t for t in titles)
    model = engine.load("beta")
    sha = hashlib.sha256((model_dirs / "models" / "Stable-diffusion" / "beta.safetensors").read_bytes()).hexdigest()
    assert model.info.sha256 == sha and model.info.title == f"beta.safetensors [{sha[:10]}]"
    assert engine.current == model.info and engine.find_checkpoint(sha[:10]) == model.info
    assert _folder_engine(model_dirs).find_checkpoint("beta").title == model.info.title  # cache.json, no rehash


def test_switching_reloads_with_limit_one_and_reuses_with_a_larger_limit(model_dirs):
    engine = _folder_engine(model_dirs)
    alpha = engine.load("alpha.safetensors")
    beta = engine.load("beta.safetensors")
    assert engine.models.cached() == [beta.info.filename]
    assert engine.load("alpha.safetensors") is not alpha  # read from disk again
    engine.models.set_limit(2)
    alpha_again = engine.loaded
    engine.load("beta.safetensors")
    assert engine.load("alpha.safetensors") is alpha_again  # from the LRU, no disk read
    assert len(engine.models.cached()) == 2
    engine.models.set_limit(1)
    assert engine.models.cached() == [alpha_again.info.filename] and engine.loaded is alpha_again


def test_two_checkpoints_give_different_images_and_each_is_reproducible(model_dirs):
    engine = _folder_engine(model_dirs)

    def run(title: str):
        job = replace(make_job(seeds=(5,), steps=2, options={"sd_checkpoints_limit": 2}), model_title=title)
        return engine.txt2img(job, RecordingObserver(), CancelToken())

    alpha, beta, again = run("alpha"), run("beta"), run("alpha.safetensors")
    assert engine.models.limit == 2 and len(engine.models.cached()) == 2
    first, second, third = (np.asarray(r.images[0].image) for r in (alpha, beta, again))
    assert not np.array_equal(first, second) and np.array_equal(first, third)


def test_a_bad_file_leaves_the_previous_model_serving(model_dirs, tmp_path):
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    good = (model_dirs / "models" / "Stable-diffusion" / "alpha.safetensors").read_bytes()
    (sd / "a-good.safetensors").write_bytes(good)
    (sd / "b-truncated.safetensors").write_bytes(good[: len(good) // 3])
    engine = Engine(device="cpu", dtype="float32", paths=ModelPaths(ckpt_dirs=(sd,)))
    served = engine.load("a-good")
    with pytest.raises(UnusableModelFile) as caught:
        engine.load("b-truncated")
    assert caught.value.status_code == 400 and "truncated" in caught.value.detail
    assert engine.loaded is served and engine.current == served.info
    assert engine.txt2img(make_job(steps=1), RecordingObserver(), CancelToken()).images


def test_names_outside_the_folders_never_resolve(model_dirs):
    engine = _folder_engine(model_dirs)
    for name in (
        "../alpha.safetensors",
        str(model_dirs / "models" / "Stable-diffusion" / "alpha.safetensors"),
        "/etc/passwd",
    ):
        with pytest.raises(UnknownCheckpoint):
            engine.find_checkpoint(name)


def test_embedded_model_only_when_the_folders_are_empty(model_dirs, tmp_path):
    assert EMBEDDED_MODEL_NAME not in [i.model_name for i in _folder_engine(model_dirs).checkpoints()]
    empty = Engine(device="cpu", paths=ModelPaths(ckpt_dirs=(tmp_path,)))
    assert [i.model_name for i in empty.checkpoints()] == [EMBEDDED_MODEL_NAME]


def test_refresh_checkpoints_sees_new_files(model_dirs, tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir()
    engine = Engine(device="cpu", paths=ModelPaths(ckpt_dirs=(sd,)))
    (sd / "new.safetensors").write_bytes(
        (model_dirs / "models" / "Stable-diffusion" / "alpha.safetensors").read_bytes()
    )
    engine.refresh_checkpoints()
    assert [i.name for i in engine.checkpoints()] == ["new.safetensors"] and engine.current.name == "new.safetensors"


def test_sd_vae_choices_per_job(model_dirs):
    engine = _folder_engine(model_dirs)
    baked = _image(engine)
    with_file = _image(engine, sd_vae="tiny-vae.safetensors")
    assert not np.array_equal(baked, with_file)
    assert engine.loaded.vae_file.endswith("tiny-vae.safetensors")
    assert np.array_equal(_image(engine, sd_vae="None"), baked) and engine.loaded.vae is engine.loaded.baked_vae
    assert np.array_equal(_image(engine, sd_vae="Automatic"), baked)
    for name in ("missing.safetensors", "../VAE/tiny-vae.safetensors"):  # A1111: "using None instead"
        assert np.array_equal(_image(engine, sd_vae=name), baked) and engine.loaded.vae is engine.loaded.baked_vae


def test_vae_infotext_and_automatic_vae_beside_the_checkpoint(model_dirs, tmp_path):
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    (sd / "gamma.safetensors").write_bytes(
        (model_dirs / "models" / "Stable-diffusion" / "alpha.safetensors").read_bytes()
    )
    write_vae(sd / "gamma.vae.safetensors", tiny_vae(seed=9))
    engine = Engine(device="cpu", paths=ModelPaths(ckpt_dirs=(sd,)))
    assert [v.model_name for v in engine.vaes()] == ["gamma.vae.safetensors"]
    result = engine.txt2img(make_job(steps=1), RecordingObserver(), CancelToken())
    vae_sha = hashlib.sha256((sd / "gamma.vae.safetensors").read_bytes()).hexdigest()
    assert (result.vae_name, result.vae_hash) == ("gamma.vae.safetensors", vae_sha[:10])
    none = engine.txt2img(make_job(steps=1, options={"sd_vae": "None"}), RecordingObserver(), CancelToken())
    assert (none.vae_name, none.vae_hash) == (None, None)


def test_no_hashing_keeps_titles_without_hash(model_dirs, tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "plain.safetensors").write_bytes(
        (model_dirs / "models" / "Stable-diffusion" / "alpha.safetensors").read_bytes()
    )
    engine = Engine(device="cpu", paths=ModelPaths(data_dir=tmp_path, ckpt_dirs=(sd,)), no_hashing=True)
    model = engine.load("plain")
    assert model.info.title == "plain.safetensors" and model.info.sha256 is None
    assert not (tmp_path / "cache.json").exists()


def test_from_settings_reads_folders_and_flags(tmp_path):
    settings = settings_for_tests(
        tmp_path, device="cpu", dtype="float32", no_half_vae=True, vae_dir=tmp_path / "extra-vae"
    )
    settings = replace(settings, cmd_flags={**settings.cmd_flags, "disable_safe_unpickle": True})
    engine = Engine.from_settings(settings)
    assert engine.paths.ckpt_dirs == (tmp_path / "models" / "Stable-diffusion",)
    assert engine.paths.vae_dirs == (tmp_path / "models" / "VAE", tmp_path / "extra-vae")
    assert engine.paths.lora_dirs == (tmp_path / "models" / "Lora", tmp_path / "models" / "LyCORIS")
    assert engine.paths.hash_cache_file == tmp_path / "cache.json"
    assert engine.load_options.allow_unsafe_pickle and engine.load_options.vae_dtype == torch.float32
