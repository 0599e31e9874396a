"""Infotext and `info` for Flux and SD3 as Forge writes them, and the png-info / pasted-infotext
round trip, checked against Forge's source (lllyasviel/stable-diffusion-webui-forge, main as of
June 2025):

- modules/processing.py `create_infotext` (lines 733-790): "Steps", "Sampler", "Schedule type",
  "CFG scale", then "Distilled CFG Scale" only when the model uses it (Flux dev:
  backend/diffusion_engine/flux.py sets `use_distilled_cfg_scale` for non-schnell models only;
  SD3.5 keeps base.py's False), then A1111's keys and `p.extra_generation_params`, "Version",
  then "Diffusion in Low Bits" (forge_unet_storage_dtype not Automatic) and last "Module 1..n":
  `os.path.splitext(os.path.basename(m))[0]` of each forge_additional_modules entry, in the
  option's order. No "Shift" key is written (the flow shift is fixed per model: flux.py, sd35.py).
  "VAE hash"/"VAE" are commented out there: Forge never writes them.
- Hires (processing.py 1283-1340, 1426): ... "Hires negative prompt", "Hires CFG Scale",
  "Hires Distilled CFG Scale" (Flux dev only), "Hires schedule type", "Hires upscale",
  "Hires steps", "Hires upscaler".
- `Processed.js` (processing.py ~580-600): `extra_generation_params` is the processing object's,
  which never holds "Distilled CFG Scale" or "Module N" (only create_infotext's local dict does).
- modules/infotext_utils.py `parse_generation_parameters` (lines 432-462): "Module N" values
  become "VAE/TE" when they differ from the selected modules; infotext_to_setting_name_mapping
  maps "VAE/TE" to forge_additional_modules. modules/ui.py 507/527: paste fields
  "Distilled CFG Scale" -> distilled_cfg_scale, "Hires Distilled CFG Scale" -> hr_distilled_cfg.

- Hires keys (processing.py init, 1283-1310): "Hires Module N" from hr_additional_modules
  ("Built-in" for [], "Use same choices" alone, else file stems), then the hires sampler and
  prompts, "Hires CFG Scale" (hr_cfg); infotext_utils.py 463-474 turns them into "Hires VAE/TE".

Where we differ on purpose: "Version" is A1111's v1.10.1 (clients key on it), "Hires CFG Scale"
is written only when the request sent hr_cfg (Forge writes its default 1.0 always), and "VAE/TE"
keeps the names without extension (our module resolver accepts them)."""

from __future__ import annotations

import pytest

from tests.flux.files import TINY, bfl_transformer_shapes, random_state, tiny_parts, write_models
from tests.sd3 import files as sd3_files

DEV_TITLE_PART, SCHNELL_FILE = "flux-bfl", "flux-schnell.safetensors"


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture()
def flux_client(make_client, tmp_path, parts):
    from dataclasses import replace

    from safetensors.torch import save_file

    paths = write_models(tmp_path / "models", parts, "bfl")
    schnell = random_state(bfl_transformer_shapes(replace(TINY, guidance=False)), seed=9)
    save_file(schnell, str(paths["checkpoint"].with_name(SCHNELL_FILE)))
    client = make_client(own_engine=True)
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    dev = next(t for t in titles if DEV_TITLE_PART in t)
    return client, dev, next(t for t in titles if "flux-schnell" in t)


def _modules(client, order: tuple[str, ...]) -> list[str]:
    listed = {m["model_name"]: m["filename"] for m in client.get("/sdapi/v1/sd-modules").json()}
    return [listed[name] for name in order]


def _flux_payload(title: str, modules: list[str], **extra) -> dict:
    return {
        "prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 7, "sampler_name": "Euler",
        "scheduler": "Simple", "cfg_scale": 1, "distilled_cfg_scale": 3.0,
        "override_settings": {"sd_model_checkpoint": title, "forge_additional_modules": modules}, **extra,
    }


