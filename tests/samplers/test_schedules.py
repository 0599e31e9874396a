"""Schedules against A1111 v1.10 reference numbers for SD1.5 (fp32 alphas_cumprod)."""

from __future__ import annotations

import math

import pytest
import torch
from sampler_toys import SD15_SIGMA_MAX, SD15_SIGMA_MIN

from samplers import schedules

KARRAS_20 = [14.6146, 11.7254, 9.3402, 7.3836, 5.7894, 4.4998, 3.4648, 2.6408, 1.9909, 1.4832, 1.0908,
             0.7909, 0.5647, 0.3964, 0.2730, 0.1842, 0.1213, 0.0779, 0.0485, 0.0292, 0]
UNIFORM_20 = [14.6146, 10.7468, 8.0815, 6.2049, 4.8557, 3.8654, 3.1238, 2.5572, 2.1157, 1.7648, 1.4806,
              1.2458, 1.0481, 0.8784, 0.7297, 0.5964, 0.4736, 0.3555, 0.2322, 0.0292, 0]
AYS_SD15_10 = [14.615, 6.1135, 3.5651, 2.3939, 1.65, 1.1358, 0.7425, 0.445, 0.1692, 0.029, 0]
KL_OPTIMAL_10 = [14.6146, 4.565, 2.6329, 1.7864, 1.2948, 0.9616, 0.7116, 0.5094, 0.3356, 0.1783, 0.0292]
BETA_10 = [14.6146, 13.9278, 12.491, 10.5976, 8.4424, 6.2014, 4.0462, 2.1528, 0.716, 0.0292, 0]


def _ends(table: torch.Tensor) -> tuple[float, float]:
    return float(table[0]), float(table[-1])


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    assert actual.tolist() == pytest.approx(expected, abs=1.5e-4)


def test_sigma_table_matches_sd15(sd15_sigmas):
    assert sd15_sigmas.shape == (1000,) and sd15_sigmas.dtype == torch.float32
    assert float(sd15_sigmas[0]) == pytest.approx(SD15_SIGMA_MIN, rel=1e-6)
    assert float(sd15_sigmas[-1]) == pytest.approx(SD15_SIGMA_MAX, rel=1e-6)
    assert bool((sd15_sigmas[1:] > sd15_sigmas[:-1]).all())


def test_karras_20(sd15_sigmas):
    _close(schedules.karras(20, *_ends(sd15_sigmas)), KARRAS_20)


def test_uniform_20(sd15_sigmas):
    _close(schedules.uniform(20, *_ends(sd15_sigmas), sd15_sigmas), UNIFORM_20)


def test_align_your_steps_10_is_interpolated(sd15_sigmas):
    _close(schedules.align_your_steps(10, *_ends(sd15_sigmas)), AYS_SD15_10)


def test_align_your_steps_11_is_the_published_table():
    out = schedules.align_your_steps(11, 0.0, 0.0, is_sdxl=True)
    assert out.tolist() == pytest.approx(list(schedules.AYS_SDXL) + [0.0], abs=1e-6)


def test_kl_optimal_10_ends_at_sigma_min(sd15_sigmas):
    out = schedules.kl_optimal(10, *_ends(sd15_sigmas))
    _close(out, KL_OPTIMAL_10)
    assert float(out[-1]) > 0


def test_beta_10(sd15_sigmas):
    _close(schedules.beta(10, *_ends(sd15_sigmas), sd15_sigmas), BETA_10)


@pytest.mark.parametrize(("p", "a", "b", "expected"), [
    (0.5, 0.6, 0.6, 0.5),            # symmetric distribution: the median is 1/2
    (0.25, 1.0, 1.0, 0.25),          # Beta(1,1) is uniform
    (0.3, 2.0, 1.0, math.sqrt(0.3)),  # CDF x^2
    (0.3, 1.0, 3.0, 1 - 0.7 ** (1 / 3)),  # CDF 1-(1-x)^3
])
def test_beta_ppf_closed_forms(p, a, b, expected):
    assert schedules.beta_ppf(p, a, b) == pytest.approx(expected, abs=1e-12)


