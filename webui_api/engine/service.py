"""The engine object the server holds: device, the model catalogs, the loaded models.

One `Engine` per device. Everything that loads, moves or runs a model happens on the
scheduler's single worker thread, so model state needs no locks; it is held here, never in
module globals. The catalogs (checkpoints, VAEs) are also read by HTTP handlers on other
threads: they are immutable tuples replaced as a whole, so a reader sees the old list or the
new one, never half of either.

Per-job settings (checkpoint, sd_vae, the LRU size) come from the job's own options
snapshot, never from shared state, so two queued jobs with different `override_settings`
each run with exactly their own.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from webui_api.controlnet.catalog import annotator_dir, controlnet_dirs
from webui_api.engine.control import prepare_controls
from webui_api.engine.control_models import ControlNetLibrary
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
from webui_api.engine.loading.hashes import HashCache
from webui_api.engine.loading.vae import VaeChoice, load_vae_file, resolve_vae
from webui_api.engine.models import (
    EMBEDDED_FILENAME,
    CheckpointInfo,
    LoadedModel,
    build_embedded_model,
    embedded_checkpoint_info,
)
from webui_api.engine.networks import (
    LORA_KINDS,
    LoadedNetwork,
    NetworkCall,
    NetworkFile,
    NetworkLibrary,
    PassNetworks,
    group_network_keys,
    lora_calls,
    parse_prompt_networks,
)
from webui_api.engine.pipeline import run_txt2img
from webui_api.engine.compile import CompilePolicy
from webui_api.engine.device_errors import client_error_for
from webui_api.engine.offload import ModuleSwapper, OffloadPlan
from webui_api.engine.precision import PrecisionPolicy
from webui_api.engine.previews import PreviewDecoders
from webui_api.engine.tiling import apply_tiling
from webui_api.batching import batch_key
from webui_api.errors import NotImplementedFeature, UnknownCheckpoint
from webui_api.jobs import GenerationJob, JobResult
from webui_api.postprocess.upscale import BUILTIN_NAMES, UpscalerCatalog, UpscalerEntry
from webui_api.progress import CancelToken, RunObserver

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS_LIMIT = 1  # A1111's sd_checkpoints_limit default
LORA_NAME_SYMBOLS = str.maketrans("", "", ":,")  # A1111 drops these from names in "Lora hashes"


def extra_networks_disabled(job: GenerationJob) -> bool:
    """The request's `disable_extra_networks`, which the job builder carries in the job's
    options snapshot under that name (GenerationJob has no field for it)."""
    return bool(job.options.get("disable_extra_networks", False))


def with_default_lora(job: GenerationJob, default_lora: str | None) -> GenerationJob:
    """A1111's `sd_lora` option: unless the first prompt already names that network, every
    prompt gets `<lora:NAME:extra_networks_default_multiplier>` appended (so the images'
    prompts and infotext show it too). Disabled extra networks skip this, as A1111 then never
    activates the Lora network."""
    if default_lora is None or extra_networks_disabled(job) or not job.prompts:
        return job
    named = [tag.positional[0] for tag in parse_prompt_networks(job.prompts[0])[1] if tag.kind in LORA_KINDS and tag.positional]
    if default_lora in named:
        return job
    tag = f"<lora:{default_lora}:{job.options.get('extra_networks_default_multiplier', 1.0)}>"
    return replace(job, prompts=tuple(prompt + tag for prompt in job.prompts))


def job_networks(job: GenerationJob) -> tuple[tuple[str, ...], list[NetworkCall]]:
    """Every prompt without its extra-network tags, and the LoRAs to apply.

    A1111 reads the networks of each batch from the batch's first prompt; a job whose
    batches name different networks would need weights changed between batches, which
    this engine does not do yet (501 rather than a silently wrong batch). With
    `disable_extra_networks` the tags are still stripped but nothing is applied (A1111
    parses the prompts and skips the activation).
    """
    parsed = [parse_prompt_networks(prompt) for prompt in job.prompts]
    if extra_networks_disabled(job):
        return tuple(text for text, _ in parsed), []
    per_batch = [lora_calls(parsed[job.batch_slice(n).start][1]) for n in range(job.n_iter)]
    if any(calls != per_batch[0] for calls in per_batch):
        raise NotImplementedFeature("batches whose first prompts name different <lora:...> networks are not supported yet")
    return tuple(text for text, _ in parsed), per_batch[0]


def hires_network_calls(job: GenerationJob) -> list[NetworkCall] | None:
    """The LoRAs of the hires prompts (A1111's hr_extra_network_data), read per batch like
    the first pass's; None for jobs without hires fix. The hires prompts keep their tags in
    the job (they are stripped when the second pass encodes them)."""
    if job.hires is None:
        return None
    per_batch = [
        lora_calls(parse_prompt_networks(job.hires.prompts[job.batch_slice(n).start])[1]) for n in range(job.n_iter)
    ]
    if any(calls != per_batch[0] for calls in per_batch):
        raise NotImplementedFeature("batches whose first hires prompts name different <lora:...> networks are not supported yet")
    return per_batch[0]

DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


FaceStep = Callable[[Any], Any]  # PIL image -> PIL image (webui_api.postprocess.face_restore)


def without_overlays(job: GenerationJob) -> GenerationJob:
    """The job as run when faces get restored: img2img leaves the inpainting overlay (and the
    full-res paste back) to `restore_result_faces`, so restoration sees the raw decode."""
    if job.img2img is None or not job.img2img.overlays:
        return job
    return replace(job, img2img=replace(job.img2img, overlays=()))


def restore_result_faces(result: JobResult, job: GenerationJob, restore: FaceStep) -> None:
    """Restore every decoded image in place, then apply the overlay the run left out."""
    from webui_api.engine.img2img import overlaid

    pictures = [restore(generated.image) for generated in result.images]
    if job.img2img is not None:
        pictures = overlaid(pictures, job.img2img, job)
    for generated, picture in zip(result.images, pictures):
        generated.image = picture


def resolve_device(device: str) -> torch.device:
    """"auto" means CUDA when available, else CPU; anything else must be a torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" means fp16 on CUDA (A1111's default half precision) and fp32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def ram_usage() -> dict[str, Any]:
    """A1111's `ram` block: this process's resident memory against the machine's total.

    Read from /proc (psutil is not a dependency); elsewhere the block is {"error": ...}.
    """
    try:
        total = _proc_kib("/proc/meminfo", "MemTotal:") * 1024
        used = _proc_kib("/proc/self/status", "VmRSS:") * 1024
    except (OSError, ValueError) as err:
        return {"error": f"{err}"}
    return {"free": total - used, "used": used, "total": total}


def _proc_kib(path: str, key: str) -> int:
    """One "<key> <n> kB" line of a /proc file, as an int number of KiB."""
    with open(path, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1])
    raise ValueError(f"{key!r} not found in {path}")


