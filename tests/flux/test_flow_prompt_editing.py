"""Prompt editing per step on the flow families (Flux, SD3), as A1111/Forge's denoiser applies it:
every distinct scheduled text is encoded once, and denoiser call i gets the variant A1111's
reconstruct_cond_batch picks for step i ([a:b:N], [a|b], second-order samplers counting double)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.engine.helpers import RecordingObserver, make_job
from tests.flux.files import cpu_engine
from tests.flux.files import tiny_parts as flux_parts
from tests.flux.files import write_models as write_flux
from tests.sd3.files import tiny_parts as sd3_parts
from tests.sd3.files import write_models as write_sd3
from webui_api.engine.families import flux as flux_family
from webui_api.engine.families import sd3 as sd3_family
from webui_api.engine.families.flow import PromptFrame, prompt_texts
from webui_api.engine.prompts import prompt_schedule
from webui_api.progress import CancelToken

STEPS = 4
FAMILIES = {  # title, module, the transformer argument that carries the text states
    "flux": ("flux-aio.safetensors", flux_family, "encoder_hidden_states"),
    "sd3": ("sd3.safetensors", sd3_family, "encoder_hidden_states"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "flux":
        paths = write_flux(root, flux_parts(), "all-in-one")
    else:
        paths = write_sd3(root, sd3_parts())
    engine = cpu_engine(paths)
    title, module, argument = FAMILIES[request.param]
    return engine, engine.load(title), module, argument


def _job(family, prompt: str, sampler: str = "Euler"):
    engine, model, _, _ = family
    job = make_job((prompt,), width=32, height=32, steps=STEPS, cfg_scale=1.0, sampler=sampler)
    return replace(job, model_title=model.info.title)


def _recorded_states(family, job) -> list[torch.Tensor]:
    """The text states the transformer got at each call of one txt2img run."""
    engine, model, _, argument = family
    seen: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs[argument].detach().clone()), with_kwargs=True
    )
    try:
        engine.txt2img(job, RecordingObserver(), CancelToken())
    finally:
        handle.remove()
    return seen


def _a1111_texts(prompt: str, calls: int, total: int) -> list[str]:
    """The text A1111's denoiser uses at call i: the first entry whose end_at_step >= i."""
    schedule = prompt_schedule(prompt, total)
    return [next((e.text for e in schedule if i <= e.end_at_step), schedule[0].text) for i in range(calls)]


@pytest.mark.parametrize("prompt", ["[cat:dog:0.5]", "a [cat|dog]", "[cat:dog:1] [red:blue:3]"])
def test_each_call_gets_the_scheduled_text(family, prompt):
    engine, model, module, _ = family
    job = _job(family, prompt)
    seen = _recorded_states(family, job)
    expected = _a1111_texts(prompt, len(seen), STEPS)
    assert len(seen) == STEPS and len(set(expected)) > 1
    with torch.inference_mode():
        encoded = {text: module.encode_texts(model, [text], job) for text in set(expected)}
    for states, text in zip(seen, expected, strict=True):
        reference = encoded[text]
        reference = reference.t5 if module is flux_family else reference.context
        assert torch.equal(states, reference), text


def test_second_order_samplers_count_every_call(family):
    """Heun calls the denoiser twice per step (once on the last); the schedule is laid out on
    2 x steps as in A1111 (total_steps), so `[cat:dog:0.5]` switches halfway through the calls."""
    job = _job(family, "[cat:dog:0.5]", sampler="Heun")
    seen = _recorded_states(family, job)
    assert len(seen) == 2 * STEPS - 1
    expected = _a1111_texts("[cat:dog:0.5]", len(seen), 2 * STEPS)
    switch = expected.index("dog")
    assert switch == STEPS + 1  # calls 0..4 are "cat" (end_at_step 4 of 8)
    assert all(torch.equal(s, seen[0]) for s in seen[:switch]) and not torch.equal(seen[switch], seen[0])
    assert all(torch.equal(s, seen[switch]) for s in seen[switch:])


def test_images_follow_the_edit(family):
    engine, _, _, _ = family
    image = lambda prompt: np.asarray(  # noqa: E731
        engine.txt2img(_job(family, prompt), RecordingObserver(), CancelToken()).images[0].image
    )
    cat, dog, edited = image("cat"), image("dog"), image("[cat:dog:0.5]")
    assert np.array_equal(image("[cat:dog:10]"), cat)  # switch after the last step: never
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)


def test_prompt_texts_joins_and_parts_and_drops_network_tags():
    schedule = prompt_texts("[cat:dog:0.5] <lora:x:1> AND [a:b:1]", PromptFrame(4))
    assert [(e.end_at_step, e.text.split()) for e in schedule] == [(1, ["cat", "a"]), (2, ["cat", "b"]),
                                                                    (4, ["dog", "b"])]
    hires = prompt_texts("[cat:dog:6]", PromptFrame(4, hires_steps=4))  # integers count on from the first pass
    assert [(e.end_at_step, e.text) for e in hires] == [(2, "cat"), (4, "dog")]


def test_hires_pass_schedules_on_the_hires_timeline(family):
    """A1111's new timelines: in the hires prompt an integer counts on from the first pass's
    steps, so `[cat:dog:6]` after 4 first-pass steps switches after hires step 2."""
    from webui_api.jobs import HiresParams

    engine, model, module, _ = family
    job = _job(family, "a cow")
    hr_sampling = replace(job.sampling, steps=STEPS)
    hires = HiresParams(upscale_width=48, upscale_height=48, upscaler="Latent", latent_mode="bilinear",
                        latent_antialias=False, steps=STEPS, denoising_strength=1.0, sampling=hr_sampling,
                        prompts=("[cat:dog:6]",), negative_prompts=job.negative_prompts)
    seen = _recorded_states(family, replace(job, hires=hires))
    second = seen[STEPS:]
    assert len(second) == STEPS
    with torch.inference_mode():
        encoded = {text: module.encode_texts(model, [text], job) for text in ("cat", "dog")}
    expected = ["cat", "cat", "cat", "dog"]  # end_at_step 2 of 4: calls 0..2, then "dog"
    for states, text in zip(second, expected, strict=True):
        reference = encoded[text].t5 if module is flux_family else encoded[text].context
        assert torch.equal(states, reference), text
