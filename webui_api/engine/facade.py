"""The engine the scheduler and routes hold: one `Engine` per device, a small facade.

It wires the collaborators together and runs jobs; each concern lives in its own module:
device and precision in `device.py`, the checkpoint catalog / LRU / VAEs in
`model_store.py`, a job's LoRAs in `job_networks.py`, the samplers' pipelines in
`pipeline.py`, `img2img.py`, `hires.py`, `refiner.py` and `batched.py`. Callers outside
the engine type against `webui_api.engine.protocols.GenerationEngine`.

Everything that loads, moves or runs a model happens on the scheduler's single worker
thread. Per-job settings (checkpoint, VAE, the LRU size, LoRA defaults) come from the job's
own `engine_options`, never from shared state, so two queued jobs with different
`override_settings` each run with exactly their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from webui_api.batching import batch_key
from webui_api.controlnet.catalog import annotator_dir, controlnet_dirs
from webui_api.engine.attention import apply_attention_upcast
from webui_api.engine.compile import CompilePolicy
from webui_api.engine.control import prepare_controls
from webui_api.engine.control_models import ControlNetLibrary
from webui_api.engine.device import DevicePolicy
from webui_api.engine.device_errors import client_error_for
from webui_api.engine.embeddings import EmbeddingLibrary
from webui_api.engine.job_networks import JobNetworks, hires_network_calls, job_networks, with_default_lora
from webui_api.engine.loading.checkpoint import LoadOptions
from webui_api.engine.loading.discovery import ModelPaths, VaeFile
from webui_api.engine.loading.forge_modules import ModuleFile, resolve_modules, scan_modules
from webui_api.engine.loading.hashes import HashCache
from webui_api.engine.loading.vae import VaeChoice
from webui_api.engine.model_store import ModelSetup, ModelStore, VaeCatalog
from webui_api.engine.models import CheckpointInfo, LoadedModel
from webui_api.engine.networks import LoadedNetwork, NetworkFile
from webui_api.engine.noise_schedule import with_job_schedule
from webui_api.engine.pipeline import run_txt2img
from webui_api.engine.previews import PreviewDecoders
from webui_api.engine.protocols import FaceStep, FirstPassHook
from webui_api.engine.storage import storage_dtype
from webui_api.engine.tiling import apply_tiling
from webui_api.engine_options import EngineOptions
from webui_api.jobs import GenerationJob, JobResult
from webui_api.postprocess.upscale import BUILTIN_NAMES, UpscalerCatalog, UpscalerEntry
from webui_api.progress import CancelToken, RunObserver
from webui_api.settings import Settings

log = logging.getLogger(__name__)

# A pipeline entry point: run(model, job, observer, cancel[, models=CompanionModels]) -> JobResult
# (run_txt2img, run_img2img, run_hires, run_txt2img_refined).
Run = Callable[..., JobResult]


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
    for generated, picture in zip(result.images, pictures, strict=True):
        generated.image = picture


def textual_inversion_infotext(model: LoadedModel, job: GenerationJob) -> dict[str, str]:
    """A1111's "TI hashes" for the embeddings the job's prompts (and hires prompts) use."""
    from webui_api.engine.embeddings import ti_hashes_infotext, used_embeddings

    if not job.engine_options.ti_hashes_in_infotext or model.embeddings is None:
        return {}
    texts = [*job.prompts, *job.negative_prompts]
    if job.hires is not None:
        texts += [*job.hires.prompts, *job.hires.negative_prompts]
    tokenizer = model.tokenizer if model.tokenizer is not None else model.tokenizer_2
    return ti_hashes_infotext(used_embeddings(model.embeddings, tokenizer, texts))


class Engine:
    """Device policy, model store, VAEs, networks and ControlNets, and the generation entry
    points; used from ONE worker thread (catalog readers excepted, see model_store.py)."""

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
        vae_approx_dir: Path | None = None,
        vae_tiling: str = "auto",
        channels_last: str = "auto",
        offload_text_encoders: str = "auto",
        no_hashing: bool = False,
        allow_unsafe_pickle: bool = False,
        controlnet_dirs: tuple[Path, ...] = (),
        annotator_dir: Path | None = None,
        no_half_controlnet: bool = False,
        upscalers: Callable[[], UpscalerCatalog] | None = None,
    ) -> None:
        self.policy = DevicePolicy.resolve(device, dtype, no_half_vae, precision=precision,
                                           upcast_sampling=upcast_sampling, channels_last=channels_last)
        assert self.policy.precision is not None
        log.info("Precision: %s; %s", self.policy.precision.describe(), self.policy.transfers.describe())
        self.paths = paths if paths is not None else ModelPaths()
        policy = self.policy
        self.load_options = LoadOptions(policy.device, policy.dtype, policy.vae_dtype, allow_unsafe_pickle)
        self.hashes = HashCache(self.paths.hash_cache_file, enabled=not no_hashing)
        embeddings = EmbeddingLibrary(self.paths, self.hashes, allow_unsafe_pickle)
        setup = ModelSetup(vram_mode, compile_policy or CompilePolicy(), PreviewDecoders(taesd_dir, vae_approx_dir),
                           vae_tiling, offload_text_encoders)
        self.models = ModelStore(self.policy, self.paths, self.hashes, self.load_options, embeddings, setup)
        self.vae_catalog = VaeCatalog(self.paths, self.hashes, self.load_options)
        self.networks = JobNetworks(self.paths, self.hashes, allow_unsafe_pickle)
        self.controlnets = ControlNetLibrary(tuple(controlnet_dirs), allow_unsafe_pickle=allow_unsafe_pickle,
                                             full_precision=no_half_controlnet)
        self.annotator_dir = annotator_dir if annotator_dir is not None else Path("annotator")
        self._scan_upscalers = upscalers  # None: only the built-ins
        self._upscalers: UpscalerCatalog | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
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
            vae_approx_dir=settings.models_dir / "VAE-approx",
            vae_tiling=settings.vae_tiling,
            channels_last=settings.channels_last,
            offload_text_encoders=settings.offload_text_encoders,
            no_hashing=settings.no_hashing,
            allow_unsafe_pickle=bool(settings.cmd_flags.get("disable_safe_unpickle", False)),
            controlnet_dirs=controlnet_dirs(settings),
            annotator_dir=annotator_dir(settings),
            no_half_controlnet=bool(settings.cmd_flags.get("no_half_controlnet")),
            upscalers=lambda: UpscalerCatalog.from_settings(settings),
        )

    @property
    def device(self) -> torch.device:
        """The torch.device models run on."""
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        """The torch.dtype of the UNet and text encoders."""
        return self.policy.dtype

    # -- catalogs and loaded models (the HTTP catalog routes) -------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        return self.models.checkpoints()

    def refresh_checkpoints(self) -> None:
        self.models.refresh()

    @property
    def current(self) -> CheckpointInfo:
        return self.models.current

    @property
    def loaded(self) -> LoadedModel | None:
        return self.models.loaded

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        return self.models.find(name)

    def load(self, title: str | None = None) -> LoadedModel:
        return self.models.load(title)

    def sd_modules(self) -> list[ModuleFile]:
        """Forge's module listing (GET /sdapi/v1/sd-modules): VAE and text-encoder files."""
        return scan_modules(self.paths)

    def job_modules(self, options: EngineOptions) -> tuple[Path, ...]:
        """The module files a job's `forge_additional_modules` names (400 for unknown names)."""
        names = options.forge_additional_modules
        return resolve_modules(names, self.sd_modules()) if names else ()

    def _load_for(self, job: GenerationJob) -> LoadedModel:
        """The job's checkpoint, built with the job's Forge modules and weight storage."""
        options = job.engine_options
        storage = storage_dtype(options.forge_unet_storage_dtype)
        return self.models.load(job.model_title, self.job_modules(options), storage)

    def companion(self, info: CheckpointInfo) -> LoadedModel:
        return self.models.companion(info)

    def apply_vae(self, model: LoadedModel, job: GenerationJob) -> VaeChoice:
        return self.vae_catalog.apply(model, job.engine_options)

    def unload(self) -> None:
        """Drop every loaded model, ControlNet and annotator network; give the memory back."""
        self.controlnets.clear()
        self.models.unload()

    @staticmethod
    def client_error_for(exc: BaseException) -> BaseException:
        """What a client is told when its job failed with `exc` (a device OOM becomes a 503)."""
        return client_error_for(exc)

    def free_memory(self) -> None:
        """Collect garbage and return cached device memory; the scheduler calls this after a
        failed work item so the next job starts with the memory the failed one held. Loaded
        ControlNets and annotators stay (a bad request must not cost the next job a reload);
        unload() drops them."""
        self.policy.free_memory()

    def memory(self) -> dict[str, Any]:
        """The body of /sdapi/v1/memory: {ram: {...}, cuda: {...}}."""
        return self.policy.memory()

    def vaes(self) -> list[VaeFile]:
        return self.vae_catalog.files()

    def refresh_vae(self) -> None:
        self.vae_catalog.refresh()

    def loras(self) -> list[NetworkFile]:
        return self.networks.files()

    def refresh_loras(self) -> None:
        self.networks.refresh()

    def embeddings_listing(self) -> dict[str, dict[str, Any]]:
        return self.models.embeddings_listing()

    def refresh_embeddings(self) -> None:
        self.models.refresh_embeddings()

    def upscaler_catalog(self) -> UpscalerCatalog:
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

    # -- generation ------------------------------------------------------------------------

    def txt2img(
        self, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None = None, before_hires: FirstPassHook | None = None,
        unet_rows: int = 0,
    ) -> JobResult:
        """Run a txt2img job with its own checkpoint, VAE, LoRAs and LRU size (all from the
        job's engine options and prompts); the LoRAs are removed again afterwards. A job with
        hires params runs both passes (webui_api.engine.hires). `restore_faces` (the route's
        face restorer for jobs with restore_faces) runs on every decoded image; `before_hires`
        gets each batch's first-pass pictures of a hires job (save_images_before_highres_fix).
        With `unet_rows` (a server that batches) a batchable job runs as a batch of one, so its
        images are the ones it would get inside a batch (see txt2img_batch)."""
        if unet_rows > 0 and batch_key(job) is not None:
            return self.txt2img_batch([job], observer, [cancel], unet_rows)[0]
        if job.hires is not None:
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
        self.models.set_limit(head.engine_options.checkpoints_limit)
        model = self._load_for(head)
        if model.flow_shift is not None:  # flow models do not share UNet batches: one job at a time
            pairs = zip(jobs, cancels, strict=True)
            return [self._generate(run_txt2img, job, observer, cancel) for job, cancel in pairs]
        choice = self.vae_catalog.apply(model, head.engine_options)
        jobs = [with_default_lora(job, self.networks.default_lora(job.engine_options)) for job in jobs]
        stripped = [job_networks(job) for job in jobs]
        if any(calls != stripped[0][1] for _, calls in stripped):
            raise ValueError("jobs in one batch must name the same <lora:...> networks in their first prompts")
        networks = self.networks.for_passes(stripped[0][1], None)
        networks.attach(model, strict=True)
        padding = apply_tiling(model, head.tiling)
        attention = apply_attention_upcast(model, head.engine_options.upcast_attn)
        try:
            plain = [replace(job, prompts=prompts) for job, (prompts, _) in zip(jobs, stripped, strict=True)]
            results = run_txt2img_batched(model, plain, observer, cancels, unet_rows=unet_rows)
        finally:
            attention.restore()
            padding.restore()
            networks.restore()
        mentioned = networks.mentioned()
        return [
            self._finish(result, job, mentioned, choice, model) for result, job in zip(results, jobs, strict=True)
        ]

    def _finish(
        self, result: JobResult, job: GenerationJob, networks: list[LoadedNetwork], choice: VaeChoice,
        model: LoadedModel,
    ) -> JobResult:
        """Infotext facts of a finished job: prompts with their tags, LoRA hashes, the VAE, the model."""
        result.model_info = model.info
        for index, image in enumerate(result.images):
            image.prompt = job.prompts[index]
        result.extra_generation_params.update(self.networks.infotext(networks, job.engine_options))
        result.extra_generation_params.update(textual_inversion_infotext(model, job))
        result.vae_name, result.vae_hash = self.vae_catalog.identity(choice)
        return result

    def _generate(
        self, run: Run, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None = None, with_models: bool = False,
    ) -> JobResult:
        """Load what the job names, apply its LoRAs around `run`, and fill the result's
        infotext facts (prompts keep their <lora:...> tags, as in A1111). Faces are restored
        after decoding and before the inpainting overlay, A1111's order. `with_models` runs
        get the job's CompanionModels (refiner, hires checkpoint) as `models`."""
        from webui_api.engine.refiner import CompanionModels, companion_count

        self.models.set_limit(max(job.engine_options.checkpoints_limit, 1 + companion_count(job)))
        model = self._load_for(job)
        if model.flow_shift is not None:
            return self._generate_flow(job, model, observer, cancel, restore_faces)
        choice = self.vae_catalog.apply(model, job.engine_options)
        job, controls = prepare_controls(self.controlnets, model, job, self.annotator_dir)
        job = with_default_lora(job, self.networks.default_lora(job.engine_options))
        stripped, calls = job_networks(job)
        networks = self.networks.for_passes(calls, hires_network_calls(job))
        networks.attach(model, strict=True)
        padding = apply_tiling(model, job.tiling)
        attention = apply_attention_upcast(model, job.engine_options.upcast_attn)
        run_job = job if restore_faces is None else without_overlays(job)
        scheduled, schedule_infotext = with_job_schedule(model, job.engine_options)
        companions = CompanionModels(self, job, scheduled, networks)
        extra = {"models": companions} if with_models else {}
        try:
            result = run(scheduled, replace(run_job, prompts=stripped), observer, cancel, **extra)
        finally:
            networks.restore()
            companions.close()
            attention.restore()
            padding.restore()
        result.extra_generation_params.update(schedule_infotext)
        if restore_faces is not None:
            restore_result_faces(result, job, restore_faces)
        self._finish(result, job, networks.mentioned(), choice, model)
        controls.finish(result, job.engine_options)
        return result

    def _generate_flow(
        self, job: GenerationJob, model: LoadedModel, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None,
    ) -> JobResult:
        """Flow-matching families (Flux, SD3): their own runs; the VAE is the one the modules chose.
        The first pass's LoRAs (transformer and text-encoder layers) are merged for the whole job."""
        from webui_api.engine.families.flux import run_flux_img2img, run_flux_txt2img
        from webui_api.engine.families.flux_lora import apply_flux_networks
        from webui_api.engine.families.sd3 import run_sd3_img2img, run_sd3_txt2img
        from webui_api.engine.families.sd3_lora import apply_sd3_networks

        job = with_default_lora(job, self.networks.default_lora(job.engine_options))
        stripped, calls = job_networks(job)
        loaded = self.networks.load(calls)
        run_job = job if restore_faces is None else without_overlays(job)
        if model.family == "sd3":
            run = run_sd3_img2img if job.kind == "img2img" else run_sd3_txt2img
            patch = apply_sd3_networks(model, loaded)
        else:
            run = run_flux_img2img if job.kind == "img2img" else run_flux_txt2img
            patch = apply_flux_networks(model, loaded)
        try:
            result = run(model, replace(run_job, prompts=stripped), observer, cancel)
        finally:
            patch.restore()
        result.extra_generation_params.update(self.networks.infotext(loaded, job.engine_options))
        if restore_faces is not None:
            restore_result_faces(result, job, restore_faces)
        result.model_info = model.info
        for index, image in enumerate(result.images):
            image.prompt = job.prompts[index]
        return result
