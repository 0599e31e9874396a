"""The request's disable_extra_networks reaches the job (no engine involved)."""

from __future__ import annotations

import random

import pytest

from webui_api.job_builder import build_txt2img
from webui_api.schemas.generation import Txt2ImgRequest


@pytest.mark.parametrize("sent, expected", [(None, False), (False, False), (True, True)])
def test_disable_extra_networks_is_in_the_engine_options(sent, expected):
    fields = {"prompt": "a cat <lora:x:1>"} | ({} if sent is None else {"disable_extra_networks": sent})
    job = build_txt2img(Txt2ImgRequest(**fields), {"sd_lora": "x"}, random.Random(0))
    assert job.engine_options.disable_extra_networks is expected
    assert job.engine_options.default_lora == "x"
    assert job.prompts == ("a cat <lora:x:1>",)


def test_an_unusable_engine_option_is_a_400_before_queueing():
    from webui_api.errors import BadRequest

    with pytest.raises(BadRequest, match="sigma_min"):
        build_txt2img(Txt2ImgRequest(prompt="a cat"), {"sigma_min": "low"}, random.Random(0))
