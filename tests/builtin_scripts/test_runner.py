"""A script run is ONE scheduler work item whose /progress job_count is the script's total
batch count, and the batches of its jobs are numbered 1..job_count across the run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tests.api.payloads import a1111_img2img_payload, a1111_test_payload
from tests.api.test_img2img import gradient, png_b64
from tests.factories import settings_for_tests
from webui_api.generation.scripts import run_script
from webui_api.progress import CancelToken
from webui_api.schemas.generation import Img2ImgRequest, Txt2ImgRequest


@dataclass
class RecordingProgress:
    """A RunObserver that keeps what it was told."""

    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def batch_started(self, batch_no: int, batch_count: int) -> None:
        self.calls.append(("start", batch_no, batch_count))

    def sampling_step(self, step: int, total_steps: int, make_preview: Any) -> None:
        pass

    def batch_finished(self, batch_no: int) -> None:
        self.calls.append(("done", batch_no, 0))


@dataclass
class InlineScheduler:
    """Runs each submitted item at once, recording it."""

    items: list[Any] = field(default_factory=list)

    async def run(self, item: Any, *_: Any, **__: Any) -> Any:
        self.items.append(item)
        return item.run(CancelToken())


@dataclass
class FakeRuntime:
    settings: Any
    engine: Any
    options: Any
    scheduler: InlineScheduler = field(default_factory=InlineScheduler)
    progress: RecordingProgress = field(default_factory=RecordingProgress)
    postprocess_models: Any = None
    weights: Any = None  # a WeightsFetcher (nothing to fetch: the scripts here use no pinned weights)
    serving: Any = field(default_factory=lambda: plain_serving())


def plain_serving() -> Any:
    """The serving hooks with default limits, no cache and no audit file."""
    from webui_api.serving.audit import AuditLog
    from webui_api.serving.guards import RequestLimits
    from webui_api.serving.hooks import ServingHooks
    from webui_api.serving.lifecycle import Lifecycle
    from webui_api.serving.metrics import Metrics
    from webui_api.serving.result_cache import ResultCache

    return ServingHooks(limits=RequestLimits(), cache=ResultCache(None), metrics=Metrics(), audit=AuditLog(None),
                        lifecycle=Lifecycle())


def runtime_for(engine, tmp_path) -> FakeRuntime:
    from webui_api.options import OptionsStore
    from webui_api.weights import WeightsFetcher

    settings = settings_for_tests(tmp_path)
    return FakeRuntime(settings, engine, OptionsStore(settings.data_dir / "config.json"),
                       weights=WeightsFetcher.from_settings(settings))


def run(runtime: FakeRuntime, request: Any, tab: str) -> dict[str, Any]:
    options = runtime.options.snapshot()
    return asyncio.run(run_script(request, tab, options, [], runtime))


def finished_batches(progress: RecordingProgress) -> list[int]:
    return [no for kind, no, _ in progress.calls if kind == "done"]


def test_prompts_from_file_counts_every_line_batch(engine, tmp_path):
    runtime = runtime_for(engine, tmp_path)
    request = Txt2ImgRequest.model_validate(a1111_test_payload(
        script_name="prompts from file or textbox", script_args=[False, False, "start", "a\n--prompt b --n_iter 2"],
        steps=1, width=32, height=32, n_iter=1,
    ))
    body = run(runtime, request, "txt2img")
    assert len(body["images"]) == 3
    [item] = runtime.scheduler.items
    assert item.progress.job == "scripts_txt2img" and item.progress.job_count == 3
    assert finished_batches(runtime.progress) == [0, 1, 2]
    assert {count for kind, _, count in runtime.progress.calls if kind == "start"} == {3}


def test_sd_upscale_counts_tile_batches(engine, tmp_path):
    runtime = runtime_for(engine, tmp_path)
    request = Img2ImgRequest.model_validate(a1111_img2img_payload(
        init_images=[png_b64(gradient())], script_name="sd upscale", script_args=["", 8, "Lanczos", 2.0],
        batch_size=4, steps=1,
    ))
    body = run(runtime, request, "img2img")
    assert len(body["images"]) == 1
    [item] = runtime.scheduler.items
    assert item.progress.job == "scripts_img2img" and item.progress.job_count == 3  # 9 tiles, 4 per batch
    assert finished_batches(runtime.progress) == [0, 1, 2]


def test_hires_jobs_count_two_progress_units_per_batch():
    from dataclasses import replace

    from webui_api.builtin_scripts.base import progress_units
    from webui_api.job_builder import build_txt2img

    job = build_txt2img(Txt2ImgRequest.model_validate(a1111_test_payload(n_iter=3, steps=1)), {})
    assert progress_units(job) == 3
    assert progress_units(replace(job, hires=object())) == 6
