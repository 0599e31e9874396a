"""The sampler and scheduler are resolved once, by the job builder, into registry entries on
the job: the engine's plan, the infotext, the info JSON and file-name tags read those entries
and never look a name up again; the entries survive pickling (jobs travel to workers)."""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass

import pytest

from samplers import registry
from tests.api.payloads import webuiapi_txt2img
from webui_api.job_builder import build_txt2img
from webui_api.jobs import GeneratedImage, JobResult
from webui_api.schemas.generation import Txt2ImgRequest


def job_for(**fields):
    return build_txt2img(Txt2ImgRequest(**webuiapi_txt2img(**fields)), {}, random.Random(0))


@dataclass(frozen=True)
class _Model:
    title: str = "m.safetensors [abc]"
    model_name: str = "m"
    hash: str | None = "abc"


def refuse_lookups(monkeypatch) -> None:
    """From here on, any name lookup in the registry fails the test."""

    def refuse(name):
        raise AssertionError(f"looked up {name!r} again after the job was built")

    monkeypatch.setattr(registry, "find_sampler", refuse)
    monkeypatch.setattr(registry, "find_scheduler", refuse)


def test_the_job_holds_the_registry_entries():
    job = job_for(sampler_name="Euler Karras", scheduler=None, enable_hr=True, hr_sampler_name="Euler a")
    assert job.sampling.sampler is registry.SAMPLERS[[s.name for s in registry.SAMPLERS].index("Euler")]
    assert job.sampling.schedule.name == "karras" and job.sampling.scheduler == "karras"
    assert job.hires.sampling.sampler.name == "Euler a" and job.hires.sampling.sampler_name == "Euler a"


def test_unknown_names_fall_back_once_at_build_time():
    job = job_for(sampler_name="no such sampler", scheduler="no such scheduler")
    assert (job.sampling.sampler_name, job.sampling.scheduler) == ("DPM++ 2M", "automatic")


def test_infotext_info_and_file_tags_read_the_entries(monkeypatch):
    job = _built_job()
    request = Txt2ImgRequest(**webuiapi_txt2img())
    refuse_lookups(monkeypatch)
    from webui_api.postprocess.saving import job_name_facts
    from webui_api.results import build_info, build_infotexts

    image = GeneratedImage(image=None, seed=1, subseed=2, prompt="a cat", negative_prompt="")
    result = JobResult(images=[image])
    (text,) = build_infotexts(job, result, _Model())
    assert "Sampler: Euler a, Schedule type: Karras" in text and "ENSD: 31337" in text
    assert '"sampler_name": "Euler a"' in build_info(job, result, _Model(), [text], request)
    assert job_name_facts(job).scheduler_label == "Karras"


def test_the_engine_plan_reads_the_entries(monkeypatch):
    from webui_api.engine.pipeline import resolve_plan

    job = _built_job()
    refuse_lookups(monkeypatch)
    plan = resolve_plan(job)
    assert plan.sampler is job.sampling.sampler and plan.scheduler is job.sampling.schedule


def _built_job():
    options = {"eta_noise_seed_delta": 31337}
    request = Txt2ImgRequest(**webuiapi_txt2img(sampler_name="Euler a", scheduler="Karras"))
    return build_txt2img(request, options, random.Random(0))


@pytest.mark.parametrize("entry", [*registry.SAMPLERS, *registry.SCHEDULERS], ids=lambda entry: entry.name)
def test_entries_pickle_as_themselves(entry):
    assert pickle.loads(pickle.dumps(entry)) is entry


def test_a_job_pickles_with_its_entries():
    job = job_for(sampler_name="UniPC", scheduler="Exponential")
    copy = pickle.loads(pickle.dumps(job))
    assert copy.sampling == job.sampling and copy.sampling.sampler is job.sampling.sampler
