"""Samplers k-diffusion does not have (DDIM, DDIM CFG++, PLMS, UniPC, LCM, Restart) against
reference implementations written here from A1111 v1.10.1's formulas, on the embedded tiny
UNet called directly (so our wrappers and CFG denoiser are checked too).

The references are deliberately plain: per-row UNet calls with guidance done by hand, float64
schedule arithmetic and numpy interpolation where A1111's code has its own. Tolerance: max
abs difference < 1e-4 on latents of magnitude ~1-40.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from samplers.registry import compute_sigmas, compute_timesteps, find_sampler, find_scheduler, sampler_call_kwargs
from samplers.unipc import UniPCOptions

SHAPE = (2, 4, 8, 8)
CFG = 6.0
TOL = 1e-4


@pytest.fixture(scope="module")
def world(tiny_world):
    from webui_api.engine.cond_types import BatchConditioning

    model, cond, uncond = tiny_world
    return model, cond, uncond, {"cond": BatchConditioning.plain(cond, uncond), "cond_scale": CFG, "s_min_uncond": 0.0}


class Noise:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *_):
        return torch.randn(SHAPE, generator=self.generator)


def _unit_noise(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _cfg(model, kind):
    from webui_api.engine.denoiser import CFGDenoiser, GuidanceOptions, make_inner
    from webui_api.progress import CancelToken

    return CFGDenoiser(
        make_inner(model, kind), CancelToken(), GuidanceOptions(mask_before_denoising=kind == "timesteps")
    )


def _run(model, extra, name, schedule, x, noise=None, eta=None, **extra_kwargs):
    sampler = find_sampler(name)
    kwargs = sampler_call_kwargs(sampler, schedule, eta=eta, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                                 noise_sampler=noise, alphas_cumprod=model.alphas_cumprod, **extra_kwargs)
    seen = []
    with torch.inference_mode():
        out = sampler.function(_cfg(model, sampler.kind), x, schedule, extra_args=extra,
                               callback=lambda d: seen.append(d["i"]), **kwargs)
    return out, seen


# --- reference pieces ----------------------------------------------------------------------------


def unet_eps(model, x, t, c):
    """The UNet itself: eps at timestep t (a float tensor per row)."""
    return model.unet(x, t, encoder_hidden_states=c).sample


def guided_eps(model, cond, uncond, x, t, scale=CFG):
    """u + scale * (c - u) from one UNet batch [cond rows, uncond rows] (A1111's layout, so the
    UNet's own rounding is the same on both sides); also returns u (DDIM CFG++ needs it)."""
    out = unet_eps(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
    c, u = out[: x.shape[0]], out[x.shape[0] :]
    return u + (c - u) * scale, u


def ref_ddim(model, cond, uncond, steps, x, noise, eta, cfgpp=False):
    acp = model.alphas_cumprod.double()
    ts = [int(v) for v in range(0, 1000, 1000 // steps)]
    ts = [min(v + 1, 999) for v in ts]
    calls = 0
    for j in range(len(ts) - 1, 0, -1):
        t = torch.full((x.shape[0],), float(ts[j]))
        e, u = guided_eps(model, cond, uncond, x, t, CFG / 12.5 if cfgpp else CFG)
        calls += 1
        a, ap = acp[ts[j]], acp[ts[j - 1]]
        sigma = eta * torch.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x0 = (x - torch.sqrt(1 - a) * e) / torch.sqrt(a)
        direction = u if cfgpp else e
        x = (torch.sqrt(ap) * x0 + torch.sqrt(1 - ap - sigma**2) * direction + sigma * noise()).float()
    return x, calls


def ref_plms(model, cond, uncond, steps, x):
    acp = model.alphas_cumprod.double()
    ts = [min(v + 1, 999) for v in range(0, 1000, 1000 // steps)]

    def move(x, e, j):
        a, ap = acp[ts[j]], acp[ts[j - 1]] if j > 0 else acp[0]
        x0 = (x - torch.sqrt(1 - a) * e) / torch.sqrt(a)
        return (torch.sqrt(ap) * x0 + torch.sqrt(1 - ap) * e).float()

    batch = x.shape[0]

    def row_t(k):
        return torch.full((batch,), float(ts[k]))

    history = []
    for j in range(len(ts) - 1, 0, -1):
        e, _ = guided_eps(model, cond, uncond, x, row_t(j))
        if not history:
            e_next, _ = guided_eps(model, cond, uncond, move(x, e, j), row_t(j - 1))
            e_prime = (e + e_next) / 2
        elif len(history) == 1:
            e_prime = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [e])[-3:]
        x = move(x, e_prime, j)
    return x


def ref_unipc(model, cond, uncond, steps, x, order=3, variant="bh1"):
    """UniPC-B(h), multistep, data prediction, time-uniform, lower order final (A1111 defaults)."""
    n_train = 1000
    log_alpha = 0.5 * np.log(model.alphas_cumprod.double().numpy())
    t_grid = np.arange(1, n_train + 1) / n_train
    la = lambda t: float(np.interp(t, t_grid, log_alpha))  # noqa: E731
    alpha = lambda t: math.exp(la(t))  # noqa: E731
    std = lambda t: math.sqrt(1 - math.exp(2 * la(t)))  # noqa: E731
    lam = lambda t: la(t) - math.log(std(t))  # noqa: E731
    times = np.linspace(1.0, 1.0 / n_train, steps + 1)

    def x0_of(x, t):
        model_t = torch.full((x.shape[0],), (t - 1 / n_train) * 1000, dtype=torch.float32)
        e, _ = guided_eps(model, cond, uncond, x.float(), model_t)
        return (x - std(t) * e.double()) / alpha(t)

    def update(x, hist, t, k, corrector):
        t_prev, m_prev = hist[-1]
        h = lam(t) - lam(t_prev)
        rks = [(lam(hist[-(i + 1)][0]) - lam(t_prev)) / h for i in range(1, k)] + [1.0]
        d1s = [(hist[-(i + 1)][1] - m_prev) / rks[i - 1] for i in range(1, k)]
        hh = -h
        b_h = hh if variant == "bh1" else math.expm1(hh)
        phi, fact, b = math.expm1(hh) / hh - 1, 1, []
        for i in range(1, k + 1):
            b.append(phi * fact / b_h)
            fact *= i + 1
            phi = phi / hh - 1 / fact
        r = np.array([[rk ** (i - 1) for rk in rks] for i in range(1, k + 1)])
        base = std(t) / std(t_prev) * x - alpha(t) * math.expm1(hh) * m_prev
        x_t = base
        if d1s:
            rho_p = [0.5] if k == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
            x_t = base - alpha(t) * b_h * sum(float(w) * d for w, d in zip(rho_p, d1s, strict=True))
        if not corrector:
            return x_t, None
        model_t = x0_of(x_t, t)
        rho_c = [0.5] if k == 1 else np.linalg.solve(r, b)
        corr = sum(float(w) * d for w, d in zip(rho_c[:-1], d1s, strict=True)) if d1s else 0
        return base - alpha(t) * b_h * (corr + float(rho_c[-1]) * (model_t - m_prev)), model_t

    x = x.double()
    hist = [(times[0], x0_of(x, times[0]))]
    for step in range(1, steps + 1):
        k = step if step < order else min(order, steps + 1 - step)
        x, m = update(x, hist, times[step], k, corrector=step < steps)
        hist = (hist + [(times[step], m)])[-order:]
    return x.float()


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "calls"), [(7, 7), pytest.param(20, 19, marks=pytest.mark.slow)])
def test_ddim_matches_a1111_formulas(world, steps, calls):
    model, cond, uncond, extra = world
    ts = compute_timesteps(find_sampler("DDIM"), steps)
    ours, seen = _run(model, extra, "DDIM", ts, _unit_noise(), Noise(4), eta=0.5)
    with torch.inference_mode():
        ref, ref_calls = ref_ddim(model, cond, uncond, steps, _unit_noise(), Noise(4), 0.5)
    assert ref_calls == calls and seen == list(range(calls))
    assert float((ours - ref).abs().max()) < TOL


def test_ddim_cfgpp_matches_a1111_formulas(world):
    model, cond, uncond, extra = world
    ts = compute_timesteps(find_sampler("DDIM CFG++"), 8)
    ours, _ = _run(model, extra, "DDIM CFG++", ts, _unit_noise(), Noise(4), eta=0.3)
    with torch.inference_mode():
        ref, _ = ref_ddim(model, cond, uncond, 8, _unit_noise(), Noise(4), 0.3, cfgpp=True)
        plain, _ = ref_ddim(model, cond, uncond, 8, _unit_noise(), Noise(4), 0.3)
    assert float((ours - ref).abs().max()) < TOL
    assert float((ours - plain).abs().max()) > 1e-2  # CFG++ is not plain DDIM


@pytest.mark.parametrize(("name", "steps", "calls"), [
    ("DDIM", 20, 19), ("DDIM", 30, 30), ("DDIM", 50, 49), ("DDIM CFG++", 20, 19), ("PLMS", 20, 20), ("UniPC", 20, 20),
])
def test_model_call_counts_follow_a1111(name, steps, calls):
    """DDIM never evaluates timesteps[0]; PLMS adds one call on its first step; UniPC makes one
    call per step (len(timesteps) steps). Counted on a cheap stand-in eps model."""

    class Counting:
        count = 0

        def __call__(self, x, t, **extra):
            self.count += 1
            return x * 0.1

        def last_uncond(self):
            return torch.zeros(SHAPE)

    model = Counting()
    ts = compute_timesteps(find_sampler(name), steps)
    acp = torch.linspace(0.999, 0.005, 1000)
    kwargs = sampler_call_kwargs(find_sampler(name), ts, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                                 s_noise=1.0, noise_sampler=Noise(0), alphas_cumprod=acp)
    find_sampler(name).function(model, _unit_noise(), ts, extra_args={"cond_scale": 7.0}, **kwargs)
    assert model.count == calls


def test_ddim_draws_noise_every_step_even_at_eta_0(world):
    model, _, _, extra = world
    draws = []
    ts = compute_timesteps(find_sampler("DDIM"), 5)
    _run(model, extra, "DDIM", ts, _unit_noise(), lambda *a: draws.append(a) or torch.zeros(SHAPE), eta=0.0)
    assert len(draws) == len(ts) - 1


def test_plms_matches_a1111_formulas(world):
    model, cond, uncond, extra = world
    ts = compute_timesteps(find_sampler("PLMS"), 10)
    ours, seen = _run(model, extra, "PLMS", ts, _unit_noise())
    with torch.inference_mode():
        ref = ref_plms(model, cond, uncond, 10, _unit_noise())
    assert seen == list(range(9))
    assert float((ours - ref).abs().max()) < TOL


@pytest.mark.parametrize(("steps", "variant", "order"), [(8, "bh1", 3), (6, "bh2", 2), (5, "bh1", 1)])
def test_unipc_matches_a1111_formulas(world, steps, variant, order):
    model, cond, uncond, extra = world
    ts = compute_timesteps(find_sampler("UniPC"), steps)
    options = UniPCOptions(variant=variant, order=order)
    ours, seen = _run(model, extra, "UniPC", ts, _unit_noise(), unipc_options=options)
    with torch.inference_mode():
        ref = ref_unipc(model, cond, uncond, len(ts), _unit_noise(), order=order, variant=variant)
    assert seen == list(range(len(ts)))
    assert float((ours - ref).abs().max()) < TOL


def test_unipc_refuses_fewer_steps_than_its_order(world):
    model, _, _, extra = world
    with pytest.raises(ValueError, match="UniPC order must be < sampling steps"):
        _run(model, extra, "UniPC", compute_timesteps(find_sampler("UniPC"), 2), _unit_noise())


def ref_lcm_table(acp):
    idx = [19 + 20 * k for k in range(50)]
    a = acp[idx]
    return ((1 - a) / a) ** 0.5


def ref_lcm_sigmas(table, n):
    log_t = table.double().log()
    out = []
    for t in np.linspace(999, 19, n):
        pos = (t - 19) / 20
        lo, hi = math.floor(pos), math.ceil(pos)
        w = pos - lo
        out.append(math.exp((1 - w) * float(log_t[lo]) + w * float(log_t[hi])))
    return torch.tensor(out + [0.0], dtype=torch.float32)


def ref_lcm_guided(model, table, x, sigma, cond, uncond):
    """LCM's wrapper (quantised timestep, boundary condition) on a [cond, uncond] batch, then CFG.
    sigma is the schedule's float32 value; the scalings are applied in k-diffusion's order
    (input * c_in, input + eps * c_out, c_out' * x0 + c_skip * input), because on this random
    UNet a one-ulp change of its input already moves the result by ~1e-4."""
    t = int(torch.argmin((table.log() - sigma.log()).abs())) * 20 + 19
    xx = torch.cat([x, x])
    c_in = 1 / (sigma**2 + 1.0) ** 0.5
    eps = unet_eps(model, xx * c_in, torch.full((xx.shape[0],), t), torch.cat([cond, uncond]))
    x0 = xx + eps * -sigma
    st = torch.tensor(float(t * 10))
    out = st / (st**2 + 0.25) ** 0.5 * x0 + 0.25 / (st**2 + 0.25) * xx
    c, u = out[: x.shape[0]], out[x.shape[0] :]
    return u + (c - u) * CFG


def test_lcm_matches_a1111_formulas(world):
    model, cond, uncond, extra = world
    table = ref_lcm_table(model.alphas_cumprod)
    sigmas = compute_sigmas(find_sampler("LCM"), find_scheduler("automatic"), 4, table)
    assert torch.allclose(sigmas, ref_lcm_sigmas(table, 4), rtol=1e-6, atol=0)
    x = _unit_noise() * sigmas[0]
    ours, seen = _run(model, extra, "LCM", sigmas, x, Noise(9))
    noise = Noise(9)
    with torch.inference_mode():
        ref = x
        for i in range(len(sigmas) - 1):
            ref = ref_lcm_guided(model, table, ref, sigmas[i], cond, uncond)
            if sigmas[i + 1] > 0:
                ref = ref + sigmas[i + 1] * noise()
    assert seen == [0, 1, 2, 3]
    assert float((ours - ref).abs().max()) < TOL


def test_restart_matches_a1111_formulas(world):
    """A1111's restart_sampler at 20 steps: Karras main schedule of 11 steps, one restart segment of
    10 Karras sigmas from ~0.1 up to ~2.0 (walked once), Heun steps throughout."""
    from samplers.schedules import karras

    model, cond, uncond, extra = world
    sigmas = compute_sigmas(find_sampler("Restart"), find_scheduler("automatic"), 20, model_sigmas(model))
    x = _unit_noise() * sigmas[0]
    ours, seen = _run(model, extra, "Restart", sigmas, x, Noise(2))
    main = karras(20 - 9, float(sigmas[-2]), float(sigmas[0]))
    min_idx = int(torch.argmin((main - 0.1).abs()))
    max_idx = int(torch.argmin((main - 2.0).abs()))
    segment = karras(10, float(main[min_idx]), float(main[max_idx]))[:-1]
    pairs = [(main[i], main[i + 1]) for i in range(min_idx)]
    pairs += list(pairwise(segment))
    pairs += [(main[i], main[i + 1]) for i in range(min_idx, len(main) - 1)]
    noise, ref, last = Noise(2), x, None

    def denoise(v, s):
        t = torch.full((v.shape[0],), float(s))
        from webui_api.engine.denoiser import CompVisDenoiser

        out = CompVisDenoiser(model)(torch.cat([v, v]), torch.cat([t, t]), torch.cat([cond, uncond]))
        c, u = out[: v.shape[0]], out[v.shape[0] :]
        return u + (c - u) * CFG

    with torch.inference_mode():
        for old, new in pairs:
            if last is not None and last < old:
                ref = ref + noise() * (old**2 - last**2) ** 0.5
            d = (ref - denoise(ref, old)) / old
            if new == 0:
                ref = ref + d * (new - old)
            else:
                x2 = ref + d * (new - old)
                ref = ref + (d + (x2 - denoise(x2, new)) / new) / 2 * (new - old)
            last = new
    assert len(seen) == len(pairs) == 20
    assert float((ours - ref).abs().max()) < TOL


def model_sigmas(model):
    from samplers.schedules import sigma_table

    return sigma_table(model.alphas_cumprod)
