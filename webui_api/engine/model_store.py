"""The checkpoints and VAEs the engine knows, and the models it holds in memory.

`ModelStore` owns the checkpoint catalog (scanned folders, hashed on load), the LRU of
loaded models (A1111's `sd_checkpoints_limit`: the active model on the device, the others
parked in CPU RAM) and the textual-inversion store each model gets. `VaeCatalog` owns the
VAE list and puts a job's VAE on a model.

Loading and moving models happens on the scheduler's single worker thread, so no locks.
The catalogs are also read by HTTP handlers on other threads: they are immutable tuples
replaced as a whole, so a reader sees the old list or the new one, never half of either.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from webui_api.engine.compile import CompilePolicy
from webui_api.engine.device import CPU, DevicePolicy
from webui_api.engine.embeddings import EmbeddingLibrary
from webui_api.engine.loading.checkpoint import LoadOptions, load_checkpoint
from webui_api.engine.loading.diffusers_folder import load_folder
from webui_api.engine.loading.discovery import (
    CHECKPOINT_HASH_PREFIX,
    ModelPaths,
    VaeFile,
    closest_checkpoint_match,
    scan_checkpoints,
    scan_vaes,
)
from webui_api.engine.loading.flux_checkpoint import is_flux_file, load_flux
from webui_api.engine.loading.flux_folder import is_flux_folder, load_flux_folder
from webui_api.engine.loading.forge_modules import load_t5_tokenizer
from webui_api.engine.loading.hashes import HashCache
from webui_api.engine.loading.sd3_checkpoint import is_sd3_file, load_sd3
from webui_api.engine.loading.sd3_folder import is_sd3_folder, load_sd3_folder
from webui_api.engine.loading.vae import VaeChoice, load_vae_file, resolve_vae
from webui_api.engine.models import (
    EMBEDDED_FILENAME,
    CheckpointInfo,
    LoadedModel,
    build_embedded_model,
    embedded_checkpoint_info,
)
from webui_api.engine.offload import ModuleSwapper, OffloadPlan
from webui_api.engine.previews import PreviewDecoders
from webui_api.engine.storage import store_linears_in
from webui_api.engine.text_encoder_offload import TextEncoderParking, check_offload_mode
from webui_api.engine.vae_tiling import check_vae_tiling_mode
from webui_api.engine_options import EngineOptions
from webui_api.errors import UnknownCheckpoint

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS_LIMIT = 1  # A1111's sd_checkpoints_limit default


@dataclass(frozen=True)
class ModelSetup:
    """What every model gets before it runs here, besides device and embeddings: the
    precision policy's autocast, A1111's --medvram/--lowvram mode, the live-preview decoders
    and the opt-in --compile."""

    vram_mode: str = "normal"
    compile_policy: CompilePolicy = field(default_factory=CompilePolicy)
    previews: PreviewDecoders = field(default_factory=lambda: PreviewDecoders(None))
    vae_tiling: str = "auto"  # --vae-tiling (engine.vae_tiling)
    offload_text_encoders: str = "auto"  # --offload-text-encoders (engine.text_encoder_offload)

    def __post_init__(self) -> None:
        OffloadPlan.for_mode(self.vram_mode, "sd1")  # refuses an unknown mode at start
        check_vae_tiling_mode(self.vae_tiling)
        check_offload_mode(self.offload_text_encoders)


class ModelCache:
    """Loaded models by file, least recently used first (A1111's `sd_checkpoints_limit`)."""

    def __init__(self, limit: int = DEFAULT_CHECKPOINTS_LIMIT) -> None:
        self.limit = max(1, limit)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    def get(self, filename: str) -> LoadedModel | None:
        """The cached model for a file, marked most recently used."""
        model = self._models.get(filename)
        if model is not None:
            self._models.move_to_end(filename)
        return model

    def put(self, model: LoadedModel) -> None:
        self._models[model.info.filename] = model
        self._models.move_to_end(model.info.filename)

    def evict_until(self, size: int) -> list[LoadedModel]:
        """Drop least recently used models until at most `size` remain; returns them."""
        evicted = []
        while len(self._models) > max(0, size):
            evicted.append(self._models.popitem(last=False)[1])
        return evicted

    def filenames(self) -> list[str]:
        return list(self._models)


class ModelStore:
    """The checkpoint catalog and the loaded models (see the module docstring)."""

    def __init__(
        self, policy: DevicePolicy, paths: ModelPaths, hashes: HashCache, load_options: LoadOptions,
        embeddings: EmbeddingLibrary, setup: ModelSetup | None = None,
    ) -> None:
        self.policy = policy
        self.setup = setup if setup is not None else ModelSetup()
        self._swapper = ModuleSwapper(policy.device, mover=policy.transfers.move)
        self._offloaded: LoadedModel | None = None  # the model the swapper's hooks are on
        self.paths = paths
        self.hashes = hashes
        self.load_options = load_options
        self.embeddings = embeddings
        self._checkpoints: tuple[CheckpointInfo, ...] = ()
        self._cache = ModelCache()
        self._active: LoadedModel | None = None
        self._current: CheckpointInfo | None = None
        self.refresh()

    # -- the catalog -------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every loadable checkpoint in A1111's order; the embedded tiny model only when the
        folders hold none."""
        return list(self._checkpoints)

    def refresh(self) -> None:
        """Rescan the checkpoint folders (POST /sdapi/v1/refresh-checkpoints)."""
        found = tuple(scan_checkpoints(self.paths, self.hashes))
        self._checkpoints = found or (embedded_checkpoint_info(),)
        by_file = {info.filename: info for info in self._checkpoints}
        if self._current is not None and self._current.filename in by_file:
            self._current = by_file[self._current.filename]
        elif self._active is None:
            self._current = self._checkpoints[0]  # the selected file is gone and nothing is loaded

    @property
    def current(self) -> CheckpointInfo:
        """The selected checkpoint (loaded or about to be)."""
        assert self._current is not None  # set by refresh in __init__
        return self._current

    @property
    def loaded(self) -> LoadedModel | None:
        return self._active

    def find(self, name: str) -> CheckpointInfo:
        """A checkpoint by A1111's get_closet_checkpoint_match (aliases, then title substring,
        then without a " [checksum]"). Names are only ever matched against scanned entries, so
        no name can reach outside the folders."""
        info: CheckpointInfo | None = closest_checkpoint_match(self._checkpoints, name)
        if info is None:
            raise UnknownCheckpoint(name)
        return info

    def job_checkpoint(self, name: str | None) -> CheckpointInfo:
        """The checkpoint a job runs on: like A1111's process_images, an override naming no
        known checkpoint is dropped and the selected checkpoint is used (with a warning)."""
        if name is None:
            return self.current
        info: CheckpointInfo | None = closest_checkpoint_match(self._checkpoints, name)
        if info is None:
            log.warning("Checkpoint %r not found; using %s", name, self.current.title)
            return self.current
        return info

    def _record_info(self, info: CheckpointInfo) -> None:
        """Replace the catalog entry for `info.filename` (its title changes once hashed)."""
        self._checkpoints = tuple(info if entry.filename == info.filename else entry for entry in self._checkpoints)
        if self._current is not None and self._current.filename == info.filename:
            self._current = info

    def _hashed(self, info: CheckpointInfo) -> CheckpointInfo:
        """A1111 hashes a checkpoint when it is loaded (unless --no-hashing)."""
        if info.sha256 is not None or info.filename == EMBEDDED_FILENAME:
            return info
        sha256 = self.hashes.sha256(Path(info.filename), CHECKPOINT_HASH_PREFIX + info.name)
        if sha256 is None:
            return info
        hashed = info.with_sha256(sha256)
        self._record_info(hashed)
        return hashed

    # -- loading and the LRU -----------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._cache.limit

    def set_limit(self, limit: int | None) -> None:
        """A1111's `sd_checkpoints_limit`: how many models stay loaded (the active one on the
        device, the others parked in CPU RAM). Shrinking takes effect at once."""
        self._cache.limit = max(1, int(limit or DEFAULT_CHECKPOINTS_LIMIT))
        self._drop(self._cache.evict_until(self._cache.limit))

    def cached(self) -> list[str]:
        """File names of the loaded models, least recently used first."""
        return self._cache.filenames()

    def load(self, title: str | None = None, modules: tuple[Path, ...] = (), storage: Any = None) -> LoadedModel:
        """Make `title` (or the current checkpoint) the active model: a no-op when it already
        is, a device move when it is cached, else a load from disk. A file that fails to load
        leaves the active model in place. `modules` (Forge's per-job VAE / text-encoder files)
        and `storage` (a float8 dtype for the transformer's weights, forge_unet_storage_dtype)
        only matter to models built from several files (Flux): a model built with other
        modules or storage is loaded again."""
        info = self.job_checkpoint(title)
        wanted = tuple(sorted(str(path) for path in modules))

        def fits(model: LoadedModel) -> bool:
            if model.flow_shift is None:
                return True
            return set(wanted) <= set(model.module_files) and model.unet_storage == storage

        if self._active is not None and self._active.info.filename == info.filename and fits(self._active):
            return self._active
        model = self._cache.get(info.filename)
        if model is not None and not fits(model):
            model = None
        if model is None:
            model = self._load_from_disk(info, modules)
            if model.flow_shift is not None and storage is not None:
                store_linears_in(model.unet, storage)
                model.unet_storage = storage
        self._activate(model)
        return model

    def companion(self, info: CheckpointInfo) -> LoadedModel:
        """A second model for the running job (refiner, hires checkpoint): loaded into the LRU
        next to the active model, which stays active, loaded and most recently used. The
        LRU grows to two entries at least, so loading never evicts the active model."""
        if self._active is not None and info.filename == self._active.info.filename:
            return self._active
        self.set_limit(max(self.limit, 2))
        model = self._cache.get(info.filename)
        if model is None:
            model = self._load_from_disk(info)
        self._place(model)
        if self._active is not None:
            self._cache.get(self._active.info.filename)
        return model

    def _load_from_disk(self, info: CheckpointInfo, modules: tuple[Path, ...] = ()) -> LoadedModel:
        if info.filename == EMBEDDED_FILENAME:
            self._make_room()
            model = build_embedded_model(self.policy.device, self.policy.dtype)
            model.vae.to(self.policy.vae_dtype)  # --no-half-vae, as for checkpoint files
            return model
        path = Path(info.filename)
        if path.is_dir() and is_flux_folder(path):
            tokenizer = partial(load_t5_tokenizer, self.paths)
            return load_flux_folder(info, self.load_options, tokenizer, before_build=self._make_room)
        if path.is_dir() and is_sd3_folder(path):
            tokenizer = partial(load_t5_tokenizer, self.paths)
            return load_sd3_folder(info, self.load_options, tokenizer, before_build=self._make_room)
        if path.is_dir():
            return load_folder(info, self.load_options, before_build=self._make_room)
        if is_flux_file(path):
            return load_flux(self._hashed(info), self.load_options, self.paths, modules, before_build=self._make_room)
        if is_sd3_file(path):
            return load_sd3(self._hashed(info), self.load_options, self.paths, modules, before_build=self._make_room)
        return load_checkpoint(self._hashed(info), self.load_options, before_build=self._make_room)

    def _make_room(self) -> None:
        """Called once a new model has passed every check: evict so it fits in the LRU."""
        evicted = self._cache.evict_until(self._cache.limit - 1)
        self._drop(evicted)

    def _drop(self, models: list[LoadedModel]) -> None:
        """Forget evicted models and return their memory. The list is emptied here so that
        no reference (the caller's included) keeps the weights alive past `free_memory`."""
        if any(model is self._active for model in models):
            self._active = None
        if any(model is self._offloaded for model in models):
            self._stop_offloading()
        if models:
            log.info("Unloaded %s", ", ".join(m.info.title for m in models))
            models.clear()
            self.policy.free_memory()

    def _place(self, model: LoadedModel, offload: bool = False) -> None:
        """`model` on the device (or, with `offload` and a --medvram/--lowvram plan, its swap
        units waiting in CPU RAM), with the embeddings that fit it, the precision policy's
        autocast, channels_last where the transfer plan says, the preview decoders and
        (--compile) a compiled UNet; most recently used."""
        plan = self.offload_plan(model) if offload else OffloadPlan("none")
        if plan.offloads:
            if self._offloaded is not model:
                model.alphas_cumprod = model.alphas_cumprod.to(self.policy.device)
                model.device = self.policy.device
                self._swapper.install(model.modules(), plan)
                self._offloaded = model
        elif model.device != self.policy.device:
            model.move_to(self.policy.device, self.policy.transfers.move)
        self.policy.transfers.format(model.unet)
        self.policy.transfers.format(model.vae)
        model.embeddings = self.embeddings.store_for(model)
        model.autocast = self.policy.autocast
        model.preview_decoders = self.setup.previews
        model.vae_tiling = self.setup.vae_tiling
        model.offloaded = plan.offloads
        model.text_encoder_parking = TextEncoderParking(
            self.policy.device.type, self.setup.offload_text_encoders, self.policy.transfers.move
        )
        self.setup.compile_policy.apply(model)
        self._cache.put(model)

    def offload_plan(self, model: LoadedModel) -> OffloadPlan:
        """A1111's --medvram/--medvram-sdxl/--lowvram plan for `model`; none on a CPU device."""
        if not self.policy.parks_in_ram:
            return OffloadPlan("none")
        return OffloadPlan.for_mode(self.setup.vram_mode, model.family)

    def _stop_offloading(self) -> None:
        """Take the swapper's hooks off the offloaded model (before it is parked or dropped)."""
        self._swapper.remove()
        self._offloaded = None

    def _activate(self, model: LoadedModel) -> None:
        """Park the previously active model in CPU RAM (on GPU devices), bring `model` to
        the device, and make it the current checkpoint."""
        previous = self._active
        if previous is not None and previous is not model and self.policy.parks_in_ram:
            if previous is self._offloaded:
                self._stop_offloading()
            previous.move_to(CPU, self.policy.transfers.move)
        self._place(model, offload=True)
        self._active = model
        self._current = model.info

    def unload(self) -> None:
        """Drop every loaded model and give the memory back (the CUDA cache too)."""
        self._stop_offloading()
        if self._active is None and not len(self._cache):
            return
        self._active = None
        self._drop(self._cache.evict_until(0))

    # -- textual inversion -------------------------------------------------------------

    def embeddings_listing(self) -> dict[str, dict[str, Any]]:
        """/sdapi/v1/embeddings: loaded (fit the active model) and skipped, A1111's fields."""
        active = self._active
        if active is not None and active.embeddings is not None:
            return active.embeddings.api_listing()
        return self.embeddings.store_for(active).api_listing()

    def refresh_embeddings(self) -> None:
        """Re-read the embeddings folder; the active model gets the new store at once."""
        self.embeddings.refresh()
        if self._active is not None:
            self._active.embeddings = self.embeddings.store_for(self._active)


class VaeCatalog:
    """The VAE files (/sdapi/v1/sd-vae) and A1111's choice of VAE per job."""

    def __init__(self, paths: ModelPaths, hashes: HashCache, load_options: LoadOptions) -> None:
        self.paths = paths
        self.hashes = hashes
        self.load_options = load_options
        self._vaes: tuple[VaeFile, ...] = ()
        self.refresh()

    def files(self) -> list[VaeFile]:
        return list(self._vaes)

    def refresh(self) -> None:
        self._vaes = tuple(scan_vaes(self.paths))

    def choose(self, model: LoadedModel, options: EngineOptions) -> VaeChoice:
        """The VAE a job with these options decodes with (A1111's resolution order)."""
        return resolve_vae(
            options.sd_vae,
            model.info.filename,
            self._vaes,
            vae_path=self.paths.vae_path,
            overrides_per_model=options.vae_overrides_per_model,
        )

    def apply(self, model: LoadedModel, options: EngineOptions) -> VaeChoice:
        """Put the job's VAE in place on `model` (a no-op when it already is)."""
        choice = self.choose(model, options)
        wanted = choice.file.filename if choice.file else None
        if wanted == model.vae_file:
            return choice
        if choice.file is None:
            model.vae = model.baked_vae
        else:
            load = self.load_options
            model.vae = load_vae_file(choice.file, model.family, model.device, load.vae_dtype, load.allow_unsafe_pickle)
            log.info("Using VAE %s (%s)", choice.file.model_name, choice.source)
        model.vae_file = wanted
        return choice

    def identity(self, choice: VaeChoice) -> tuple[str | None, str | None]:
        """(file name, sha256[:10]) of the separate VAE in use; (None, None) for the
        checkpoint's own. The infotext and info JSON report these (results.py)."""
        if choice.file is None:
            return None, None
        sha256 = self.hashes.sha256(Path(choice.file.filename), "vae/" + choice.file.model_name)
        return choice.file.model_name, sha256[:10] if sha256 else None
