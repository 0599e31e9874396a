"""Checkpoints, VAEs and switching over HTTP, with real (tiny) files in A1111's folders."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from tests.engine.ldm_checkpoints import build_networks, kohya_sd1_lora, tiny_vae, write_checkpoint, write_vae
from tests.factories import settings_for_tests

SMALL = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture(scope="module")
def checkpoint_bytes():
    """Two tiny SD1 checkpoints and a VAE, built once, copied into each test's data folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        alpha = build_networks("sd1", seed=1)
        files = {
            "alpha.safetensors": write_checkpoint(root / "a.safetensors", alpha),
            "beta.safetensors": write_checkpoint(root / "b.safetensors", build_networks("sd1", seed=2)),
            "vae": write_vae(root / "v.safetensors", tiny_vae(seed=4)),
        }
        import safetensors.torch

        lora = root / "lora.safetensors"
        safetensors.torch.save_file(
            kohya_sd1_lora(alpha.unet, alpha.text_encoder), str(lora), metadata={"ss_output_name": "shiny"}
        )
        files["lora"] = lora
        yield {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture()
def data_dir(tmp_path, checkpoint_bytes):
    sd = tmp_path / "models" / "Stable-diffusion"
    (sd / "sub").mkdir(parents=True)
    (sd / "alpha.safetensors").write_bytes(checkpoint_bytes["alpha.safetensors"])
    (sd / "sub" / "beta.safetensors").write_bytes(checkpoint_bytes["beta.safetensors"])
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    (tmp_path / "models" / "VAE" / "tiny.vae.safetensors").write_bytes(checkpoint_bytes["vae"])
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    (tmp_path / "models" / "Lora" / "shiny_v1.safetensors").write_bytes(checkpoint_bytes["lora"])
    return tmp_path


@pytest.fixture()
def folder_client(data_dir):
    """A server whose engine is built from the data folder, as `launch.py --data-dir` does."""
    from fastapi.testclient import TestClient

    from webui_api.app import create_app

    settings = settings_for_tests(data_dir, device="cpu", dtype="float32")
    with TestClient(create_app(settings)) as client:
        client.post("/sdapi/v1/refresh-vae")  # queued behind the startup load: returns once it is done
        yield client


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sd_models_items_are_a1111s(folder_client, data_dir):
    sd = data_dir / "models" / "Stable-diffusion"
    alpha_sha = _sha(sd / "alpha.safetensors")
    models = folder_client.get("/sdapi/v1/sd-models").json()
    assert models == [
        {  # loaded at startup, so hashed
            "title": f"alpha.safetensors [{alpha_sha[:10]}]",
            "model_name": "alpha",
            "hash": alpha_sha[:10],
            "sha256": alpha_sha,
            "filename": str(sd / "alpha.safetensors"),
            "config": None,
        },
        {  # never loaded: no hash yet, like A1111
            "title": "sub/beta.safetensors",
            "model_name": "sub_beta",
            "hash": None,
            "sha256": None,
            "filename": str(sd / "sub" / "beta.safetensors"),
            "config": None,
        },
    ]
    options = folder_client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == models[0]["title"] and options["sd_checkpoint_hash"] == alpha_sha
    cache = json.loads((data_dir / "cache.json").read_text())
    assert cache["hashes"]["checkpoint/alpha.safetensors"]["sha256"] == alpha_sha


def test_switching_through_options_loads_before_answering(folder_client, data_dir):
    beta_sha = _sha(data_dir / "models" / "Stable-diffusion" / "sub" / "beta.safetensors")
    assert (
        folder_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sub/beta.safetensors"}).status_code == 200
    )
    title = f"sub/beta.safetensors [{beta_sha[:10]}]"
    assert folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == title
    assert folder_client.get("/sdapi/v1/sd-models").json()[1]["title"] == title
    info = json.loads(folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert info["sd_model_name"] == "sub_beta" and info["sd_model_hash"] == beta_sha[:10]
    assert f"Model hash: {beta_sha[:10]}, Model: sub_beta" in info["infotexts"][0]


def test_path_traversal_and_unknown_names_are_refused(folder_client):
    for name in ("../../etc/passwd", "../Stable-diffusion/alpha.safetensors", "nope.safetensors"):
        response = folder_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert response.status_code == 404, name
        assert response.json()["detail"] == f"model {name!r} not found"
    # A1111: "Couldn't find VAE named X; using None instead": the checkpoint's own VAE, 200
    response = folder_client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_vae": "../VAE/tiny.vae.safetensors"}}
    )
    assert response.status_code == 200 and "VAE hash" not in json.loads(response.json()["info"])["infotexts"][0]


def test_bad_file_is_a_400_and_the_previous_model_keeps_serving(folder_client, data_dir):
    sd = data_dir / "models" / "Stable-diffusion"
    good = (sd / "alpha.safetensors").read_bytes()
    (sd / "zz-truncated.safetensors").write_bytes(good[: len(good) // 2])
    (sd / "zz-foreign.safetensors").write_bytes(good[:8] + good[8:])  # same bytes, replaced below
    import safetensors.torch
    import torch

    safetensors.torch.save_file({"classifier.weight": torch.zeros(3, 3)}, str(sd / "zz-foreign.safetensors"))
    assert folder_client.post("/sdapi/v1/refresh-checkpoints").json() is None
    before = folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    for name, words in (("zz-truncated.safetensors", "truncated"), ("zz-foreign.safetensors", "unknown architecture")):
        response = folder_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert response.status_code == 400 and words in response.json()["detail"], response.text
        assert response.json()["error"] == "RuntimeError"
        assert folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before
    bad_override = folder_client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "zz-truncated"}}
    )
    assert bad_override.status_code == 400
    info = json.loads(folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert info["sd_model_name"] == "alpha"


def test_concurrent_jobs_with_different_checkpoints_each_get_their_own(folder_client):
    """A1111's biggest race: override_settings must stay with their own request."""
    results: dict[str, dict] = {}

    def run(name: str) -> None:
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": name}}
        response = folder_client.post("/sdapi/v1/txt2img", json=body)
        results[name] = json.loads(response.json()["info"])

    plain = json.loads(folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    threads = [
        threading.Thread(target=run, args=(name,))
        for name in ("sub/beta.safetensors", "alpha", "sub_beta", "alpha.safetensors")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {name: info["sd_model_name"] for name, info in results.items()} == {
        "sub/beta.safetensors": "sub_beta", "alpha": "alpha", "sub_beta": "sub_beta", "alpha.safetensors": "alpha",
    }
    assert results["alpha"]["infotexts"] == plain["infotexts"]  # same seed, same model, same image description
    assert folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("alpha.safetensors")
    after = json.loads(folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert after["sd_model_name"] == "alpha"


def test_sd_vae_listing_option_and_refresh(folder_client, data_dir, checkpoint_bytes):
    vae_dir = data_dir / "models" / "VAE"
    assert folder_client.get("/sdapi/v1/sd-vae").json() == [
        {"model_name": "tiny.vae.safetensors", "filename": str(vae_dir / "tiny.vae.safetensors")}
    ]
    (vae_dir / "other.safetensors").write_bytes(checkpoint_bytes["vae"])
    assert len(folder_client.get("/sdapi/v1/sd-vae").json()) == 1
    assert folder_client.post("/sdapi/v1/refresh-vae").json() is None
    assert [v["model_name"] for v in folder_client.get("/sdapi/v1/sd-vae").json()] == [
        "other.safetensors",
        "tiny.vae.safetensors",
    ]
    body = {**SMALL, "override_settings": {"sd_vae": "tiny.vae.safetensors"}}
    info = json.loads(folder_client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    line = info["infotexts"][0].split("\n")[-1]
    assert f", Model: alpha, VAE hash: {info['sd_vae_hash']}, VAE: tiny.vae.safetensors, " in line  # A1111's order
    assert info["sd_vae_name"] == "tiny.vae.safetensors" and len(info["sd_vae_hash"]) == 10
    assert "VAE" not in json.dumps(info["extra_generation_params"])
    assert folder_client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"


def test_unload_and_reload_checkpoint(folder_client):
    assert folder_client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert folder_client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert folder_client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_loras_listing_and_use_in_a_prompt(folder_client, data_dir, checkpoint_bytes):
    lora_dir = data_dir / "models" / "Lora"
    assert folder_client.get("/sdapi/v1/loras").json() == [
        {
            "name": "shiny_v1",
            "alias": "shiny",
            "path": str(lora_dir / "shiny_v1.safetensors"),
            "metadata": {"ss_output_name": "shiny"},
        }
    ]
    plain = folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()
    styled = folder_client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:shiny:0.8>"}).json()
    again = folder_client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert styled["images"][0] != plain["images"][0] and again["images"][0] == plain["images"][0]
    infotext = json.loads(styled["info"])["infotexts"][0]
    assert infotext.startswith("a cat <lora:shiny:0.8>\n") and "Lora hashes: \"shiny: " in infotext
    # A1111 generates without a LoRA it cannot find ("Networks not found"), 200
    missing = folder_client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "<lora:absent:1> a cat"})
    assert missing.status_code == 200 and "Lora hashes" not in json.loads(missing.json()["info"])["infotexts"][0]
    (lora_dir / "more.safetensors").write_bytes(checkpoint_bytes["lora"])
    assert folder_client.post("/sdapi/v1/refresh-loras").json() is None
    assert [item["name"] for item in folder_client.get("/sdapi/v1/loras").json()] == ["more", "shiny_v1"]


def test_embeddings_listing_and_refresh(folder_client, data_dir):
    import torch

    folder = data_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": torch.ones(2, 64)}, "step": 10}, folder / "tiny-style.pt")
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}}, folder / "sd15-style.pt")
    assert folder_client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert folder_client.post("/sdapi/v1/refresh-embeddings").json() is None
    assert folder_client.get("/sdapi/v1/embeddings").json() == {
        "loaded": {
            "tiny-style": {"step": 10, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 64, "vectors": 2}
        },
        "skipped": {
            "sd15-style": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 768, "vectors": 1}
        },
    }


def test_titles_from_other_installs_resolve_like_a1111(folder_client, data_dir):
    """aiyabot POSTs a title before every generation; a title with another install's (or no) hash,
    or a bare substring, finds the file as A1111's get_closet_checkpoint_match does."""
    beta_sha = _sha(data_dir / "models" / "Stable-diffusion" / "sub" / "beta.safetensors")
    for name in ("sub/beta.safetensors [0123456789]", "beta.safetensors [ffffffffff]", "beta"):
        assert folder_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}).status_code == 200, name
        assert folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == \
            f"sub/beta.safetensors [{beta_sha[:10]}]"
    stale = {**SMALL, "override_settings": {"sd_model_checkpoint": "alpha.safetensors [0000000000]"}}
    info = json.loads(folder_client.post("/sdapi/v1/txt2img", json=stale).json()["info"])
    assert info["sd_model_name"] == "alpha"


def test_unknown_override_checkpoint_runs_on_the_selected_model(folder_client):
    """A1111's process_images drops an override naming no checkpoint and answers 200."""
    selected = folder_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    payload = {**SMALL, "override_settings": {"sd_model_checkpoint": "elsewhere.safetensors [0123456789]"}}
    response = folder_client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sd_model_name"] == selected.split(".")[0]
