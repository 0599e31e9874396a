"""The GET listings clients read (samplers, models, styles, ...) and the refresh-* routes.

Catalogs whose features land later answer an empty list in A1111's shape, so clients that
populate menus from them keep working.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import Depends

from ..postprocess.upscale import UpscalerCatalog
from ..runtime import Runtime
from ..scheduler import WorkItem
from ..styles import read_styles
from . import api_router, get_runtime

router = api_router()

LATENT_UPSCALE_MODES = (
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
    "Latent (nearest)", "Latent (nearest-exact)",
)


def _sampler_item(sampler: Any) -> dict[str, Any]:
    """A1111's SamplerItem: option values are strings (pydantic v1 coerced True to "True")."""
    return {
        "name": sampler.name,
        "aliases": list(sampler.aliases),
        "options": {k: str(v) for k, v in sampler.options.items()},
    }


def _scheduler_item(scheduler: Any) -> dict[str, Any]:
    return {
        "name": scheduler.name,
        "label": scheduler.label,
        "aliases": list(scheduler.aliases) if scheduler.aliases else None,
        "default_rho": float(scheduler.default_rho),
        "need_inner_model": bool(scheduler.need_inner_model),
    }


@router.get("/sdapi/v1/samplers")
async def samplers() -> list[dict[str, Any]]:
    """Only the samplers this server can run, in A1111's order."""
    from samplers import registry

    return [_sampler_item(s) for s in registry.implemented_samplers()]


@router.get("/sdapi/v1/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    from samplers import registry

    return [_scheduler_item(s) for s in registry.SCHEDULERS]


@router.get("/sdapi/v1/sd-models")
async def sd_models(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """A1111's six fields per checkpoint; `hash`/`sha256` are null until a file is hashed."""
    return [info.api_item() for info in runtime.engine.checkpoints()]


@router.get("/sdapi/v1/sd-vae")
async def sd_vae(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """VAE files by name ("Automatic" and "None" are option values, not listed, as in A1111)."""
    return [vae.api_item() for vae in runtime.engine.vaes()]


@router.get("/sdapi/v1/sd-modules")
async def sd_modules(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """Forge's module list: every file in models/VAE and models/text_encoder as
    {model_name: file name, filename: path}; jobs pick them in forge_additional_modules."""
    return [module.api_item() for module in runtime.engine.sd_modules()]


@router.get("/sdapi/v1/upscalers")
async def upscalers(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """None/Lanczos/Nearest, then A1111's built-in upscalers and the files in its upscaler
    folders, sorted by name (scanned per call; built-ins are fetched on first use)."""
    return UpscalerCatalog.from_settings(runtime.settings, options=runtime.options.snapshot()).api_items()


@router.get("/sdapi/v1/latent-upscale-modes")
async def latent_upscale_modes() -> list[dict[str, Any]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


@router.get("/sdapi/v1/embeddings")
async def embeddings(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Textual inversions that fit the loaded model ("loaded") and those that do not."""
    return runtime.engine.embeddings_listing()


@router.get("/sdapi/v1/loras")
async def loras(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """A1111's Lora extension items: name (file stem), alias (ss_output_name), path, metadata."""
    return [network.api_item() for network in runtime.engine.loras()]


@router.get("/sdapi/v1/hypernetworks")
async def hypernetworks() -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/face-restorers")
async def face_restorers() -> list[dict[str, Any]]:
    """A1111 lists both restorers whatever files are present (cmd_dir is null there too);
    using one whose weights are missing is a 400 naming the file."""
    from ..postprocess.face_restore.restorers import face_restorer_items

    return face_restorer_items()


@router.get("/sdapi/v1/realesrgan-models")
async def realesrgan_models(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """The Real-ESRGAN built-ins `realesrgan_enabled_models` enables (their download URL as
    path until fetched, as A1111 shows them) and other files in models/RealESRGAN."""
    return UpscalerCatalog.from_settings(runtime.settings, options=runtime.options.snapshot()).realesrgan_items()


@router.get("/sdapi/v1/prompt-styles")
async def prompt_styles(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    return [asdict(style) for style in read_styles(_style_files(runtime))]


def _style_files(runtime: Runtime) -> list[Any]:
    settings = runtime.settings
    return list(settings.styles_files) or [settings.data_dir / "styles.csv"]


@router.get("/sdapi/v1/scripts")
async def scripts() -> dict[str, list[str]]:
    """Lower-cased script titles; webuiapi looks for "controlnet m2m" here to detect ControlNet."""
    from .. import script_catalog

    return {"txt2img": script_catalog.names("txt2img"), "img2img": script_catalog.names("img2img")}


@router.get("/sdapi/v1/script-info")
async def script_info(runtime: Runtime = Depends(get_runtime)) -> list[dict[str, Any]]:
    """A1111's ScriptInfo per script and tab: name, is_alwayson, is_img2img, args."""
    from ..builtin_scripts.runner import script_infos

    return script_infos(runtime)


@router.get("/sdapi/v1/extensions")
async def extensions() -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/memory")
async def memory(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    body = runtime.engine.memory()
    gpus = runtime.gpu_health.readings()
    if gpus:  # NVML's per-device view (all processes), next to A1111's torch allocator figures
        body = {**body, "gpus": [reading.as_dict() for reading in gpus]}
    return body


async def _on_worker(runtime: Runtime, label: str, action: Any) -> None:
    """Rescans run on the worker, between jobs, like A1111's refreshes under its queue lock."""
    await runtime.scheduler.run(WorkItem(run=lambda _: action(), label=label))


@router.post("/sdapi/v1/refresh-checkpoints")
async def refresh_checkpoints(runtime: Runtime = Depends(get_runtime)) -> None:
    await _on_worker(runtime, "refresh checkpoints", runtime.engine.refresh_checkpoints)


@router.post("/sdapi/v1/refresh-vae")
async def refresh_vae(runtime: Runtime = Depends(get_runtime)) -> None:
    await _on_worker(runtime, "refresh VAE list", runtime.engine.refresh_vae)


@router.post("/sdapi/v1/refresh-loras")
async def refresh_loras(runtime: Runtime = Depends(get_runtime)) -> None:
    await _on_worker(runtime, "refresh LoRA list", runtime.engine.refresh_loras)


@router.post("/sdapi/v1/refresh-embeddings")
async def refresh_embeddings(runtime: Runtime = Depends(get_runtime)) -> None:
    await _on_worker(runtime, "refresh embeddings", runtime.engine.refresh_embeddings)
