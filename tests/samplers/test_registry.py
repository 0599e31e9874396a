"""Registry listing shape (A1111 /sdapi/v1/samplers and /schedulers), name resolution, sigmas, kwargs."""

from __future__ import annotations

import pytest
import torch

from samplers import registry
from samplers.registry import (
    SAMPLERS,
    SCHEDULERS,
    UnknownSamplerError,
    UnknownSchedulerError,
    compute_sigmas,
    find_sampler,
    find_scheduler,
    resolve_sampler_and_scheduler,
    sampler_call_kwargs,
)

# GET /sdapi/v1/samplers in A1111 v1.10.1 (option values shown as A1111's Python values).
EXPECTED_SAMPLERS = [
    ("DPM++ 2M", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("DPM++ SDE", ["k_dpmpp_sde"], {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], {"scheduler": "exponential", "brownian_noise": True}),
    ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"],
     {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}),
    ("DPM++ 2S a", ["k_dpmpp_2s_a"], {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"],
     {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}),
    ("Euler a", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", ["k_euler"], {}),
    ("LMS", ["k_lms"], {}),
    ("Heun", ["k_heun"], {"second_order": True}),
    ("DPM2", ["k_dpm_2"], {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    ("DPM2 a", ["k_dpm_2_a"],
     {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}),
    ("DPM fast", ["k_dpm_fast"], {"uses_ensd": True}),
    ("DPM adaptive", ["k_dpm_ad"], {"uses_ensd": True}),
    ("Restart", ["restart"], {"scheduler": "karras", "second_order": True}),
    ("DDIM", ["ddim"], {}),
    ("DDIM CFG++", ["ddim_cfgpp"], {}),
    ("PLMS", ["plms"], {}),
    ("UniPC", ["unipc"], {}),
    ("LCM", ["k_lcm"], {}),
]

EXPECTED_SCHEDULERS = [
    ("automatic", "Automatic", None, -1.0, False),
    ("uniform", "Uniform", None, -1.0, True),
    ("karras", "Karras", None, 7.0, False),
    ("exponential", "Exponential", None, -1.0, False),
    ("polyexponential", "Polyexponential", None, 1.0, False),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1.0, True),
    ("kl_optimal", "KL Optimal", None, -1.0, False),
    ("align_your_steps", "Align Your Steps", None, -1.0, False),
    ("simple", "Simple", None, -1.0, True),
    ("normal", "Normal", None, -1.0, True),
    ("ddim", "DDIM", None, -1.0, True),
    ("beta", "Beta", None, -1.0, True),
]


def test_sampler_listing_matches_a1111():
    listed = [(s.name, list(s.aliases), dict(s.options)) for s in SAMPLERS]
    assert listed == EXPECTED_SAMPLERS
    # key order matters for the JSON the API returns
    assert [list(s.options) for s in SAMPLERS] == [list(o) for _, _, o in EXPECTED_SAMPLERS]


def test_scheduler_listing_matches_a1111():
    listed = [(s.name, s.label, None if s.aliases is None else list(s.aliases), s.default_rho, s.need_inner_model)
              for s in SCHEDULERS]
    assert listed == EXPECTED_SCHEDULERS
    assert SCHEDULERS[0].function is None
    assert all(s.function is not None for s in SCHEDULERS[1:])


def test_listing_is_immutable():
    with pytest.raises(TypeError):
        SAMPLERS[0].options["scheduler"] = "uniform"  # type: ignore[index]


@pytest.mark.parametrize(("name", "extra", "eta"), [
    ("Euler", ("s_churn", "s_tmin", "s_tmax", "s_noise"), None),
    ("Heun", ("s_churn", "s_tmin", "s_tmax", "s_noise"), None),
    ("DPM2", ("s_churn", "s_tmin", "s_tmax", "s_noise"), None),
    ("Euler a", (), 1.0),
    ("DPM2 a", ("s_noise",), 1.0),
    ("DPM++ 2S a", ("s_noise",), 1.0),
    ("DPM++ SDE", ("s_noise",), 1.0),
    ("DPM++ 2M SDE", ("s_noise",), 1.0),
    ("DPM++ 3M SDE", ("s_noise",), 1.0),
    ("DPM fast", ("s_noise",), 1.0),
    ("DPM adaptive", (), 1.0),
    ("DPM++ 2M", (), None),
    ("LMS", (), None),
    ("Restart", (), None),
    ("DDIM", (), 0.0),
    ("DDIM CFG++", (), 0.0),
    ("PLMS", (), None),
])
def test_extra_params_and_eta(name, extra, eta):
    sampler = find_sampler(name)
    assert sampler.extra_params == extra
    assert sampler.default_eta == eta and sampler.takes_eta == (eta is not None)


def test_implemented_samplers_in_a1111_order():
    names = [s.name for s in registry.implemented_samplers()]
    assert names[:12] == [s.name for s in SAMPLERS[:12]]  # the whole k-diffusion core
    assert {"Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "LMS", "DPM++ 2M", "DPM++ 2S a",
            "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM++ SDE"} <= set(names)


# --- name resolution ---------------------------------------------------------------------


def _resolved(sampler_name, scheduler_name):
    sampler, scheduler = resolve_sampler_and_scheduler(sampler_name, scheduler_name)
    return sampler.name, scheduler.name


@pytest.mark.parametrize(("sampler_name", "scheduler_name", "expected"), [
    ("Euler a", None, ("Euler a", "automatic")),
    ("Euler a", "", ("Euler a", "automatic")),
    ("Euler", "Karras", ("Euler", "karras")),
    ("Euler", "karras", ("Euler", "karras")),
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "automatic")),       # karras is its default
    ("DPM++ 2M Karras", "exponential", ("DPM++ 2M", "automatic")),  # the suffix wins
    ("DPM++ 2M", "Karras", ("DPM++ 2M", "automatic")),
    ("DPM++ 2M", "Exponential", ("DPM++ 2M", "exponential")),
    ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun", "karras")),
    ("DPM++ 2M SDE Heun", None, ("DPM++ 2M SDE Heun", "automatic")),
    ("DPM++ SDE Karras", None, ("DPM++ SDE", "automatic")),
    ("Euler a Automatic", "karras", ("Euler a", "automatic")),
    ("Euler a Exponential", None, ("Euler a", "exponential")),
    ("Euler SGMUniform", None, ("Euler", "sgm_uniform")),
    ("Euler SGM Uniform", None, ("Euler", "sgm_uniform")),
    ("Euler align_your_steps", None, ("Euler", "align_your_steps")),
    ("DDIM", None, ("DDIM", "automatic")),
    ("DDIM CFG++", None, ("DDIM CFG++", "automatic")),
    ("UniPC", "DDIM", ("UniPC", "ddim")),
])
def test_resolution_a1111_semantics(sampler_name, scheduler_name, expected):
    assert _resolved(sampler_name, scheduler_name) == expected


@pytest.mark.parametrize(("sampler_name", "scheduler_name", "expected"), [
    ("euler a", None, ("Euler a", "automatic")),
    ("k_euler_a", None, ("Euler a", "automatic")),
    ("K_EULER_ANCESTRAL", "KARRAS", ("Euler a", "karras")),
    ("k_dpmpp_2m", "karras", ("DPM++ 2M", "automatic")),
    ("dpm++ 2m karras", None, ("DPM++ 2M", "automatic")),
    ("k_dpmpp_2m_sde_heun", "sgmuniform", ("DPM++ 2M SDE Heun", "sgm_uniform")),
    ("Euler", " kl optimal ", ("Euler", "kl_optimal")),
])
def test_resolution_is_forgiving_about_case_and_aliases(sampler_name, scheduler_name, expected):
    assert _resolved(sampler_name, scheduler_name) == expected


@pytest.mark.parametrize("bad", ["Eulr", "DPM++ 9M", "", "   ", "Karras"])
def test_unknown_sampler_raises_with_valid_names(bad):
    with pytest.raises(UnknownSamplerError) as info:
        resolve_sampler_and_scheduler(bad, None)
    assert "'Euler a'" in str(info.value) and "'DPM++ 2M'" in str(info.value)


def test_unknown_scheduler_raises_with_names_and_labels():
    with pytest.raises(UnknownSchedulerError) as info:
        resolve_sampler_and_scheduler("Euler", "cosine")
    message = str(info.value)
    assert "'cosine'" in message and "'karras'" in message and "'Align Your Steps'" in message
    assert isinstance(info.value, ValueError)


def test_find_helpers():
    assert find_sampler("Euler a").name == "Euler a"
    assert find_sampler("k_lcm").name == "LCM"
    assert find_sampler("nope") is None
    assert find_scheduler("SGM Uniform").name == "sgm_uniform"
    assert find_scheduler("sgmuniform").name == "sgm_uniform"
    assert find_scheduler("nope") is None


# --- compute_sigmas ------------------------------------------------------------------------


def test_automatic_uses_the_samplers_default_scheduler(sd15_sigmas):
    dpmpp_2m, automatic = resolve_sampler_and_scheduler("DPM++ 2M", None)
    out = compute_sigmas(dpmpp_2m, automatic, 20, sd15_sigmas)
    karras = compute_sigmas(find_sampler("Euler"), find_scheduler("karras"), 20, sd15_sigmas)
    assert torch.equal(out, karras)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and len(out) == 21


def test_automatic_without_default_is_uniform(sd15_sigmas):
    out = compute_sigmas(find_sampler("Euler a"), find_scheduler("automatic"), 20, sd15_sigmas)
    assert out.tolist()[:3] == pytest.approx([14.6146, 10.7468, 8.0815], abs=1e-4)


def test_discard_penultimate_sigma(sd15_sigmas):
    dpm2, automatic = resolve_sampler_and_scheduler("DPM2", None)
    out = compute_sigmas(dpm2, automatic, 10, sd15_sigmas)
    full = registry.schedules.karras(11, float(sd15_sigmas[0]), float(sd15_sigmas[-1]))
    assert len(out) == 11
    assert torch.equal(out, torch.cat([full[:-2], full[-1:]]))


def test_always_discard_option(sd15_sigmas):
    euler = find_sampler("Euler")
    karras = find_scheduler("karras")
    plain = compute_sigmas(euler, karras, 10, sd15_sigmas)
    discarded = compute_sigmas(euler, karras, 10, sd15_sigmas, always_discard_next_to_last_sigma=True)
    assert len(plain) == len(discarded) == 11 and not torch.equal(plain, discarded)


def test_sigma_and_rho_overrides(sd15_sigmas):
    euler, karras = find_sampler("Euler"), find_scheduler("karras")
    out = compute_sigmas(euler, karras, 5, sd15_sigmas, sigma_min=0.1, sigma_max=10.0, rho=3.0)
    assert out.tolist() == pytest.approx(registry.schedules.karras(5, 0.1, 10.0, rho=3.0).tolist())
    # rho is ignored by schedulers without a default rho, as in A1111
    exp_ = find_scheduler("exponential")
    assert torch.equal(
        compute_sigmas(euler, exp_, 5, sd15_sigmas, rho=3.0), compute_sigmas(euler, exp_, 5, sd15_sigmas)
    )


@pytest.mark.parametrize("scheduler", [s.name for s in SCHEDULERS])
def test_every_scheduler_computes(sd15_sigmas, scheduler):
    out = compute_sigmas(find_sampler("Euler"), find_scheduler(scheduler), 12, sd15_sigmas)
    assert out.dtype == torch.float32 and out.ndim == 1 and len(out) >= 13
    assert bool((out[:-1] >= out[1:]).all()), "schedules must be non-increasing"


def test_beta_options_and_sdxl_ays(sd15_sigmas):
    euler = find_sampler("Euler")
    beta = find_scheduler("beta")
    assert not torch.equal(compute_sigmas(euler, beta, 8, sd15_sigmas),
                           compute_sigmas(euler, beta, 8, sd15_sigmas, beta_alpha=0.5, beta_beta=0.7))
    ays = find_scheduler("align_your_steps")
    sdxl = compute_sigmas(euler, ays, 10, sd15_sigmas, is_sdxl=True)
    assert float(sdxl[-2]) == pytest.approx(0.029) and not torch.equal(
        sdxl, compute_sigmas(euler, ays, 10, sd15_sigmas)
    )


def test_bad_steps_rejected(sd15_sigmas):
    with pytest.raises(ValueError, match="steps"):
        compute_sigmas(find_sampler("Euler"), find_scheduler("karras"), 0, sd15_sigmas)


# --- sampler_call_kwargs ---------------------------------------------------------------------

TUNING = {"s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 9.0, "s_noise": 1.003}


def _kwargs(name, eta=None, **extra):
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.03, 0.0])
    return sampler_call_kwargs(find_sampler(name), sigmas, eta=eta, noise_sampler="NS", **TUNING, **extra)


