"""ControlNet wired into the server: client detection ("controlnet m2m"), the webuiapi client's
units end to end, the extension's options and flags, one annotator cache per server, and the
endpoint's PNG bytes left uncompressed."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.factories import served_on_loopback, settings_for_tests
from webui_api.controlnet.preprocessors import AnnotatorCache
from webui_api.controlnet.units import ControlUnit
from webui_api.engine.control import prepare_controls

from ..engine.helpers import make_job
from . import annotator_files as files
from .helpers import b64_png, pattern_image

PAYLOAD = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}


def canny_unit(**fields):
    return {"input_image": b64_png(pattern_image()), "model": "tiny_canny", "module": "canny",
            "threshold_a": 100, "threshold_b": 200, "processor_res": 64, **fields}


@pytest.fixture()
def cn_client(make_client, tmp_path, controlnet_dir):
    """An app whose own engine scans tmp_path/models/ControlNet (a copy of the test folder)."""
    shutil.copytree(controlnet_dir, tmp_path / "models" / "ControlNet")
    return make_client(own_engine=True)


# --- client detection and the m2m refusal -------------------------------------------------


@pytest.fixture()
def cn_live_server(cn_engine, tmp_path):
    """A real server on loopback over the engine that sees the tiny ControlNets."""
    from tests.api.test_webuiapi_client import free_port
    from webui_api.app import create_app

    port = free_port()
    settings = settings_for_tests(tmp_path, port=port)
    with served_on_loopback(create_app(settings, engine=cn_engine), port):
        yield port


def test_webuiapi_detects_controlnet_and_runs_its_units(cn_live_server):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=cn_live_server, sampler="Euler a", steps=2)
    assert api.has_controlnet is True
    unit = webuiapi.ControlNetUnit(image=pattern_image(), module="canny", model="tiny_canny", threshold_a=100,
                                   threshold_b=200, processor_res=64)
    result = api.txt2img(prompt="a cat", seed=3, width=64, height=64, controlnet_units=[unit])
    assert len(result.images) == 2  # the image, then the detected map
    edges = np.asarray(result.images[1].convert("RGB"))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255} and edges.max() == 255
    assert result.info["extra_generation_params"]["ControlNet 0"].startswith("Module: canny, Model: tiny_canny [")
    plain = api.txt2img(prompt="a cat", seed=3, width=64, height=64)  # sends ControlNet {"args": []}
    assert len(plain.images) == 1 and "ControlNet 0" not in plain.info["extra_generation_params"]
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))


def test_m2m_is_listed_on_both_tabs_and_refused_when_run(client):
    listing = client.get("/sdapi/v1/scripts").json()
    assert "controlnet m2m" in listing["txt2img"] and "controlnet m2m" in listing["img2img"]
    infos = {(i["name"], i["is_img2img"]): i for i in client.get("/sdapi/v1/script-info").json()}
    assert infos[("controlnet m2m", False)]["is_alwayson"] is False and ("controlnet m2m", True) in infos
    response = client.post("/sdapi/v1/txt2img", json={**PAYLOAD, "script_name": "ControlNet M2M"})
    assert response.status_code == 501
    body = response.json()
    assert body["error"] == "NotImplementedError"
    assert "ControlNet M2M" in body["detail"] and "video input is not supported" in body["detail"]
    img2img = {**PAYLOAD, "init_images": [b64_png(pattern_image())], "script_name": "controlnet m2m"}
    assert client.post("/sdapi/v1/img2img", json=img2img).status_code == 501


# --- options and flags ------------------------------------------------------------------


def test_extension_options_are_listed_settable_and_overridable_per_job(cn_client):
    options = cn_client.get("/sdapi/v1/options").json()
    assert options["control_net_no_detectmap"] is False and options["control_net_unit_count"] == 3
    assert options["control_net_model_cache_size"] == 5 and options["control_net_allow_script_control"] is False
    assert options["control_net_detectmap_autosaving"] is False
    payload = {**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": [canny_unit()]}}}
    override = {**payload, "override_settings": {"control_net_no_detectmap": True}}
    assert len(cn_client.post("/sdapi/v1/txt2img", json=override).json()["images"]) == 1
    assert len(cn_client.post("/sdapi/v1/txt2img", json=payload).json()["images"]) == 2  # override restored
    assert (
        cn_client.post(
            "/sdapi/v1/options", json={"control_net_no_detectmap": True, "control_net_unit_count": 5}
        ).status_code
        == 200
    )
    assert len(cn_client.post("/sdapi/v1/txt2img", json=payload).json()["images"]) == 1
    assert cn_client.get("/controlnet/settings").json() == {"control_net_unit_count": 5}


def test_model_cache_size_option_bounds_the_loaded_networks(cn_client):
    library = cn_client.app.state.runtime.engine.controlnets
    for model in ("tiny_canny", "tiny_depth"):
        unit = canny_unit(model=model, module="none")
        payload = {**PAYLOAD, "override_settings": {"control_net_model_cache_size": 1},
                   "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        assert cn_client.post("/sdapi/v1/txt2img", json=payload).status_code == 200
    assert [title.split(" [")[0] for title in library.cached()] == ["tiny_depth"]


def test_extension_flags_reach_cmd_flags_and_the_folders(tmp_path):
    from webui_api.cli import parse_args
    from webui_api.controlnet.catalog import annotator_dir, controlnet_dirs

    settings, unknown = parse_args([
        "--data-dir", str(tmp_path), "--controlnet-dir", str(tmp_path / "cn"),
        "--controlnet-annotator-models-path", str(tmp_path / "ann"), "--no-half-controlnet",
        "--controlnet-preprocessor-cache-size", "4", "--controlnet-loglevel", "DEBUG", "--controlnet-tracemalloc",
    ])
    assert unknown == []
    flags = settings.cmd_flags
    assert flags["no_half_controlnet"] is True and flags["controlnet_preprocessor_cache_size"] == 4
    assert flags["controlnet_loglevel"] == "DEBUG" and flags["controlnet_tracemalloc"] is True
    assert controlnet_dirs(settings)[-1] == tmp_path / "cn"
    assert annotator_dir(settings) == tmp_path / "ann"
    defaults, _ = parse_args(["--data-dir", str(tmp_path)])
    assert defaults.cmd_flags["controlnet_dir"] is None and defaults.cmd_flags["no_half_controlnet"] is None
    assert defaults.cmd_flags["controlnet_preprocessor_cache_size"] == 16
    assert annotator_dir(defaults) == Path(defaults.models_dir).absolute() / "ControlNetAnnotators"


def test_cmd_flags_route_lists_the_extension_flags(client):
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert {"controlnet_dir", "controlnet_annotator_models_path", "no_half_controlnet",
            "controlnet_preprocessor_cache_size", "controlnet_loglevel", "controlnet_tracemalloc"} <= set(flags)


def test_no_half_controlnet_keeps_the_network_float32(cn_engine, controlnet_dir):
    import torch

    from webui_api.engine.control_models import ControlNetLibrary

    library = ControlNetLibrary((controlnet_dir,), full_precision=True)
    loaded = library.get("tiny_canny", torch.device("cpu"), torch.bfloat16)
    assert next(loaded.module.parameters()).dtype == torch.float32
    half = ControlNetLibrary((controlnet_dir,)).get("tiny_canny", torch.device("cpu"), torch.bfloat16)
    assert next(half.module.parameters()).dtype == torch.bfloat16


# --- one annotator cache per server -----------------------------------------------------


class CountingCache(AnnotatorCache):
    """An AnnotatorCache that counts the loads it performs."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def get(self, key, load):
        def counted():
            self.loads += 1
            return load()

        return super().get(key, counted)


