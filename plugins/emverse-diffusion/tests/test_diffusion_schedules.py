"""Noise schedules: shapes, limits, the DDPM closed form, inverses, σ-ladders, bad input."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_diffusion.schedules import (
    CosineSchedule,
    LinearBetaSchedule,
    LogSNRSchedule,
    karras_sigmas,
    polyexponential_sigmas,
    sampling_times,
)

SCHEDULES = [
    LinearBetaSchedule(),
    LinearBetaSchedule(1e-4, 5e-3, 200),  # the CDI/JCDI schedule
    CosineSchedule(),
    CosineSchedule(offset=5e-4),  # CbLDM's offset
    LogSNRSchedule(),
    LogSNRSchedule(shape="linear", logsnr_min=-10, logsnr_max=8),
    LogSNRSchedule(shift=1.0),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_variance_preserving_and_monotone(schedule):
    t = torch.linspace(0.001, 1, 501, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    assert alpha.shape == t.shape == sigma.shape
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    lam = schedule.logsnr(t)
    assert (lam[1:] <= lam[:-1] + 1e-12).all(), "logSNR must decrease with t"
    torch.testing.assert_close(torch.sigmoid(lam), alpha**2)
    torch.testing.assert_close(schedule.sigma_ve(t), sigma / alpha)
    # batch shapes and dtypes follow the input
    t32 = torch.rand(3, 5)
    assert schedule.alpha(t32).shape == (3, 5) and schedule.alpha(t32).dtype == torch.float32


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_logsnr_inverse_round_trip(schedule):
    lo, hi = schedule.logsnr_min, schedule.logsnr_max
    lam = torch.linspace(lo + 1e-3, hi - 1e-3, 97, dtype=torch.float64)
    back = schedule.logsnr(schedule.t_from_logsnr(lam))
    torch.testing.assert_close(back, lam, atol=1e-6, rtol=1e-6)


def test_linear_beta_matches_ddpm_closed_form():
    T, b1, bT = 1000, 1e-4, 0.02
    s = LinearBetaSchedule(b1, bT, T)
    betas = [b1 + (bT - b1) * k / (T - 1) for k in range(T)]
    alpha_bar = []
    prod = 1.0
    for b in betas:
        prod *= 1 - b
        alpha_bar.append(prod)
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    torch.testing.assert_close(s.alpha(t) ** 2, torch.tensor(alpha_bar, dtype=torch.float64), rtol=1e-10, atol=0)
    # limits: clean at t = 0, ᾱ_T ≈ 4.0e-5 for Ho et al.'s schedule
    assert s.logsnr(0.0).item() == math.inf and s.alpha(0.0).item() == 1.0
    assert 3.9e-5 < s.alpha(1.0).item() ** 2 < 4.1e-5
    # the JCDI schedule keeps signal at t = 1: ᾱ_T ≈ 0.60 (EQUATIONS.md A)
    assert abs(LinearBetaSchedule(1e-4, 5e-3, 200).alpha(1.0).item() ** 2 - 0.60) < 0.01


def test_cosine_limits_and_formula():
    s = CosineSchedule(offset=0.008, logsnr_min=-30, logsnr_max=30)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(s.alpha(t) ** 2, f(t) / f(torch.tensor(0.0, dtype=torch.float64)))
    assert s.logsnr(0.0).item() == 30.0  # clamped: the raw λ(0) is +inf
    assert s.alpha(1.0).item() < 1e-6


def test_logsnr_schedule_ends_exactly():
    for shape in ("linear", "cosine"):
        s = LogSNRSchedule(logsnr_min=-12, logsnr_max=9, shape=shape)
        assert s.logsnr(0.0).item() == pytest.approx(9.0)
        assert s.logsnr(1.0).item() == pytest.approx(-12.0)
    s = LogSNRSchedule(logsnr_min=-50, logsnr_max=50, shape="cosine", shift=0.0)
    assert s.logsnr(0.5).item() == pytest.approx(0.0, abs=1e-9)  # −2 log tan(π/4) = 0
    shifted = LogSNRSchedule(logsnr_min=-50, logsnr_max=50, shape="cosine", shift=1.5)
    assert shifted.logsnr(0.5).item() == pytest.approx(3.0, abs=1e-6)


def test_training_times():
    g = torch.Generator().manual_seed(0)
    t = LinearBetaSchedule(steps=10).sample_training_times(1000, generator=g, dtype=torch.float64)
    k = t * 10
    torch.testing.assert_close(k, k.round())
    assert k.min() == 1 and k.max() == 10
    t = CosineSchedule().sample_training_times(1000, generator=g)
    assert 0 <= t.min() and t.max() <= 1 and t.std() > 0.25


def test_sigma_ladders():
    s = karras_sigmas(5, 0.002, 80.0, 7.0)
    assert s.shape == (6,) and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[4].item() == pytest.approx(0.002)
    # the Karras formula at i = 2 (hand computed)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[2].item() == pytest.approx(mid)
    p = polyexponential_sigmas(4, 0.1, 800.0, rho=1.0)
    # ρ = 1 is log-linear: equal ratios
    ratios = p[:-2] / p[1:-1]
    torch.testing.assert_close(ratios, ratios[0].expand(3))
    # λ range quoted in EQUATIONS.md B5 for σ_min = 0.1, σ_max = 800
    assert -2 * math.log(800) == pytest.approx(-13.37, abs=0.01)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "karras", "polyexponential"])
@pytest.mark.parametrize("schedule", [LinearBetaSchedule(), CosineSchedule()], ids=repr)
def test_sampling_grid(schedule, spacing):
    grid = sampling_times(schedule, 12, spacing)
    assert grid.shape == (13,)
    assert grid[-1] == 0.0
    if spacing in ("uniform", "logsnr"):
        assert grid[0] == 1.0
    else:  # σ-ladders start at σ_max = min(σ_ve(1), 80)
        assert schedule.sigma_ve(grid[0]).item() == pytest.approx(min(schedule.sigma_ve(1.0).item(), 80.0))
    assert (grid[1:] < grid[:-1]).all(), grid


def test_uniform_grid_hits_ddpm_steps():
    grid = sampling_times(LinearBetaSchedule(steps=1000), 1000)
    torch.testing.assert_close(grid[:-1] * 1000, torch.arange(1000, 0, -1, dtype=torch.float64))


@pytest.mark.parametrize("field,value", [("beta_start", 0.0), ("beta_end", 1.0), ("beta_end", 1.5),
                                         ("beta_start", -0.1)])
def test_beta_outside_unit_interval_is_an_error(field, value):
    kwargs = {"beta_start": 1e-4, "beta_end": 0.02, field: value}
    with pytest.raises(EmverseError, match=f"{field} = {value!r} lies outside \\(0, 1\\)"):
        LinearBetaSchedule(**kwargs)


def test_zero_steps_is_an_error():
    with pytest.raises(EmverseError, match="at least one step"):
        sampling_times(CosineSchedule(), 0)
    with pytest.raises(EmverseError, match="steps = 0"):
        LinearBetaSchedule(steps=0)
