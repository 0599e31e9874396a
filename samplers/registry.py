"""A1111's sampler and scheduler tables, name resolution, and the glue that turns them into calls.

The tables mirror A1111 v1.10.1 (``sd_samplers_kdiffusion``, ``sd_samplers_timesteps``,
``sd_samplers_lcm``, ``sd_schedulers``) entry for entry and in the same order, because
GET /sdapi/v1/samplers and /schedulers return them verbatim and clients match on the names.
Every A1111 sampler is implemented. They come in three kinds (``SamplerInfo.kind``), which
tell the caller which model wrapper and which schedule to hand the function:

- ``"sigmas"``: k-diffusion samplers. ``model(x, sigma, **extra) -> denoised x0``; the schedule
  is ``compute_sigmas``.
- ``"timesteps"``: DDIM, DDIM CFG++, PLMS, UniPC. ``model(x, t, **extra) -> guided eps`` on the
  unscaled (variance-preserving) latent; the schedule is ``compute_timesteps``, the start is unit
  noise, and the function also takes the model's ``alphas_cumprod``.
- ``"lcm"``: like ``"sigmas"`` but with A1111's LCM wrapper and its 50-entry sigma table.

Sampler functions follow the k-diffusion signature
``fn(model, x, schedule, extra_args=None, callback=None, disable=None, noise_sampler=None, **options)``;
call them as ``fn(model, x, schedule, extra_args=..., callback=..., **sampler_call_kwargs(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from samplers import (
    ancestral,
    dpm_solver,
    dpmpp,
    flow,
    flow_ddim,
    kdiffusion,
    lcm,
    restart,
    schedules,
    timesteps,
    unipc,
)
from samplers._common import NoiseSampler

CHURN_PARAMS = ("s_churn", "s_tmin", "s_tmax", "s_noise")
KIND_SIGMAS, KIND_TIMESTEPS, KIND_LCM = "sigmas", "timesteps", "lcm"
LCM_SKIP_STEPS = timesteps.TRAINING_TIMESTEPS // lcm.ORIGINAL_STEPS
NOISE_PARAM = ("s_noise",)

SamplerFunction = Callable[..., torch.Tensor]  # fn(model, x, schedule, extra_args=..., callback=..., **kwargs)
ScheduleFunction = Callable[..., torch.Tensor]  # fn(n, sigma_min=..., sigma_max=..., ...) -> n + 1 sigmas


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler: its API listing plus what A1111 passes to its function."""

    name: str
    aliases: tuple[str, ...]
    options: Mapping[str, Any] = field(hash=False, repr=False)
    function: SamplerFunction | None = field(hash=False, repr=False)
    extra_params: tuple[str, ...]
    takes_eta: bool
    default_eta: float | None
    kind: str = KIND_SIGMAS
    takes_unipc_options: bool = False  # UniPC: the uni_pc_* options, at least `order` steps
    batch_coupled: bool = False  # step control reads the whole batch (DPM adaptive's error norm)

    def __reduce__(self) -> tuple[Callable[[str], SamplerInfo], tuple[str]]:
        """Pickled as its name (jobs travel to worker processes): the table entry comes back."""
        return _sampler_entry, (self.name,)

    @property
    def second_order(self) -> bool:
        """Two model calls per step: A1111 doubles total_steps (prompt schedules, skip-early
        CFG, the refiner switch, the "Steps" of prompt-editing infotext) for these."""
        return bool(self.options.get("second_order", False))

    def total_steps(self, steps: int) -> int:
        """A1111's SamplerData total_steps: the denoiser-call count prompt schedules and
        step-based switches are laid out on (twice `steps` for second-order samplers)."""
        return steps * 2 if self.second_order else steps

    @property
    def brownian_noise(self) -> bool:
        """Step noise from a Brownian tree (the SDE samplers), not the per-image RNG."""
        return bool(self.options.get("brownian_noise", False))

    @property
    def uses_ensd(self) -> bool:
        """Its noise draws honour eta_noise_seed_delta (A1111 then writes "ENSD" in the infotext)."""
        return bool(self.options.get("uses_ensd", False))

    @property
    def default_scheduler(self) -> str | None:
        """The scheduler name Automatic stands for (None: the model's own, Uniform)."""
        value = self.options.get("scheduler")
        return None if value is None else str(value)

    @property
    def discards_next_to_last_sigma(self) -> bool:
        """A1111 drops the second-to-last sigma for these (DPM2, DPM2 a, DPM++ 3M SDE)."""
        return bool(self.options.get("discard_next_to_last_sigma", False))

    @property
    def eta_option(self) -> str | None:
        """The A1111 option that supplies eta when a request sends none: eta_ddim for the
        timestep samplers, eta_ancestral for k-diffusion ones; None when eta does not apply."""
        if not self.takes_eta:
            return None
        return "eta_ddim" if self.kind == KIND_TIMESTEPS else "eta_ancestral"


