"""A1111's per-job alpha-schedule override (`apply_alpha_schedule_override`), as a per-job view.

A1111 resets ᾱ before every batch and rescales it to zero terminal SNR when
`sd_noise_schedule` is "Zero Terminal SNR" (infotext `Noise Schedule`). (Its float16 downcast,
`use_downcasted_alpha_bar`, which comes first there, is not built here.) We never change the
shared model: the run gets a shallow copy whose `alphas_cumprod` is the job's,
so concurrent jobs with different options cannot see each other's schedule.

Beyond A1111 1.10 (which reads neither key): a checkpoint that carries a `ztsnr` marker tensor
(NoobAI-style v-prediction SDXL files) was trained with zero terminal SNR, and sampling it on
the default schedule gives washed-out images, so such a model gets the rescale by default; the
infotext then says `Noise Schedule: Zero Terminal SNR`, and pasting it back reproduces the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from webui_api.engine.models import LoadedModel
from webui_api.engine_options import EngineOptions

ZERO_TERMINAL_SNR = "Zero Terminal SNR"
DEFAULT_SCHEDULE = "Default"
NOISE_SCHEDULES = (DEFAULT_SCHEDULE, ZERO_TERMINAL_SNR)
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # A1111's last ᾱ after the rescale (not exactly 0)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ᾱ rescaled so the last step has zero SNR (Lin et al. 2023), A1111's arithmetic: with
    s = sqrt(ᾱ), s' = (s - s_T) * s_0 / (s_0 - s_T), ᾱ' = s'², then ᾱ'[-1] = 4.897e-08,
    in ᾱ's own dtype (float32)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root**2
    rescaled[-1] = TERMINAL_ALPHA_BAR
    return rescaled


def wants_zero_terminal_snr(model: LoadedModel, options: EngineOptions) -> bool:
    """The option decides; "Default" on a model marked `ztsnr` means the model's own schedule."""
    return options.sd_noise_schedule == ZERO_TERMINAL_SNR or model.zero_terminal_snr


def job_alphas(model: LoadedModel, options: EngineOptions) -> tuple[torch.Tensor, dict[str, Any]]:
    """The job's ᾱ (float32) and the infotext entries A1111 writes for it."""
    alphas = model.alphas_cumprod
    extras: dict[str, Any] = {}
    if wants_zero_terminal_snr(model, options):
        extras["Noise Schedule"] = ZERO_TERMINAL_SNR
        alphas = rescale_zero_terminal_snr(alphas)
    return alphas, extras


def with_job_schedule(model: LoadedModel, options: EngineOptions) -> tuple[LoadedModel, dict[str, Any]]:
    """The model itself when the job keeps the stored ᾱ, else a shallow copy with the job's."""
    if model.alphas_cumprod.numel() == 0:  # flow models have no ᾱ
        return model, {}
    alphas, extras = job_alphas(model, options)
    if not extras:
        return model, {}
    return replace(model, alphas_cumprod=alphas.to(model.alphas_cumprod.device)), extras