def test_kwargs_euler_gets_churn_not_eta():
    assert _kwargs("Euler") == {**TUNING, "noise_sampler": "NS"}


def test_kwargs_euler_a_gets_eta_but_not_s_noise():
    assert _kwargs("Euler a") == {"eta": 1.0, "noise_sampler": "NS"}
    assert _kwargs("Euler a", eta=0.3)["eta"] == 0.3


def test_kwargs_dpmpp_sde_family():
    assert _kwargs("DPM++ 2M SDE Heun", eta=0.0) == {"s_noise": 1.003, "eta": 0.0, "solver_type": "heun",
                                                     "noise_sampler": "NS"}
    assert "solver_type" not in _kwargs("DPM++ 2M SDE")
    assert _kwargs("DPM++ 2M") == {"noise_sampler": "NS"}
    assert _kwargs("LMS") == {"noise_sampler": "NS"}


def test_every_sampler_is_implemented_with_its_kind():
    kinds = {s.name: s.kind for s in SAMPLERS}
    assert all(s.function is not None for s in SAMPLERS)
    assert [n for n, k in kinds.items() if k == "timesteps"] == ["DDIM", "DDIM CFG++", "PLMS", "UniPC"]
    assert [n for n, k in kinds.items() if k == "lcm"] == ["LCM"]