@dataclass(frozen=True)
class SchedulerInfo:
    """One A1111 scheduler as listed by /sdapi/v1/schedulers, plus our schedule function."""

    name: str
    label: str
    aliases: tuple[str, ...] | None
    default_rho: float
    need_inner_model: bool
    function: ScheduleFunction | None = field(hash=False, repr=False)

    def __reduce__(self) -> tuple[Callable[[str], SchedulerInfo], tuple[str]]:
        """Pickled as its name, as SamplerInfo."""
        return _scheduler_entry, (self.name,)


class UnknownSamplerError(ValueError):
    """The sampler name matches no A1111 sampler name or alias."""


class UnknownSchedulerError(ValueError):
    """The scheduler matches no A1111 scheduler name, label or alias."""


def _sampler(
    name: str,
    aliases: tuple[str, ...],
    options: dict[str, Any],
    function: SamplerFunction | None,
    extra_params: tuple[str, ...] = (),
    default_eta: float | None = None,
    kind: str = KIND_SIGMAS,
    *,
    takes_unipc_options: bool = False,
    batch_coupled: bool = False,
) -> SamplerInfo:
    """Build a table row; a sampler takes eta exactly when it has an eta default."""
    return SamplerInfo(
        name=name,
        aliases=aliases,
        options=MappingProxyType(dict(options)),
        function=function,
        extra_params=extra_params,
        takes_eta=default_eta is not None,
        default_eta=default_eta,
        kind=kind,
        takes_unipc_options=takes_unipc_options,
        batch_coupled=batch_coupled,
    )


# eta defaults: opts.eta_ancestral (1.0) for k-diffusion samplers, opts.eta_ddim (0.0) for DDIM.
SAMPLERS: tuple[SamplerInfo, ...] = (
    _sampler("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}, dpmpp.sample_dpmpp_2m),
    _sampler(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        {"scheduler": "karras", "second_order": True, "brownian_noise": True},
        dpmpp.sample_dpmpp_sde,
        NOISE_PARAM,
        1.0,
    ),
    _sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        {"scheduler": "exponential", "brownian_noise": True},
        dpmpp.sample_dpmpp_2m_sde,
        NOISE_PARAM,
        1.0,
    ),
    _sampler(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
        dpmpp.sample_dpmpp_2m_sde,
        NOISE_PARAM,
        1.0,
    ),
    _sampler(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        {"scheduler": "karras", "uses_ensd": True, "second_order": True},
        ancestral.sample_dpmpp_2s_ancestral,
        NOISE_PARAM,
        1.0,
    ),
    _sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
        dpmpp.sample_dpmpp_3m_sde,
        NOISE_PARAM,
        1.0,
    ),
    _sampler(
        "Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}, ancestral.sample_euler_ancestral, (), 1.0
    ),
    _sampler("Euler", ("k_euler",), {}, kdiffusion.sample_euler, CHURN_PARAMS),
    _sampler("LMS", ("k_lms",), {}, kdiffusion.sample_lms),
    _sampler("Heun", ("k_heun",), {"second_order": True}, kdiffusion.sample_heun, CHURN_PARAMS),
    _sampler(
        "DPM2",
        ("k_dpm_2",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True},
        kdiffusion.sample_dpm_2,
        CHURN_PARAMS,
    ),
    _sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
        ancestral.sample_dpm_2_ancestral,
        NOISE_PARAM,
        1.0,
    ),
    _sampler("DPM fast", ("k_dpm_fast",), {"uses_ensd": True}, dpm_solver.sample_dpm_fast, NOISE_PARAM, 1.0),
    _sampler(
        "DPM adaptive", ("k_dpm_ad",), {"uses_ensd": True}, dpm_solver.sample_dpm_adaptive, (), 1.0, batch_coupled=True
    ),
    _sampler("Restart", ("restart",), {"scheduler": "karras", "second_order": True}, restart.sample_restart),
    _sampler("DDIM", ("ddim",), {}, timesteps.sample_ddim, (), 0.0, KIND_TIMESTEPS),
    _sampler("DDIM CFG++", ("ddim_cfgpp",), {}, timesteps.sample_ddim_cfgpp, (), 0.0, KIND_TIMESTEPS),
    _sampler("PLMS", ("plms",), {}, timesteps.sample_plms, (), None, KIND_TIMESTEPS),
    _sampler("UniPC", ("unipc",), {}, unipc.sample_unipc, (), None, KIND_TIMESTEPS, takes_unipc_options=True),
    _sampler("LCM", ("k_lcm",), {}, lcm.sample_lcm, (), None, KIND_LCM),
)

