"""Request fields -> job for the refiner, the hires checkpoint, model upscalers, the hires
schedule type and image_cfg_scale (no engine involved)."""

from __future__ import annotations

import random

import pytest

from tests.api.payloads import webuiapi_txt2img
from webui_api.errors import BadRequest
from webui_api.job_builder import build_txt2img, refiner_params
from webui_api.jobs import RefinerParams
from webui_api.schemas.generation import Txt2ImgRequest


def job_for(**fields):
    return build_txt2img(Txt2ImgRequest(**webuiapi_txt2img(**fields)), {}, random.Random(0))


@pytest.mark.parametrize("name", [None, "", "None", "none", "  "])
def test_no_refiner(name):
    assert job_for(refiner_checkpoint=name, refiner_switch_at=0.8).refiner is None


def test_refiner_fields_reach_the_job():
    assert job_for(refiner_checkpoint="xl-refiner", refiner_switch_at=0.8).refiner == RefinerParams("xl-refiner", 0.8)


def test_null_switch_at_switches_at_the_first_call():
    """A1111 skips the threshold check when refiner_switch_at is None."""
    request = Txt2ImgRequest(**webuiapi_txt2img(refiner_checkpoint="xl-refiner", refiner_switch_at=None))
    assert refiner_params(request) == RefinerParams("xl-refiner", 0.0)


@pytest.mark.parametrize(
    "name, expected", [(None, None), ("", None), ("Use same checkpoint", None), ("other", "other")]
)
def test_hires_checkpoint(name, expected):
    assert job_for(enable_hr=True, hr_checkpoint_name=name).hires.checkpoint_title == expected


def test_model_upscaler_names_pass_to_the_engine():
    hires = job_for(enable_hr=True, hr_upscaler="4x-UltraSharp").hires
    assert hires.upscaler == "4x-UltraSharp" and hires.latent_mode is None
    with pytest.raises(BadRequest, match="hr_upscaler"):
        job_for(enable_hr=True, hr_upscaler="")


@pytest.mark.parametrize("first, second, expected", [
    ("Automatic", "Karras", "Karras"),
    ("Karras", "Karras", None),
    ("Karras", "Exponential", "Exponential"),
    ("Karras", None, None),
])
def test_hires_schedule_type(first, second, expected):
    hires = job_for(enable_hr=True, sampler_name="Euler", scheduler=first, hr_scheduler=second).hires
    assert dict(hires.infotext).get("Hires schedule type") == expected
    keys = [key for key, _ in hires.infotext]
    if expected:
        assert keys.index("Hires schedule type") < keys.index("Hires upscale")


def test_timestep_hires_sampler_writes_no_schedule_type():
    hires = job_for(enable_hr=True, sampler_name="Euler", hr_sampler_name="DDIM", hr_scheduler="Karras").hires
    assert "Hires schedule type" not in dict(hires.infotext)