def test_beta_ppf_inverts_the_cdf():
    for p in (0.001, 0.1, 0.37, 0.9, 0.999):
        q = schedules.beta_ppf(p, 0.6, 0.6)
        assert schedules.regularized_incomplete_beta(q, 0.6, 0.6) == pytest.approx(p, abs=1e-12)


def test_exponential_and_polyexponential_rho1_agree(sd15_sigmas):
    lo, hi = _ends(sd15_sigmas)
    exp_ = schedules.exponential(8, lo, hi)
    assert torch.allclose(exp_, schedules.polyexponential(8, lo, hi), rtol=1e-5)
    ratios = exp_[1:-1] / exp_[:-2]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)


def test_ddim_schedule_lengths(sd15_sigmas):
    lo, hi = _ends(sd15_sigmas)
    # non-zero entries: n=30 -> 31, n=7 -> 8, n=20 -> 20 (the A1111 quirk), plus the final 0
    assert [len(schedules.ddim(n, lo, hi, sd15_sigmas)) - 1 for n in (7, 20, 25, 30, 50)] == [8, 20, 25, 31, 50]
    out = schedules.ddim(20, lo, hi, sd15_sigmas)
    assert float(out[-2]) == float(sd15_sigmas[1]) and float(out[0]) == float(sd15_sigmas[951])


def test_simple_takes_table_entries_from_the_top(sd15_sigmas):
    out = schedules.simple(4, *_ends(sd15_sigmas), sd15_sigmas)
    expected = [float(sd15_sigmas[i]) for i in (999, 749, 499, 249)] + [0.0]
    assert out.tolist() == expected


def test_normal_equals_uniform_when_range_is_the_full_table(sd15_sigmas):
    lo, hi = _ends(sd15_sigmas)
    assert torch.allclose(schedules.normal(12, lo, hi, sd15_sigmas), schedules.uniform(12, lo, hi, sd15_sigmas))


def test_sgm_uniform_drops_the_last_timestep(sd15_sigmas):
    lo, hi = _ends(sd15_sigmas)
    out = schedules.sgm_uniform(10, lo, hi, sd15_sigmas)
    assert len(out) == 11 and float(out[0]) == pytest.approx(hi) and float(out[-2]) > 0.3
    assert float(out[-1]) == 0.0


def test_sigma_to_t_round_trips_and_interpolates(sd15_sigmas):
    log_sigmas = sd15_sigmas.log()
    t = torch.tensor([0.0, 10.0, 500.25, 998.5, 999.0])
    back = schedules.sigma_to_t(schedules.t_to_sigma(t, log_sigmas), log_sigmas)
    assert torch.allclose(back, t, atol=2e-3)
    # outside the table the timestep clamps to the ends
    assert float(schedules.sigma_to_t(torch.tensor(1e-4), log_sigmas)) == 0.0
    assert float(schedules.sigma_to_t(torch.tensor(100.0), log_sigmas)) == 999.0


def _upstream_style_sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Independent oracle: pairwise distances, last non-negative one via cumsum/argmax."""
    dists = sigma.log() - log_sigmas[:, None]
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - sigma.log()) / (lo - hi)).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


def test_sigma_to_t_matches_pairwise_oracle(sd15_sigmas):
    log_sigmas = sd15_sigmas.log()
    sigma = torch.cat([sd15_sigmas[::37], torch.rand(200, generator=torch.Generator().manual_seed(0)) * 16,
                       torch.tensor([1e-3, 20.0])])
    assert torch.equal(schedules.sigma_to_t(sigma, log_sigmas), _upstream_style_sigma_to_t(sigma, log_sigmas))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_step_counts_are_rejected(bad):
    with pytest.raises(ValueError, match="positive int"):
        schedules.karras(bad, 0.03, 14.6)


def test_table_schedulers_need_a_table():
    with pytest.raises(ValueError, match="sigma table"):
        schedules.uniform(10, 0.03, 14.6, torch.tensor([1.0]))