def _model_keys(info: dict) -> str:
    return f"Model hash: {info['sd_model_hash']}, Model: {info['sd_model_name']}"


def _generate(client, payload: dict) -> tuple[dict, dict]:
    import json

    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_flux_dev_infotext_is_forges_and_round_trips(flux_client):
    client, dev, _ = flux_client
    modules = _modules(client, ("t5xxl.safetensors", "clip_l.safetensors", "ae.safetensors"))  # the job's order
    body, info = _generate(client, _flux_payload(dev, modules))
    expected = (
        "a cat\n"
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1.0, Distilled CFG Scale: 3.0, Seed: 7, "
        f"Size: 32x32, {_model_keys(info)}, Version: v1.10.1, Module 1: t5xxl, Module 2: clip_l, Module 3: ae"
    )
    assert info["infotexts"][0] == expected
    extra = info["extra_generation_params"]
    assert "Distilled CFG Scale" not in extra and not any(k.startswith("Module ") for k in extra)

    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert params["Distilled CFG Scale"] == "3.0" and params["Schedule type"] == "Simple"
    assert [params[f"Module {i}"] for i in (1, 2, 3)] == ["t5xxl", "clip_l", "ae"]
    assert params["VAE/TE"] == ["t5xxl", "clip_l", "ae"]

    # pasted: the infotext alone (plus the checkpoint, which infotext never switches) gives the image
    pasted = {"infotext": expected, "override_settings": {"sd_model_checkpoint": dev}}
    again, again_info = _generate(client, pasted)
    assert again["images"][0] == body["images"][0]
    assert again_info["infotexts"][0] == expected


def test_pasted_distilled_cfg_is_used(flux_client):
    """The round trip above can only pass if the pasted value reaches the job: 3.0 is not the default."""
    client, dev, _ = flux_client
    modules = _modules(client, ("ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"))
    body, _ = _generate(client, _flux_payload(dev, modules))
    default, _ = _generate(client, {k: v for k, v in _flux_payload(dev, modules).items() if k != "distilled_cfg_scale"})
    assert default["images"][0] != body["images"][0]


def test_flux_schnell_infotext_has_no_distilled_cfg(flux_client):
    client, _, schnell = flux_client
    modules = _modules(client, ("ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"))
    _, info = _generate(client, _flux_payload(schnell, modules, steps=1))
    assert info["infotexts"][0] == (
        "a cat\n"
        "Steps: 1, Sampler: Euler, Schedule type: Simple, CFG scale: 1.0, Seed: 7, "
        f"Size: 32x32, {_model_keys(info)}, Version: v1.10.1, Module 1: ae, Module 2: clip_l, Module 3: t5xxl"
    )


def test_flux_hires_keys_in_forges_order(flux_client):
    client, dev, _ = flux_client
    modules = _modules(client, ("ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"))
    payload = _flux_payload(dev, modules, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2,
                            denoising_strength=0.5, hr_distilled_cfg=5.0)
    body, info = _generate(client, payload)
    line = info["infotexts"][0].splitlines()[-1]
    assert line == (
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1.0, Distilled CFG Scale: 3.0, Seed: 7, "
        f"Size: 32x32, {_model_keys(info)}, Denoising strength: 0.5, Hires Distilled CFG Scale: 5.0, "
        "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, Version: v1.10.1, "
        "Module 1: ae, Module 2: clip_l, Module 3: t5xxl"
    )
    assert info["extra_generation_params"]["Hires Distilled CFG Scale"] == 5.0  # Forge keeps this one in `info`
    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert params["Hires Distilled CFG Scale"] == "5.0"
    again, _ = _generate(client, {"infotext": info["infotexts"][0],
                                  "override_settings": {"sd_model_checkpoint": dev}})
    assert again["images"][0] == body["images"][0]


