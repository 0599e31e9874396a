"""The GET listings: A1111's shapes."""

from __future__ import annotations


def test_samplers_listing_shape(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert "Euler" in names and "Euler a" in names
    euler_a = samplers[names.index("Euler a")]
    assert euler_a == {
        "name": "Euler a",
        "aliases": ["k_euler_a", "k_euler_ancestral"],
        "options": {"uses_ensd": "True"},
    }
    assert all(isinstance(v, str) for s in samplers for v in s["options"].values())


def test_schedulers_listing_in_a1111_order(client):
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["name"] for s in schedulers] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
        "align_your_steps", "simple", "normal", "ddim", "beta",
    ]
    assert schedulers[5] == {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"],
                             "default_rho": -1.0, "need_inner_model": True}


def test_sd_models_lists_the_embedded_model(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert len(models) == 1
    model = models[0]
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert "random" in model["title"] and model["title"].endswith(f"[{model['hash']}]")
    assert model["sha256"].startswith(model["hash"])


def test_empty_catalogs_have_a1111_shapes(client):
    for route in ("sd-vae", "loras", "hypernetworks", "extensions", "prompt-styles"):
        assert client.get(f"/sdapi/v1/{route}").json() == [], route
    # A1111 lists its enabled Real-ESRGAN built-ins before they are downloaded
    assert [i["name"] for i in client.get("/sdapi/v1/realesrgan-models").json()] == [
        "R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert len(client.get("/sdapi/v1/latent-upscale-modes").json()) == 6
    assert client.get("/sdapi/v1/face-restorers").json() == [  # A1111 lists both, files or not
        {"name": "CodeFormer", "cmd_dir": None}, {"name": "GFPGAN", "cmd_dir": None}]


def test_prompt_styles_come_from_styles_csv(make_client, tmp_path):
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\n')
    client = make_client()
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cinematic", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}
    ]


def test_memory_shape(client):
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"}


def test_refresh_routes_return_null(client):
    for route in ("refresh-checkpoints", "refresh-vae", "refresh-embeddings", "refresh-loras"):
        response = client.post(f"/sdapi/v1/{route}")
        assert response.status_code == 200 and response.json() is None


def test_unload_and_reload_checkpoint(client):
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert client.post("/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64}).status_code == 200


def test_server_stop_routes_only_with_the_flag(client, make_client):
    assert client.post("/sdapi/v1/server-stop").status_code == 404
    enabled = make_client(api_server_stop=True)
    assert enabled.post("/sdapi/v1/server-restart").status_code == 501


def test_process_time_header(client):
    assert "x-process-time" in client.get("/sdapi/v1/samplers").headers


def test_gzip_for_listings_but_not_for_image_responses(client):
    options = client.get("/sdapi/v1/options", headers={"Accept-Encoding": "gzip"})
    assert options.headers.get("content-encoding") == "gzip"
    image = client.post("/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64},
                        headers={"Accept-Encoding": "gzip"})
    assert image.status_code == 200 and "content-encoding" not in image.headers