@dataclass(frozen=True)
class FlowForm:
    """How a sampler runs on a rectified-flow model (Flux, SD3)."""

    function: SamplerFunction
    # works in the half log-SNR, infinite at sigma = 1: walk flow.first_sigma_below_one(schedule)
    needs_sigma_below_one: bool = False
    # the model's CFG scale is multiplied by this for the run (DDIM CFG++: A1111's 1 / 12.5)
    guidance_factor: float = 1.0


# The samplers that run correctly on flow models. The deterministic ones only see the x0 estimate
# and run unchanged; the ancestral and SDE ones in their flow forms (samplers.flow, as ComfyUI's
# k-diffusion switches to them); DDIM, PLMS and LCM walk the flow schedule with the flow
# interpolation (samplers.flow_ddim), UniPC and DPM fast / adaptive with alpha = 1 - s, sigma = s
# (samplers.unipc, samplers.dpm_solver), Restart with the flow renoise (samplers.restart),
# DDIM CFG++ with the unconditional x0 the flow denoiser keeps (samplers.flow_ddim).
FLOW_FORMS: Mapping[str, FlowForm] = MappingProxyType({
    "DPM++ 2M": FlowForm(dpmpp.sample_dpmpp_2m),
    "DPM++ SDE": FlowForm(flow.sample_dpmpp_sde_rf, needs_sigma_below_one=True),
    "DPM++ 2M SDE": FlowForm(flow.sample_dpmpp_2m_sde_rf, needs_sigma_below_one=True),
    "DPM++ 2M SDE Heun": FlowForm(flow.sample_dpmpp_2m_sde_rf, needs_sigma_below_one=True),
    "DPM++ 2S a": FlowForm(flow.sample_dpmpp_2s_ancestral_rf),
    "DPM++ 3M SDE": FlowForm(flow.sample_dpmpp_3m_sde_rf, needs_sigma_below_one=True),
    "Euler a": FlowForm(flow.sample_euler_ancestral_rf),
    "Euler": FlowForm(kdiffusion.sample_euler),
    "LMS": FlowForm(kdiffusion.sample_lms),
    "Heun": FlowForm(kdiffusion.sample_heun),
    "DPM2": FlowForm(kdiffusion.sample_dpm_2),
    "DPM2 a": FlowForm(flow.sample_dpm_2_ancestral_rf),
    "DPM fast": FlowForm(dpm_solver.sample_dpm_fast_rf, needs_sigma_below_one=True),
    "DPM adaptive": FlowForm(dpm_solver.sample_dpm_adaptive_rf, needs_sigma_below_one=True),
    "Restart": FlowForm(restart.sample_restart_rf),
    "DDIM": FlowForm(flow_ddim.sample_ddim_rf),
    "DDIM CFG++": FlowForm(flow_ddim.sample_ddim_cfgpp_rf, guidance_factor=timesteps.CFGPP_SCALE),
    "PLMS": FlowForm(flow_ddim.sample_plms_rf),
    "UniPC": FlowForm(unipc.sample_unipc_rf, needs_sigma_below_one=True),
    "LCM": FlowForm(flow_ddim.sample_lcm_rf),
})


