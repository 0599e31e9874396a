"""The seam between diffusers' UNet and the k-diffusion-style samplers.

Samplers call `model(x, sigma, **extra_args) -> denoised`. `CompVisDenoiser` turns an
eps-predicting UNet into that (k-diffusion's CompVis wrapper: c_in scaling, fractional
timesteps from sigma), and `CFGDenoiser` adds classifier-free guidance and the per-call
cancellation check A1111 does in its CFG denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samplers.schedules import sigma_table, sigma_to_t
from webui_api.engine.models import LoadedModel
from webui_api.progress import CancelToken


class SamplingInterrupted(Exception):
    """Raised inside a sampler when the job was interrupted or skipped; the caller catches it
    and keeps the last x0 estimate, as A1111 does."""


class CompVisDenoiser:
    """D(x, sigma) for an eps-prediction UNet: x + eps(x * c_in, t(sigma)) * c_out, c_out = -sigma.

    The sigma table comes from the model's float32 alphas_cumprod; the UNet gets fractional
    timesteps (log-sigma interpolation), exactly what A1111's wrapper feeds it.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.unet = model.unet
        self.dtype = model.dtype
        self.sigmas = sigma_table(model.alphas_cumprod)  # CPU float32, ascending
        self.log_sigmas = self.sigmas.log().to(model.device)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        c_in = (1.0 / (sigma**2 + 1.0) ** 0.5).reshape(-1, 1, 1, 1)
        t = sigma_to_t(sigma, self.log_sigmas)
        eps = self.unet(
            (x * c_in).to(self.dtype), t, encoder_hidden_states=cond.to(self.dtype), return_dict=False
        )[0].to(torch.float32)
        return x + eps * (-sigma).reshape(-1, 1, 1, 1)


@dataclass
class GuidanceOutput:
    """What one CFG call produced: the combined x0 and the cond / uncond x0 (live previews).
    `uncond_denoised` is None when NGMS skipped the uncond."""

    denoised: torch.Tensor
    cond_denoised: torch.Tensor
    uncond_denoised: torch.Tensor | None


class CFGDenoiser:
    """Classifier-free guidance around a CompVisDenoiser, checking the cancel token first.

    denoised = u + (c - u) * cond_scale. Cond and uncond go through the UNet as one batch when
    their token lengths match, else in two calls (A1111's default, no padding). With NGMS
    (s_min_uncond > 0) the uncond is skipped on odd calls below that sigma and denoised = c.
    """

    def __init__(self, inner: CompVisDenoiser, cancel: CancelToken) -> None:
        self.inner = inner
        self.cancel = cancel
        self.step = 0  # denoiser calls so far (A1111's call counter)
        self.last: GuidanceOutput | None = None

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        cond_scale: float,
        s_min_uncond: float = 0.0,
    ) -> torch.Tensor:
        if self.cancel.should_stop_sampling:
            raise SamplingInterrupted("interrupted" if self.cancel.interrupted else "skipped")
        if self._skip_uncond(sigma, s_min_uncond):
            cond_out = self.inner(x, sigma, cond)
            result = GuidanceOutput(denoised=cond_out, cond_denoised=cond_out, uncond_denoised=None)
        else:
            cond_out, uncond_out = self._cond_and_uncond(x, sigma, cond, uncond)
            denoised = uncond_out + (cond_out - uncond_out) * cond_scale
            result = GuidanceOutput(denoised=denoised, cond_denoised=cond_out, uncond_denoised=uncond_out)
        self.last = result
        self.step += 1
        return result.denoised

    def _skip_uncond(self, sigma: torch.Tensor, s_min_uncond: float) -> bool:
        """NGMS: A1111 skips the uncond on odd calls once sigma drops below s_min_uncond."""
        return s_min_uncond > 0 and self.step % 2 == 1 and float(sigma[0]) < s_min_uncond

    def _cond_and_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cond.shape[1] != uncond.shape[1]:
            return self.inner(x, sigma, cond), self.inner(x, sigma, uncond)
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]))
        batch = x.shape[0]
        return out[:batch], out[batch:]
