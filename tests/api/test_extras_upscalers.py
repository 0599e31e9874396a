"""GET /sdapi/v1/upscalers and /realesrgan-models list the data dir's upscaler folders."""

from __future__ import annotations

from tests.postprocess.upscaler_files import write_esrgan


def test_upscalers_route_lists_builtins_then_files(make_client, tmp_path):
    write_esrgan(tmp_path / "models" / "ESRGAN" / "4x-Test.pth")
    write_esrgan(tmp_path / "models" / "RealESRGAN" / "R-2x.safetensors", scale=2)
    client = make_client()
    items = client.get("/sdapi/v1/upscalers").json()
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "4x-Test", "R-2x"]
    assert items[3] == {"name": "4x-Test", "model_name": "ESRGAN_4x",
                        "model_path": str(tmp_path / "models" / "ESRGAN" / "4x-Test.pth"), "model_url": None, "scale": 4}
    assert client.get("/sdapi/v1/realesrgan-models").json() == [
        {"name": "R-2x", "path": str(tmp_path / "models" / "RealESRGAN" / "R-2x.safetensors"), "scale": 2}
    ]


def test_empty_data_dir_lists_only_builtins(client):
    assert [i["name"] for i in client.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert client.get("/sdapi/v1/realesrgan-models").json() == []