def flow_form(sampler: SamplerInfo) -> FlowForm | None:
    """How `sampler` runs on a rectified-flow model; None where it cannot."""
    return FLOW_FORMS.get(sampler.name)


def flow_sampler_names() -> tuple[str, ...]:
    """The samplers that run on flow models, in A1111's order."""
    return tuple(s.name for s in SAMPLERS if s.name in FLOW_FORMS)


# Samplers whose function wants the DPM-Solver interval (sigma_min, sigma_max) rather than just
# the schedule, and those also taking n. A1111 inspects the k-diffusion signatures for these names.
_INTERVAL_SAMPLERS = frozenset({"DPM fast", "DPM adaptive"})
_COUNTED_SAMPLERS = frozenset({"DPM fast"})

SCHEDULERS: tuple[SchedulerInfo, ...] = (
    SchedulerInfo("automatic", "Automatic", None, -1.0, False, None),
    SchedulerInfo("uniform", "Uniform", None, -1.0, True, schedules.uniform),
    SchedulerInfo("karras", "Karras", None, 7.0, False, schedules.karras),
    SchedulerInfo("exponential", "Exponential", None, -1.0, False, schedules.exponential),
    SchedulerInfo("polyexponential", "Polyexponential", None, 1.0, False, schedules.polyexponential),
    SchedulerInfo("sgm_uniform", "SGM Uniform", ("SGMUniform",), -1.0, True, schedules.sgm_uniform),
    SchedulerInfo("kl_optimal", "KL Optimal", None, -1.0, False, schedules.kl_optimal),
    SchedulerInfo("align_your_steps", "Align Your Steps", None, -1.0, False, schedules.align_your_steps),
    SchedulerInfo("simple", "Simple", None, -1.0, True, schedules.simple),
    SchedulerInfo("normal", "Normal", None, -1.0, True, schedules.normal),
    SchedulerInfo("ddim", "DDIM", None, -1.0, True, schedules.ddim),
    SchedulerInfo("beta", "Beta", None, -1.0, True, schedules.beta),
)

AUTOMATIC = SCHEDULERS[0]


# ---------------------------------------------------------------------------
# Lookup and name resolution
# ---------------------------------------------------------------------------


def implemented_samplers() -> tuple[SamplerInfo, ...]:
    """The samplers we can actually run, in A1111 order."""
    return tuple(s for s in SAMPLERS if s.function is not None)


def samplers_map() -> dict[str, str]:
    """A1111's ``samplers_map``: lower-cased names and aliases -> the sampler's name (exact
    lookups; PNG metadata from other tools names samplers by their k-diffusion aliases)."""
    mapping: dict[str, str] = {}
    for sampler in SAMPLERS:
        for alias in sampler.aliases:
            mapping[alias.lower()] = sampler.name
        mapping[sampler.name.lower()] = sampler.name
    return mapping


def find_sampler(name: str) -> SamplerInfo | None:
    """Exact canonical name first, then a case-insensitive match on names and aliases.

    (A1111's request path only accepts the exact name; we are deliberately more forgiving.)
    """
    for sampler in SAMPLERS:
        if sampler.name == name:
            return sampler
    folded = name.casefold()
    for sampler in SAMPLERS:
        if folded in (n.casefold() for n in (sampler.name, *sampler.aliases)):
            return sampler
    return None


def _sampler_entry(name: str) -> SamplerInfo:
    """The table entry of a canonical sampler name (unpickling)."""
    return next(sampler for sampler in SAMPLERS if sampler.name == name)


def _scheduler_entry(name: str) -> SchedulerInfo:
    """The table entry of a canonical scheduler name (unpickling)."""
    return next(scheduler for scheduler in SCHEDULERS if scheduler.name == name)