def test_kwargs_timestep_samplers_need_alphas_cumprod():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        _kwargs("PLMS")
    acp = torch.linspace(0.99, 0.01, 1000)
    assert _kwargs("PLMS", alphas_cumprod=acp) == {"alphas_cumprod": acp, "noise_sampler": "NS"}
    ddim = _kwargs("DDIM", alphas_cumprod=acp)
    assert ddim["eta"] == 0.0 and "s_noise" not in ddim
    from samplers.unipc import UniPCOptions

    assert _kwargs("UniPC", alphas_cumprod=acp)["options"] == UniPCOptions()
    custom = UniPCOptions(variant="bh2", order=2)
    assert _kwargs("UniPC", alphas_cumprod=acp, unipc_options=custom)["options"] is custom
    assert _kwargs("LCM") == {"noise_sampler": "NS"}


@pytest.mark.parametrize(("steps", "count", "first", "last"), [
    (7, 8, 1, 995), (20, 20, 1, 951), (25, 25, 1, 961), (30, 31, 1, 991), (50, 50, 1, 981),
])
def test_ddim_timesteps_match_a1111(steps, count, first, last):
    ts = registry.compute_timesteps(find_sampler("DDIM"), steps)
    assert ts.dtype == torch.int64 and len(ts) == count and int(ts[0]) == first and int(ts[-1]) == last
    assert torch.equal(ts, torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999))