def cuda_usage(device: torch.device) -> dict[str, Any]:
    """A1111's `cuda` block from torch's allocator statistics, or {"error": "unavailable"}
    when the machine has no CUDA (reported whatever device the engine itself uses, like A1111)."""
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    target = device if device.type == "cuda" else torch.device("cuda")
    try:
        free, total = torch.cuda.mem_get_info(target)
        stats = torch.cuda.memory_stats(target)
    except RuntimeError as err:
        return {"error": f"{err}"}

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }


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


class Engine:
    """Owns the device, the model catalogs and the loaded models; used from ONE worker thread
    (the catalog readers excepted, see the module docstring)."""

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        *,
        paths: ModelPaths | None = None,
        no_half_vae: bool = False,
        precision: str = "autocast",
        upcast_sampling: bool = False,
        vram_mode: str = "normal",
        compile_policy: CompilePolicy | None = None,
        taesd_dir: Path | None = None,
        no_hashing: bool = False,
        allow_unsafe_pickle: bool = False,
        controlnet_dirs: tuple[Path, ...] = (),
        annotator_dir: Path | None = None,
        no_half_controlnet: bool = False,
        upscalers: Callable[[], Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self._scan_upscalers = upscalers  # () -> UpscalerCatalog; None: only the built-ins
        self._upscalers: Any = None
        self.precision = PrecisionPolicy.resolve(
            self.device.type, dtype, no_half_vae=no_half_vae, precision=precision, upcast_sampling=upcast_sampling
        )
        log.info("Precision: %s", self.precision.describe())
        self.dtype = self.precision.weights
        OffloadPlan.for_mode(vram_mode, "sd1")  # refuses an unknown mode at start
        self.vram_mode = vram_mode
        self.compile_policy = compile_policy or CompilePolicy()
        self.previews = PreviewDecoders(taesd_dir)  # TAESD live-preview decoders (models/VAE-taesd)
        self._swapper = ModuleSwapper(self.device)
        self._offloaded: LoadedModel | None = None  # the model the swapper's hooks are on
        self.paths = paths if paths is not None else ModelPaths()
        self.load_options = LoadOptions(self.device, self.dtype, self.precision.vae, allow_unsafe_pickle)
        self.hashes = HashCache(self.paths.hash_cache_file, enabled=not no_hashing)
        self._checkpoints: tuple[CheckpointInfo, ...] = ()
        self._vaes: tuple[VaeFile, ...] = ()
        self._networks = NetworkLibrary(self.paths, self.hashes)
        self._embeddings = EmbeddingLibrary(self.paths, self.hashes, allow_unsafe_pickle)
        self._cache = ModelCache()
        self.controlnets = ControlNetLibrary(tuple(controlnet_dirs), allow_unsafe_pickle=allow_unsafe_pickle,
                                             full_precision=no_half_controlnet)
        self.annotator_dir = annotator_dir if annotator_dir is not None else Path("annotator")
        self._active: LoadedModel | None = None
        self._current: CheckpointInfo | None = None
        self.refresh_checkpoints()
        self.refresh_vae()

    @classmethod
    def from_settings(cls, settings: Any) -> Engine:
        """The engine for a server's `Settings`: its folders and A1111's precision/safety flags."""
        return cls(
            device=settings.device,
            dtype=settings.dtype,
            paths=ModelPaths.from_settings(settings),
            no_half_vae=settings.no_half_vae,
            precision=settings.precision,
            upcast_sampling=settings.upcast_sampling,
            vram_mode=settings.vram_mode,
            compile_policy=CompilePolicy(settings.compile_unet, settings.compile_mode),
            taesd_dir=settings.models_dir / "VAE-taesd",
            no_hashing=settings.no_hashing,
            allow_unsafe_pickle=bool(settings.cmd_flags.get("disable_safe_unpickle", False)),
            controlnet_dirs=controlnet_dirs(settings),
            annotator_dir=annotator_dir(settings),
            no_half_controlnet=bool(settings.cmd_flags.get("no_half_controlnet")),
            upscalers=lambda: UpscalerCatalog.from_settings(settings),
        )

    # -- checkpoint catalog ------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every loadable checkpoint in A1111's order; the embedded tiny model only when the
        folders hold none."""
        return list(self._checkpoints)

    def refresh_checkpoints(self) -> None:
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
        assert self._current is not None  # set by refresh_checkpoints in __init__
        return self._current

    @property
    def loaded(self) -> LoadedModel | None:
        return self._active

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """A checkpoint by A1111's get_closet_checkpoint_match (aliases, then title substring,
        then without a " [checksum]"). Names are only ever matched against scanned entries, so
        no name can reach outside the folders."""
        info = closest_checkpoint_match(self._checkpoints, name)
        if info is None:
            raise UnknownCheckpoint(name)
        return info

    def job_checkpoint(self, name: str | None) -> CheckpointInfo:
        """The checkpoint a job runs on: like A1111's process_images, an override naming no
        known checkpoint is dropped and the selected checkpoint is used (with a warning)."""
        if name is None:
            return self.current
        info = closest_checkpoint_match(self._checkpoints, name)
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
    def checkpoints_limit(self) -> int:
        return self._cache.limit

    def set_checkpoints_limit(self, limit: Any) -> None:
        """A1111's `sd_checkpoints_limit`: how many models stay loaded (the active one on the
        device, the others parked in CPU RAM). Shrinking takes effect at once."""
        self._cache.limit = max(1, int(limit or DEFAULT_CHECKPOINTS_LIMIT))
        self._drop(self._cache.evict_until(self._cache.limit))

    def cached_checkpoints(self) -> list[str]:
        """File names of the loaded models, least recently used first."""
        return self._cache.filenames()

    def load(self, title: str | None = None) -> LoadedModel:
        """Make `title` (or the current checkpoint) the active model: a no-op when it already
        is, a device move when it is cached, else a load from disk. A file that fails to load
        leaves the active model in place."""
        info = self.job_checkpoint(title)
        if self._active is not None and self._active.info.filename == info.filename:
            return self._active
        model = self._cache.get(info.filename)
        if model is None:
            model = self._load_from_disk(info)
        self._activate(model)
        return model

    def companion(self, info: CheckpointInfo) -> LoadedModel:
        """A second model for the running job (refiner, hires checkpoint): loaded into the LRU
        next to the active model, which stays active, loaded and most recently used. The
        LRU grows to two entries at least, so loading never evicts the active model."""
        if self._active is not None and info.filename == self._active.info.filename:
            return self._active
        self.set_checkpoints_limit(max(self.checkpoints_limit, 2))
        model = self._cache.get(info.filename)
        if model is None:
            model = self._load_from_disk(info)
        if model.device != self.device:
            model.move_to(self.device)
        self._prepare(model)
        self._cache.put(model)
        if self._active is not None:
            self._cache.get(self._active.info.filename)
        return model

    def _load_from_disk(self, info: CheckpointInfo) -> LoadedModel:
        if info.filename == EMBEDDED_FILENAME:
            self._make_room()
            model = build_embedded_model(self.device, self.dtype)
            model.vae.to(self.load_options.vae_dtype)  # --no-half-vae, as for checkpoint files
            return model
        if Path(info.filename).is_dir():
            return load_folder(info, self.load_options, before_build=self._make_room)
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
            self.free_memory()

    def _activate(self, model: LoadedModel) -> None:
        """Park the previously active model in CPU RAM (on GPU devices), bring `model` to
        the device, and make it the current checkpoint."""
        previous = self._active
        if previous is not None and previous is not model and self.device.type != "cpu":
            self._stop_offloading()
            previous.move_to(torch.device("cpu"))
        plan = self.offload_plan(model)
        if plan.offloads:
            if self._offloaded is not model:
                model.alphas_cumprod = model.alphas_cumprod.to(self.device)
                model.device = self.device
                self._swapper.install(model.modules(), plan)
                self._offloaded = model
        elif model.device != self.device:
            model.move_to(self.device)
        self._prepare(model)
        self._cache.put(model)
        self._active = model
        self._current = model.info

    def _prepare(self, model: LoadedModel) -> None:
        """What every model gets before it runs here: embeddings for its encoders, the
        precision policy's autocast, the preview decoders, and (with --compile) a compiled UNet."""
        model.embeddings = self._embeddings.store_for(model)
        model.autocast = self.precision.autocast
        model.preview_decoders = self.previews
        self.compile_policy.apply(model)

    def _stop_offloading(self) -> None:
        """Take the swapper's hooks off the offloaded model (before it is parked or dropped)."""
        self._swapper.remove()
        self._offloaded = None

    def offload_plan(self, model: LoadedModel) -> OffloadPlan:
        """A1111's --medvram/--medvram-sdxl/--lowvram plan for `model`; none on a CPU device."""
        if self.device.type == "cpu":
            return OffloadPlan("none")
        return OffloadPlan.for_mode(self.vram_mode, model.family)

    def unload(self) -> None:
        """Drop every loaded model and give the memory back (the CUDA cache too); the loaded
        ControlNets and annotator networks go as well."""
        self.controlnets.clear()
        self._stop_offloading()
        if self._active is None and not len(self._cache):
            return
        self._active = None
        self._drop(self._cache.evict_until(0))

    @staticmethod
    def client_error_for(exc: BaseException) -> BaseException:
        """What a client is told when its job failed with `exc` (a device OOM becomes a 503)."""
        return client_error_for(exc)

    def free_memory(self) -> None:
        """Collect garbage and return cached device memory; the scheduler calls this after a
        failed work item so the next job starts with the memory the failed one held. Loaded
        ControlNets and annotators stay (a bad request must not cost the next job a reload);
        unload() drops them."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- VAE ---------------------------------------------------------------------------

    def vaes(self) -> list[VaeFile]:
        """The /sdapi/v1/sd-vae list."""
        return list(self._vaes)

    def refresh_vae(self) -> None:
        self._vaes = tuple(scan_vaes(self.paths))

    def choose_vae(self, model: LoadedModel, options: Mapping[str, Any]) -> VaeChoice:
        """The VAE a job with these options decodes with (A1111's resolution order)."""
        return resolve_vae(
            options.get("sd_vae"),
            model.info.filename,
            self._vaes,
            vae_path=self.paths.vae_path,
            overrides_per_model=bool(options.get("sd_vae_overrides_per_model_preferences", True)),
        )

    def apply_vae(self, model: LoadedModel, options: Mapping[str, Any]) -> VaeChoice:
        """Put the job's VAE in place on `model` (a no-op when it already is)."""
        choice = self.choose_vae(model, options)
        wanted = choice.file.filename if choice.file else None
        if wanted == model.vae_file:
            return choice
        if choice.file is None:
            model.vae = model.baked_vae
        else:
            options = self.load_options
            model.vae = load_vae_file(choice.file, model.family, model.device, options.vae_dtype, options.allow_unsafe_pickle)
            log.info("Using VAE %s (%s)", choice.file.model_name, choice.source)
        model.vae_file = wanted
        return choice

    def vae_identity(self, choice: VaeChoice) -> tuple[str | None, str | None]:
        """(file name, sha256[:10]) of the separate VAE in use; (None, None) for the
        checkpoint's own. The infotext and info JSON report these (results.py)."""
        if choice.file is None:
            return None, None
        sha256 = self.hashes.sha256(Path(choice.file.filename), "vae/" + choice.file.model_name)
        return choice.file.model_name, sha256[:10] if sha256 else None

    # -- upscalers (hires fix) -----------------------------------------------------------

    def upscaler_catalog(self) -> Any:
        """The upscalers a hires job may name: the folders rescanned (as /sdapi/v1/upscalers
        does per call), the models already loaded kept."""
        if self._scan_upscalers is not None:
            fresh = self._scan_upscalers()
        else:
            fresh = UpscalerCatalog([UpscalerEntry(name) for name in BUILTIN_NAMES], str(self.device))
        if self._upscalers is not None:
            fresh = replace(self._upscalers, entries=fresh.entries)
        self._upscalers = fresh
        return fresh

    # -- textual inversion -------------------------------------------------------------

    def embeddings_listing(self) -> dict[str, dict[str, Any]]:
        """/sdapi/v1/embeddings: loaded (fit the active model) and skipped, A1111's fields."""
        active = self._active
        if active is not None and active.embeddings is not None:
            return active.embeddings.api_listing()
        return self._embeddings.store_for(active).api_listing()

    def refresh_embeddings(self) -> None:
        """Re-read the embeddings folder; the active model gets the new store at once."""
        self._embeddings.refresh()
        if self._active is not None:
            self._active.embeddings = self._embeddings.store_for(self._active)

    # -- LoRA ---------------------------------------------------------------------------

    def loras(self) -> list[NetworkFile]:
        """The /sdapi/v1/loras list."""
        return self._networks.files()

    def refresh_loras(self) -> None:
        self._networks.refresh()

    def default_lora(self, options: Mapping[str, Any]) -> str | None:
        """The `sd_lora` option's network when a LoRA file has that name (A1111 silently
        ignores a name it does not list), else None."""
        name = str(options.get("sd_lora") or "None")
        if name == "None" or all(entry.name != name for entry in self._networks.files()):
            return None
        return name

    def load_networks(self, calls: list[NetworkCall]) -> list[LoadedNetwork]:
        """Find and read every network a job names (400 before any weight changes). A name
        that matches no file is skipped with a warning: A1111 generates without it."""
        loaded = []
        for call in calls:
            entry = self._networks.lookup(call.name)
            if entry is None:
                log.warning("Networks not found: %s (generating without it, as A1111)", call.name)
                continue
            state = self._networks.state_dict(entry, self.load_options.allow_unsafe_pickle)
            loaded.append(LoadedNetwork(call, entry, group_network_keys(state)))
        return loaded

    def pass_networks(self, calls: list[NetworkCall], hires_calls: list[NetworkCall] | None) -> PassNetworks:
        """Both passes' networks, read before any weight changes (an unknown hires LoRA is a
        404 before sampling); the hires set is None when it equals the first pass's."""
        first = self.load_networks(calls)
        if hires_calls is None or hires_calls == calls:
            return PassNetworks(first)
        return PassNetworks(first, self.load_networks(hires_calls))

    def lora_infotext(self, loaded: list[LoadedNetwork], options: Mapping[str, Any]) -> dict[str, Any]:
        """A1111's "Lora hashes": "name: 12-digit hash" per network, as written in the prompt."""
        if not loaded or not options.get("lora_add_hashes_to_infotext", True):
            return {}
        hashes = {}
        for network in loaded:
            shorthash = self._networks.shorthash(network.entry)
            if shorthash:
                hashes[network.call.name.translate(LORA_NAME_SYMBOLS)] = shorthash
        return {"Lora hashes": ", ".join(f"{name}: {value}" for name, value in hashes.items())} if hashes else {}

    # -- generation --------------------------------------------------------------------

    def txt2img(
        self, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None = None, before_hires: Callable[[list[Any]], None] | None = None,
        unet_rows: int = 0,
    ) -> JobResult:
        """Run a txt2img job with its own checkpoint, VAE, LoRAs and LRU size (all from the
        job's options snapshot and prompts); the LoRAs are removed again afterwards. A job with
        hires params runs both passes (webui_api.engine.hires). `restore_faces` (the route's
        face restorer for jobs with restore_faces) runs on every decoded image; `before_hires`
        gets each batch's first-pass pictures of a hires job (save_images_before_highres_fix).
        With `unet_rows` (a server that batches) a batchable job runs as a batch of one, so its
        images are the ones it would get inside a batch (see txt2img_batch)."""
        if unet_rows > 0 and batch_key(job) is not None:
            return self.txt2img_batch([job], observer, [cancel], unet_rows)[0]
        if job.hires is not None:
            from functools import partial

            from webui_api.engine.hires import run_hires

            run = run_hires if before_hires is None else partial(run_hires, first_pass=before_hires)
            return self._generate(run, job, observer, cancel, restore_faces, with_models=True)
        if job.refiner is not None:
            from webui_api.engine.refiner import run_txt2img_refined

            return self._generate(run_txt2img_refined, job, observer, cancel, restore_faces, with_models=True)
        return self._generate(run_txt2img, job, observer, cancel, restore_faces)

    def img2img(self, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
                restore_faces: FaceStep | None = None) -> JobResult:
        """Run an img2img job exactly like txt2img (checkpoint, VAE, LoRAs), from its init images."""
        from webui_api.engine.img2img import run_img2img

        return self._generate(run_img2img, job, observer, cancel, restore_faces, with_models=True)

    def txt2img_batch(
        self, jobs: list[GenerationJob], observer: RunObserver, cancels: list[CancelToken], unet_rows: int
    ) -> list[JobResult]:
        """Cross-request batching: run single-iteration txt2img jobs that share a batch key
        (webui_api.batching) as one sampler batch; one result per job, in order. The jobs
        share checkpoint, VAE and LoRAs, so they are applied once. Every UNet call has exactly
        `unet_rows` rows (webui_api.engine.batched.RowChunks)."""
        from webui_api.engine.batched import run_txt2img_batched

        head = jobs[0]
        self.set_checkpoints_limit(head.options.get("sd_checkpoints_limit", DEFAULT_CHECKPOINTS_LIMIT))
        model = self.load(head.model_title)
        choice = self.apply_vae(model, head.options)
        jobs = [with_default_lora(job, self.default_lora(job.options)) for job in jobs]
        stripped = [job_networks(job) for job in jobs]
        if any(calls != stripped[0][1] for _, calls in stripped):
            raise ValueError("jobs in one batch must name the same <lora:...> networks in their first prompts")
        networks = self.pass_networks(stripped[0][1], None)
        networks.attach(model, strict=True)
        padding = apply_tiling(model, head.tiling)
        try:
            plain = [replace(job, prompts=prompts) for job, (prompts, _) in zip(jobs, stripped)]
            results = run_txt2img_batched(model, plain, observer, cancels, unet_rows=unet_rows)
        finally:
            padding.restore()
            networks.restore()
        return [self._finish(result, job, networks.mentioned(), choice, model) for result, job in zip(results, jobs)]

    def _finish(
        self, result: JobResult, job: GenerationJob, networks: list[LoadedNetwork], choice: VaeChoice, model: LoadedModel,
    ) -> JobResult:
        """Infotext facts of a finished job: prompts with their tags, LoRA hashes, the VAE, the model."""
        result.model_info = model.info
        for index, image in enumerate(result.images):
            image.prompt = job.prompts[index]
        result.extra_generation_params.update(self.lora_infotext(networks, job.options))
        result.extra_generation_params.update(self.ti_infotext(job))
        result.vae_name, result.vae_hash = self.vae_identity(choice)
        return result

    def ti_infotext(self, job: GenerationJob) -> dict[str, str]:
        """A1111's "TI hashes" for the embeddings the job's prompts (and hires prompts) use."""
        from webui_api.engine.embeddings import ti_hashes_infotext, used_embeddings

        model = self._active
        if not job.options.get("textual_inversion_add_hashes_to_infotext", True):
            return {}
        if model is None or model.embeddings is None:
            return {}
        texts = [*job.prompts, *job.negative_prompts]
        if job.hires is not None:
            texts += [*job.hires.prompts, *job.hires.negative_prompts]
        tokenizer = model.tokenizer if model.tokenizer is not None else model.tokenizer_2
        return ti_hashes_infotext(used_embeddings(model.embeddings, tokenizer, texts))

    def _generate(
        self, run: Any, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None = None, with_models: bool = False,
    ) -> JobResult:
        """Load what the job names, apply its LoRAs around `run`, and fill the result's
        infotext facts (prompts keep their <lora:...> tags, as in A1111). Faces are restored
        after decoding and before the inpainting overlay, A1111's order. `with_models` runs
        get the job's CompanionModels (refiner, hires checkpoint) as `models`."""
        from webui_api.engine.refiner import CompanionModels, companion_count

        limit = int(job.options.get("sd_checkpoints_limit", DEFAULT_CHECKPOINTS_LIMIT) or DEFAULT_CHECKPOINTS_LIMIT)
        self.set_checkpoints_limit(max(limit, 1 + companion_count(job)))
        model = self.load(job.model_title)
        choice = self.apply_vae(model, job.options)
        job, controls = prepare_controls(self.controlnets, model, job, self.annotator_dir)
        job = with_default_lora(job, self.default_lora(job.options))
        stripped, calls = job_networks(job)
        networks = self.pass_networks(calls, hires_network_calls(job))
        networks.attach(model, strict=True)
        padding = apply_tiling(model, job.tiling)
        run_job = job if restore_faces is None else without_overlays(job)
        companions = CompanionModels(self, job, model, networks)
        extra = {"models": companions} if with_models else {}
        try:
            result = run(model, replace(run_job, prompts=stripped), observer, cancel, **extra)
        finally:
            networks.restore()
            companions.close()
            padding.restore()
        if restore_faces is not None:
            restore_result_faces(result, job, restore_faces)
        self._finish(result, job, networks.mentioned(), choice, model)
        controls.finish(result, job.options)
        return result

    def memory(self) -> dict[str, Any]:
        """The body of /sdapi/v1/memory: {ram: {...}, cuda: {...}}."""
        return {"ram": ram_usage(), "cuda": cuda_usage(self.device)}