@pytest.fixture(scope="module")
def lineart_annotators(tmp_path_factory) -> Path:
    pytest.importorskip("controlnet_aux")
    root = tmp_path_factory.mktemp("annotators")
    files.write_lineart(root)
    return root


def test_generation_reuses_the_librarys_annotators_across_jobs(cn_engine, lineart_annotators):
    from webui_api.engine.control_models import ControlNetLibrary

    library = ControlNetLibrary(cn_engine.controlnets.catalog.dirs)
    library.annotators = CountingCache()
    model = cn_engine.load()
    image = np.asarray(pattern_image(64, 64))
    job = replace(make_job(seeds=(7,), steps=2), controlnet_units=(
        ControlUnit(module="lineart_realistic", model="tiny_canny", image=image, processor_res=64),))
    for _ in range(2):
        prepare_controls(library, model, job, lineart_annotators)
    assert library.annotators.loads == 1 and len(library.annotators) == 1
    library.clear()
    assert len(library.annotators) == 0 and library.cached() == []


def test_detect_and_generation_share_the_engines_cache_and_unload_clears_it(
    make_client, tmp_path, controlnet_dir, lineart_annotators
):
    shutil.copytree(controlnet_dir, tmp_path / "models" / "ControlNet")
    shutil.copytree(lineart_annotators, tmp_path / "models" / "ControlNetAnnotators")
    client = make_client(own_engine=True)
    engine = client.app.state.runtime.engine
    engine.controlnets.annotators = CountingCache()
    detect = {"controlnet_module": "lineart_realistic", "controlnet_input_images": [b64_png(pattern_image())],
              "controlnet_processor_res": 64}
    assert client.post("/controlnet/detect", json=detect).status_code == 200
    assert engine.controlnets.annotators.loads == 1  # /detect loaded it into the engine's cache
    unit = canny_unit(module="lineart_realistic")
    response = client.post("/sdapi/v1/txt2img", json={**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert response.status_code == 200, response.text
    assert engine.controlnets.annotators.loads == 1 and engine.controlnets.cached()
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert len(engine.controlnets.annotators) == 0 and engine.controlnets.cached() == []


# --- the endpoint's PNG bytes are sent as they are --------------------------------------


def test_endpoint_png_is_not_gzipped(cn_client):
    payload = {
        "inputs": "a cat",
        "controlnet_type": "canny_edge",
        "image": b64_png(pattern_image()),
        "num_inference_steps": 2,
        "height": 64,
        "width": 64,
        "seed": 1,
    }
    response = cn_client.post(
        "/v1/controlnet", json=payload, headers={"Accept": "image/png", "Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png" and "content-encoding" not in response.headers
    assert response.content.startswith(b"\x89PNG")


def test_shuffle_map_follows_the_generation_seed(cn_engine):
    model = cn_engine.load()
    image = np.asarray(pattern_image(64, 64))
    unit = ControlUnit(module="shuffle", model="tiny_canny", image=image, processor_res=64)

    def shuffled(seed: int) -> np.ndarray:
        job = replace(make_job(seeds=(seed,), steps=2), controlnet_units=(unit,))
        _, controls = prepare_controls(cn_engine.controlnets, model, job, cn_engine.annotator_dir)
        return np.asarray(controls.detected_maps[0])

    assert np.array_equal(shuffled(7), shuffled(7))
    assert not np.array_equal(shuffled(7), shuffled(8))


def test_a_unit_map_over_a_lowered_pixel_budget_is_refused_on_the_worker(cn_engine, tmp_path):
    """The unit's map is sized on the worker thread (the preprocessor runs with the job): the
    configured --max-input-pixels applies there, not the default budget. A 64x64 unit image
    passes the request's check; its canny map at processor_res 256 (65536 pixels) does not."""
    from fastapi.testclient import TestClient

    from webui_api.app import create_app
    from webui_api.serving.guards import RequestLimits

    settings = settings_for_tests(tmp_path, guards=RequestLimits(max_input_pixels=128 * 128))
    with TestClient(create_app(settings, engine=cn_engine)) as client:
        def generate(processor_res: int):
            units = {"controlnet": {"args": [canny_unit(processor_res=processor_res)]}}
            return client.post("/sdapi/v1/txt2img", json={**PAYLOAD, "alwayson_scripts": units})

        refused = generate(256)
        assert refused.status_code == 413, refused.text
        assert "detected map" in refused.json()["detail"] and "--max-input-pixels" in refused.json()["errors"]
        assert generate(64).status_code == 200