def _scheduler_names(scheduler: SchedulerInfo) -> tuple[str, ...]:
    """Every spelling A1111 accepts for a scheduler, in its matching order."""
    return (scheduler.label, scheduler.name, *(scheduler.aliases or ()))


def find_scheduler(name: str) -> SchedulerInfo | None:
    """Match a scheduler's name, label or alias, ignoring case."""
    folded = name.casefold()
    for scheduler in SCHEDULERS:
        if folded in (n.casefold() for n in _scheduler_names(scheduler)):
            return scheduler
    return None


def scheduler_of(name: str) -> SchedulerInfo:
    """find_scheduler for a name already resolved (a built job's): unknown is a programming error."""
    scheduler = find_scheduler(name)
    if scheduler is None:
        raise UnknownSchedulerError(f"scheduler not found: {name!r}; {_valid_schedulers()}")
    return scheduler


def split_scheduler_suffix(sampler_name: str) -> tuple[SamplerInfo, SchedulerInfo] | None:
    """Split legacy names such as "DPM++ 2M Karras" into a known sampler and a trailing scheduler.

    Like A1111 this accepts any scheduler label, name or alias after a space. Unlike A1111 (which
    strips suffixes in scheduler order, so "Euler SGM Uniform" loses to "Uniform"), the longest
    suffix that leaves a known sampler wins, and case is ignored.
    """
    folded = sampler_name.casefold()
    spellings = [(option, scheduler) for scheduler in SCHEDULERS for option in _scheduler_names(scheduler)]
    for option, scheduler in sorted(spellings, key=lambda pair: -len(pair[0])):
        if folded.endswith(" " + option.casefold()):
            sampler = find_sampler(sampler_name[: -(len(option) + 1)].rstrip())
            if sampler is not None:
                return sampler, scheduler
    return None


def resolve_sampler_and_scheduler(
    sampler_name: str, scheduler_name: str | None
) -> tuple[SamplerInfo, SchedulerInfo]:
    """Resolve request fields to (sampler, scheduler) with A1111's semantics, but strict on unknowns.

    A scheduler suffix in the sampler name overrides ``scheduler_name``. A scheduler equal to the
    sampler's own default is reported as Automatic (same sigmas, and A1111 reports it that way).
    """
    if not isinstance(sampler_name, str) or not sampler_name.strip():
        raise UnknownSamplerError(f"sampler name must be a non-empty string, got {sampler_name!r}; {_valid_samplers()}")
    scheduler = _lookup_scheduler(scheduler_name)
    sampler = find_sampler(sampler_name.strip())
    if sampler is None:
        split = split_scheduler_suffix(sampler_name.strip())
        if split is None:
            raise UnknownSamplerError(f"sampler not found: {sampler_name!r}; {_valid_samplers()}")
        sampler, scheduler = split
    if sampler.default_scheduler == scheduler.name:
        scheduler = AUTOMATIC
    return sampler, scheduler


def _lookup_scheduler(scheduler_name: str | None) -> SchedulerInfo:
    """Empty or None means Automatic; anything else must be a known scheduler."""
    if scheduler_name is None:
        return AUTOMATIC
    if not isinstance(scheduler_name, str):
        raise UnknownSchedulerError(
            f"scheduler must be a string or None, got {scheduler_name!r}; {_valid_schedulers()}"
        )
    if not scheduler_name.strip():
        return AUTOMATIC
    scheduler = find_scheduler(scheduler_name.strip())
    if scheduler is None:
        raise UnknownSchedulerError(f"scheduler not found: {scheduler_name!r}; {_valid_schedulers()}")
    return scheduler


def _valid_samplers() -> str:
    return "expected one of: " + ", ".join(repr(s.name) for s in SAMPLERS)


def _valid_schedulers() -> str:
    names = ", ".join(f"{s.name!r} ({s.label!r})" for s in SCHEDULERS)
    return f"expected one of: {names}"


# ---------------------------------------------------------------------------
# Sigmas and call arguments
# ---------------------------------------------------------------------------


