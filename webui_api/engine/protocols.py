"""What the rest of the server may rely on about the engine, as typing Protocols.

The scheduler, the routes, the generation layer and the scripts runner type against
`GenerationEngine` and `ModelFacts` instead of `Any`, without importing the engine itself:
this module imports no torch (nor anything that does), so `import webui_api` stays light.
`webui_api.engine.facade.Engine` is the implementation (tests/engine/test_protocols.py
checks that it has every member named here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from webui_api.jobs import GenerationJob, JobResult
from webui_api.progress import CancelToken, RunObserver

FaceStep = Callable[[Any], Any]  # PIL image -> PIL image (webui_api.postprocess.face_restore)
FirstPassHook = Callable[[list[Any]], None]  # a hires batch's first-pass pictures


class ModelFacts(Protocol):
    """The checkpoint that ran a job, as infotext, info JSON and file names report it
    (engine.models.CheckpointInfo)."""

    @property
    def title(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def hash(self) -> str | None: ...

    @property
    def sha256(self) -> str | None: ...

    @property
    def filename(self) -> str: ...

    @property
    def name(self) -> str: ...


class CatalogEntry(ModelFacts, Protocol):
    """A checkpoint as /sdapi/v1/sd-models lists it."""

    def api_item(self) -> dict[str, Any]: ...


class ListedFile(Protocol):
    """A VAE or LoRA file as its /sdapi/v1 list shows it."""

    def api_item(self) -> dict[str, Any]: ...


class VaeEntry(ListedFile, Protocol):
    """A VAE file: `model_name` is what the `sd_vae` option names."""

    @property
    def model_name(self) -> str: ...


class ActiveModel(Protocol):
    """A loaded model, seen from outside the engine: which checkpoint it is and its kind."""

    @property
    def info(self) -> ModelFacts: ...

    @property
    def family(self) -> str: ...  # "sd1" | "sd2" | "sdxl" | "sdxl-refiner": its native size, for clients that omit one

    @property
    def architecture(self) -> str: ...  # the detected variant ("sd2-v", "sd1-inpaint", ...)


class GenerationEngine(Protocol):
    """The engine as the scheduler's worker thread and the HTTP handlers use it.

    Generation, loading and refreshing run on the worker thread only; the catalog readers
    (checkpoints, vaes, loras, embeddings_listing, memory) are safe from any thread."""

    def txt2img(
        self, job: GenerationJob, observer: RunObserver, cancel: CancelToken,
        restore_faces: FaceStep | None = None, before_hires: FirstPassHook | None = None,
        unet_rows: int = 0,
    ) -> JobResult: ...

    def img2img(
        self, job: GenerationJob, observer: RunObserver, cancel: CancelToken, restore_faces: FaceStep | None = None
    ) -> JobResult: ...

    def txt2img_batch(
        self, jobs: list[GenerationJob], observer: RunObserver, cancels: list[CancelToken], unet_rows: int
    ) -> list[JobResult]: ...

    def load(self, title: str | None = None) -> ActiveModel: ...

    def unload(self) -> None: ...

    def free_memory(self) -> None: ...

    def find_checkpoint(self, name: str) -> ModelFacts: ...

    @property
    def loaded(self) -> ActiveModel | None: ...  # the model on the device now, if any (a catalog read)

    def checkpoints(self) -> Sequence[CatalogEntry]: ...

    def refresh_checkpoints(self) -> None: ...

    def vaes(self) -> Sequence[VaeEntry]: ...

    def refresh_vae(self) -> None: ...

    def sd_modules(self) -> Sequence[ListedFile]: ...

    def loras(self) -> Sequence[ListedFile]: ...

    def refresh_loras(self) -> None: ...

    def embeddings_listing(self) -> dict[str, dict[str, Any]]: ...

    def refresh_embeddings(self) -> None: ...

    def memory(self) -> dict[str, Any]: ...