def test_timesteps_and_sigmas_do_not_mix(sd15_sigmas):
    with pytest.raises(ValueError, match="compute_timesteps"):
        compute_sigmas(find_sampler("DDIM"), find_scheduler("karras"), 10, sd15_sigmas)
    with pytest.raises(ValueError, match="compute_sigmas"):
        registry.compute_timesteps(find_sampler("Euler"), 10)
    discarded = registry.compute_timesteps(find_sampler("PLMS"), 20, always_discard_next_to_last_sigma=True)
    assert len(discarded) == 22 and int(discarded[1]) == 48  # 21 steps: stride 47, 0..987 -> 22 values


# -- sampler facts: what callers ask the entry instead of comparing names ------------------------


@pytest.mark.parametrize("name, steps, total", [("Euler", 20, 20), ("Heun", 20, 40), ("DPM++ SDE", 7, 14),
                                                 ("DPM2 a", 3, 6), ("Restart", 5, 10), ("UniPC", 9, 9)])
def test_total_steps_doubles_for_second_order_samplers(name, steps, total):
    assert registry.find_sampler(name).total_steps(steps) == total


def test_eta_option_names_a1111s_option_for_samplers_that_take_eta():
    options = {s.name: s.eta_option for s in registry.SAMPLERS}
    assert options["DDIM"] == options["DDIM CFG++"] == "eta_ddim"
    assert options["Euler a"] == options["DPM++ 2M SDE"] == "eta_ancestral"
    assert options["Euler"] is None and options["PLMS"] is None and options["UniPC"] is None


def test_only_unipc_takes_unipc_options_and_only_dpm_adaptive_couples_a_batch():
    assert [s.name for s in registry.SAMPLERS if s.takes_unipc_options] == ["UniPC"]
    assert [s.name for s in registry.SAMPLERS if s.batch_coupled] == ["DPM adaptive"]


def test_default_scheduler_is_what_automatic_stands_for():
    assert registry.find_sampler("DPM++ 2M").default_scheduler == "karras"
    assert registry.find_sampler("Euler").default_scheduler is None


def test_samplers_map_is_a1111s_lower_case_alias_table():
    mapping = registry.samplers_map()
    assert mapping["k_euler_ancestral"] == mapping["euler a"] == "Euler a"
    assert mapping["k_dpmpp_2m"] == "DPM++ 2M" and "Euler a" not in mapping