def effective_scheduler(sampler: SamplerInfo, scheduler: SchedulerInfo) -> SchedulerInfo | None:
    """What Automatic stands for: the sampler's ``scheduler`` option, or None (= Uniform, the model's own)."""
    if scheduler.function is not None:
        return scheduler
    default_name = sampler.default_scheduler
    return None if default_name is None else find_scheduler(default_name)


def discards_penultimate_sigma(sampler: SamplerInfo, always_discard_next_to_last_sigma: bool = False) -> bool:
    """A1111 drops the second-to-last sigma for DPM2/DPM2 a/3M SDE (or everywhere, by option)."""
    return sampler.discards_next_to_last_sigma or always_discard_next_to_last_sigma


def compute_sigmas(
    sampler: SamplerInfo,
    scheduler: SchedulerInfo,
    steps: int,
    model_sigmas: torch.Tensor,
    *,
    sigma_min: float = 0.0,
    sigma_max: float = 0.0,
    rho: float = 0.0,
    always_discard_next_to_last_sigma: bool = False,
    is_sdxl: bool = False,
    beta_alpha: float = schedules.BETA_DEFAULT_ALPHA,
    beta_beta: float = schedules.BETA_DEFAULT_BETA,
) -> torch.Tensor:
    """The sampler's sigma schedule for ``steps`` steps, as A1111's ``KDiffusionSampler.get_sigmas``.

    sigma_min/sigma_max/rho of 0 mean "the model's / scheduler's default" (A1111's options).
    is_sdxl picks the Align-Your-Steps table; beta_alpha/beta_beta are A1111's beta_dist_* options.
    Returns CPU float32, normally steps+1 values ending in 0 (see schedules for the exceptions).
    For LCM, ``model_sigmas`` is the LCM wrapper's 50-entry table; its Automatic and Uniform
    schedules are the wrapper's own (timesteps 999 -> 19), as in A1111.
    """
    if sampler.kind == KIND_TIMESTEPS:
        raise ValueError(f"{sampler.name} walks timesteps, not sigmas: use compute_timesteps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    table = schedules.check_sigma_table(model_sigmas)
    discard = discards_penultimate_sigma(sampler, always_discard_next_to_last_sigma)
    n = steps + 1 if discard else steps
    chosen = effective_scheduler(sampler, scheduler)
    if sampler.kind == KIND_LCM and (chosen is None or chosen.name == "uniform"):
        sigmas = lcm.lcm_sigmas(n, table, LCM_SKIP_STEPS)
    elif chosen is None:
        sigmas = schedules.uniform(n, float(table[0]), float(table[-1]), table)
    elif chosen.function is None:
        raise ValueError(f"scheduler {chosen.name!r} has no schedule function")
    else:
        kwargs = _schedule_kwargs(chosen, table, sigma_min, sigma_max, rho, is_sdxl, beta_alpha, beta_beta)
        sigmas = chosen.function(n, **kwargs)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to(device="cpu", dtype=torch.float32)


def compute_timesteps(
    sampler: SamplerInfo, steps: int, always_discard_next_to_last_sigma: bool = False
) -> torch.Tensor:
    """The timestep schedule of a timestep sampler (A1111's ``CompVisSampler.get_timesteps``).

    The scheduler choice does not apply to these samplers (A1111 ignores it too)."""
    if sampler.kind != KIND_TIMESTEPS:
        raise ValueError(f"{sampler.name} walks sigmas, not timesteps: use compute_sigmas")
    return timesteps.ddim_timesteps(steps, discards_penultimate_sigma(sampler, always_discard_next_to_last_sigma))


def _schedule_kwargs(
    scheduler: SchedulerInfo,
    table: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    is_sdxl: bool,
    beta_alpha: float,
    beta_beta: float,
) -> dict[str, Any]:
    """Keyword arguments for one schedule function, with A1111's option-override rules."""
    kwargs: dict[str, Any] = {
        "sigma_min": sigma_min if sigma_min != 0 else float(table[0]),
        "sigma_max": sigma_max if sigma_max != 0 else float(table[-1]),
    }
    if scheduler.default_rho != -1:
        kwargs["rho"] = rho if rho != 0 else scheduler.default_rho
    if scheduler.need_inner_model:
        kwargs["model_sigmas"] = table
    if scheduler.name == "align_your_steps":
        kwargs["is_sdxl"] = is_sdxl
    if scheduler.name == "beta":
        kwargs["alpha"], kwargs["beta_param"] = beta_alpha, beta_beta
    return kwargs


def sampler_call_kwargs(
    sampler: SamplerInfo,
    sigmas: torch.Tensor,
    *,
    eta: float | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
    model_sigma_min: float | None = None,
    model_sigma_max: float | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    unipc_options: unipc.UniPCOptions | None = None,
) -> dict[str, Any]:
    """The keyword arguments A1111 passes to this sampler's function (besides model, x, schedule).

    eta only for samplers that take it (None -> the sampler's default); only the s_* in
    ``extra_params``; n/sigma_min/sigma_max for DPM fast/adaptive; solver_type for 2M SDE Heun;
    noise_sampler always (our functions take all randomness from it). Timestep samplers also
    get the model's ``alphas_cumprod`` (required) and UniPC its options.
    For DPM fast/adaptive, txt2img passes the model table's sigma_min/max (``model_sigma_*``);
    when those are None the schedule's own range is used, which is A1111's img2img behaviour.
    """
    if sampler.function is None:
        raise NotImplementedError(f"sampler {sampler.name!r} is listed but not implemented")
    churn = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise}
    kwargs: dict[str, Any] = {key: churn[key] for key in sampler.extra_params}
    if sampler.takes_eta:
        kwargs["eta"] = sampler.default_eta if eta is None else eta
    if sampler.name in _COUNTED_SAMPLERS:
        kwargs["n"] = int(sigmas.numel()) - 1
    if sampler.name in _INTERVAL_SAMPLERS:
        kwargs.update(_interval_kwargs(sigmas, model_sigma_min, model_sigma_max))
    if sampler.options.get("solver_type") == "heun":
        kwargs["solver_type"] = "heun"
    if sampler.kind == KIND_TIMESTEPS:
        if alphas_cumprod is None:
            raise ValueError(f"{sampler.name} needs the model's alphas_cumprod, got None")
        kwargs["alphas_cumprod"] = alphas_cumprod
    if sampler.takes_unipc_options:
        kwargs["options"] = unipc_options or unipc.UniPCOptions()
    kwargs["noise_sampler"] = noise_sampler
    return kwargs