def test_low_bits_key_follows_version(flux_client):
    client, dev, _ = flux_client
    modules = _modules(client, ("ae.safetensors",))
    payload = _flux_payload(dev, modules)
    payload["override_settings"]["forge_unet_storage_dtype"] = "float8-e4m3fn"
    _, info = _generate(client, payload)
    # only the modules the job named are numbered (Forge numbers the option's entries); the
    # encoders found in models/text_encoder are not
    assert info["infotexts"][0].endswith("Version: v1.10.1, Diffusion in Low Bits: float8-e4m3fn, Module 1: ae")


@pytest.fixture()
def sd3_client(make_client, tmp_path):
    sd3_files.write_models(tmp_path / "models", sd3_files.tiny_parts(), ())
    client = make_client(own_engine=True)
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    return client, next(t for t in titles if "sd3" in t)


def test_sd3_infotext_is_forges_and_round_trips(sd3_client):
    """SD3 has no distilled CFG (Forge's sd35.py leaves use_distilled_cfg_scale False) and no
    Shift key; the encoders found in models/text_encoder are numbered by path."""
    client, title = sd3_client
    payload = {"prompt": "a red cat", "negative_prompt": "blurry", "steps": 2, "width": 32, "height": 32, "seed": 7,
               "sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 4,
               "override_settings": {"sd_model_checkpoint": title}}
    body, info = _generate(client, payload)
    expected = (
        "a red cat\nNegative prompt: blurry\n"
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 4.0, Seed: 7, "
        f"Size: 32x32, {_model_keys(info)}, Version: v1.10.1, Module 1: clip_g, Module 2: clip_l, Module 3: t5xxl"
    )
    assert info["infotexts"][0] == expected
    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert "Distilled CFG Scale" not in params and params["VAE/TE"] == ["clip_g", "clip_l", "t5xxl"]
    again, _ = _generate(client, {"infotext": expected, "override_settings": {"sd_model_checkpoint": title}})
    assert again["images"][0] == body["images"][0]


def test_flux_hires_cfg_and_modules_in_forges_order(flux_client):
    """Forge's init order: Hires Module N, (sampler, prompts), Hires CFG Scale, Hires Distilled
    CFG Scale, then size/steps/upscaler; png-info turns Hires Module N into "Hires VAE/TE" and the
    pasted infotext gives the same image (hr_cfg 2.5 is not the first pass's 1.0)."""
    client, dev, _ = flux_client
    modules = _modules(client, ("ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"))
    common = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5,
                  hr_distilled_cfg=5.0)
    body, info = _generate(client, _flux_payload(dev, modules, hr_cfg=2.5, hr_additional_modules=modules, **common))
    line = info["infotexts"][0].splitlines()[-1]
    assert line == (
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1.0, Distilled CFG Scale: 3.0, Seed: 7, "
        f"Size: 32x32, {_model_keys(info)}, Denoising strength: 0.5, Hires Module 1: ae, Hires Module 2: clip_l, "
        "Hires Module 3: t5xxl, Hires CFG Scale: 2.5, Hires Distilled CFG Scale: 5.0, "
        "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, Version: v1.10.1, "
        "Module 1: ae, Module 2: clip_l, Module 3: t5xxl"
    )
    params = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert params["Hires CFG Scale"] == "2.5" and params["Hires VAE/TE"] == ["ae", "clip_l", "t5xxl"]
    again, _ = _generate(client, {"infotext": info["infotexts"][0], "override_settings": {"sd_model_checkpoint": dev}})
    assert again["images"][0] == body["images"][0]
    plain, _ = _generate(client, _flux_payload(dev, modules, hr_additional_modules=["Use same choices"], **common))
    assert _pixels(plain["images"][0]) != _pixels(body["images"][0])

    other = _modules(client, ("ae.safetensors",))
    response = client.post("/sdapi/v1/txt2img", json=_flux_payload(dev, modules, hr_additional_modules=other, **common))
    assert response.status_code == 400 and "hr_additional_modules" in response.json()["detail"]


def _pixels(b64: str) -> bytes:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).tobytes()
