"""GET/POST /sdapi/v1/options and GET /sdapi/v1/cmd-flags."""

from __future__ import annotations

from typing import Any

from fastapi import Body, Depends

from ..errors import ApiError, BadRequest, NotFound
from ..runtime import Runtime
from ..scheduler import WorkItem
from . import api_router, get_runtime

router = api_router()


@router.get("/sdapi/v1/options")
async def get_options(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return runtime.options.as_api_dict()


@router.post("/sdapi/v1/options")
async def set_options(updates: Any = Body(...), runtime: Runtime = Depends(get_runtime)) -> None:
    """Accepts any subset, including the whole GET dict sent back; a new checkpoint is loaded
    on the worker before the call returns, like A1111."""
    if not isinstance(updates, dict):
        raise BadRequest(f"expected a JSON object of option keys to values; received {type(updates).__name__}")
    changed = runtime.options.apply(
        updates, validate_checkpoint=lambda name: runtime.engine.find_checkpoint(name).title,
        validate_vae=lambda name: known_vae(runtime, name),
    )
    if "sd_model_checkpoint" in changed:
        await _load_checkpoint(runtime, *changed["sd_model_checkpoint"])
    return None


def known_vae(runtime: Runtime, name: str) -> str:
    """An sd_vae value the engine can use ("Automatic", "None" or a scanned VAE's name); a
    saved unknown name would make every later generation fail, so it is refused now (404)."""
    names = [vae.model_name for vae in runtime.engine.vaes()]
    if name in ("Automatic", "auto", "None") or name in names:
        return name
    choices = ", ".join(names) or "none"
    raise NotFound(f"VAE {name!r} not found; sd_vae must be 'Automatic', 'None' or one of: {choices}",
                   errors=f"VAE {name!r} not found")


async def _load_checkpoint(runtime: Runtime, previous: Any, title: str) -> None:
    """Load the new checkpoint; if it cannot be loaded, put the previous value back (A1111
    restores an option whose onchange failed) and report why. On success, record the loaded
    title, which gains its " [hash]" once the file has been hashed."""
    try:
        loaded = await runtime.scheduler.run(
            WorkItem(run=lambda _: runtime.engine.load(title), label="load checkpoint")
        )
    except ApiError:
        if previous is not None:
            runtime.options.apply({"sd_model_checkpoint": previous}, validate_checkpoint=lambda _: previous)
        raise
    runtime.options.set_internal(
        {"sd_model_checkpoint": loaded.info.title, "sd_checkpoint_hash": loaded.info.sha256 or ""}
    )


@router.get("/sdapi/v1/cmd-flags")
async def cmd_flags(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return dict(runtime.settings.cmd_flags)