def flow_call_kwargs(
    sampler: SamplerInfo,
    sigmas: torch.Tensor,
    *,
    eta: float | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
    unipc_options: unipc.UniPCOptions | None = None,
    end_sigma: float | None = None,
) -> dict[str, Any]:
    """The keyword arguments of a sampler's flow form (besides model, x, sigmas).

    The k-diffusion samplers get what ``sampler_call_kwargs`` gives them; DPM fast / adaptive
    integrate from the schedule's first sigma down to `end_sigma` (the model's smallest; None:
    the schedule's last positive sigma). The timestep samplers and LCM walk the flow schedule,
    so they get no ᾱ table: eta where they take it, UniPC its options, and the noise.
    """
    if sampler.kind == KIND_SIGMAS:
        return sampler_call_kwargs(sampler, sigmas, eta=eta, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                   s_noise=s_noise, noise_sampler=noise_sampler, model_sigma_min=end_sigma)
    kwargs: dict[str, Any] = {}
    if sampler.takes_eta:
        kwargs["eta"] = sampler.default_eta if eta is None else eta
    if sampler.takes_unipc_options:
        kwargs["options"] = unipc_options or unipc.UniPCOptions()
    kwargs["noise_sampler"] = noise_sampler
    return kwargs


def _interval_kwargs(sigmas: torch.Tensor, sigma_min: float | None, sigma_max: float | None) -> dict[str, Any]:
    """sigma_min, sigma_max for DPM-Solver fast/adaptive (which cannot start or stop at 0)."""
    return {
        "sigma_min": float(sigmas[-2]) if sigma_min is None else sigma_min,
        "sigma_max": float(sigmas[0]) if sigma_max is None else sigma_max,
    }
