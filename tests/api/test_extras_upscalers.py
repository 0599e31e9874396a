"""GET /sdapi/v1/upscalers and /realesrgan-models list the data dir's upscaler folders."""

from __future__ import annotations

from tests.postprocess.upscaler_files import write_esrgan


def test_upscalers_route_lists_builtins_then_files(make_client, tmp_path):
    write_esrgan(tmp_path / "models" / "ESRGAN" / "4x-Test.pth")
    write_esrgan(tmp_path / "models" / "RealESRGAN" / "R-2x.safetensors", scale=2)
    client = make_client()
    items = client.get("/sdapi/v1/upscalers").json()
    names = [i["name"] for i in items]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and names[3:] == sorted(names[3:], key=str.lower)
    assert "4x-Test" in names and "R-2x" in names and "ESRGAN_4x" not in names  # a file replaces the built-in
    assert items[names.index("4x-Test")] == {"name": "4x-Test", "model_name": "ESRGAN_4x",
                                             "model_path": str(tmp_path / "models" / "ESRGAN" / "4x-Test.pth"),
                                             "model_url": None, "scale": 4}
    assert {"name": "R-2x", "path": str(tmp_path / "models" / "RealESRGAN" / "R-2x.safetensors"), "scale": 2} in (
        client.get("/sdapi/v1/realesrgan-models").json())


def test_empty_data_dir_lists_a1111_builtins(client):
    """A stock A1111 lists its built-in upscalers before any is downloaded (LDSR is not implemented here)."""
    assert [i["name"] for i in client.get("/sdapi/v1/upscalers").json()] == [
        "None", "Lanczos", "Nearest", "DAT x2", "DAT x3", "DAT x4", "ESRGAN_4x", "R-ESRGAN 4x+",
        "R-ESRGAN 4x+ Anime6B", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x"]
    assert [i["name"] for i in client.get("/sdapi/v1/realesrgan-models").json()] == [
        "R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"]


def test_realesrgan_enabled_models_option_chooses_the_listed_builtins(client):
    client.post("/sdapi/v1/options", json={"realesrgan_enabled_models": ["R-ESRGAN 2x+"]})
    names = [i["name"] for i in client.get("/sdapi/v1/upscalers").json()]
    assert "R-ESRGAN 2x+" in names and "R-ESRGAN 4x+" not in names
    assert [i["name"] for i in client.get("/sdapi/v1/realesrgan-models").json()] == ["R-ESRGAN 2x+"]
