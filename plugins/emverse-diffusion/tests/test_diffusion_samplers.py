"""Samplers on a Gaussian prior with an exact denoiser: moments, identities, the DDPM update, errors."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_diffusion.analytic import GaussianDiffusionPrior
from emverse_diffusion.samplers.ddim import DDIMSampler
from emverse_diffusion.samplers.ddpm import DDPMSampler
from emverse_diffusion.samplers.dpmpp_2m import DPMSolverPP2MSampler, DPMSolverPP2MSDESampler
from emverse_diffusion.samplers.euler import EulerSampler
from emverse_diffusion.schedules import CosineSchedule, LinearBetaSchedule


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    L = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.4
    cov = L @ L.T + 0.05 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    return mean, cov


def moments(x):
    return x.mean(0), torch.cov(x.T)


# Steps chosen so the discretisation error is below ~3 % (measured with 50 000 draws);
# with 6 000 draws the sampling error of the covariance is ≈ 2 % (relative Frobenius),
# so 6 % is a 3σ bound on top of the discretisation.
SAMPLERS = [
    DDPMSampler(250),
    DDPMSampler(250, variance="beta"),
    DDIMSampler(100),
    DDIMSampler(250, eta=1.0),
    DPMSolverPP2MSampler(30),
    DPMSolverPP2MSDESampler(50),
    EulerSampler(100),
    EulerSampler(200, churn=10.0),
]


CASES = [(CosineSchedule(), s) for s in SAMPLERS] + [
    (LinearBetaSchedule(), s) for s in (SAMPLERS[0], SAMPLERS[4], SAMPLERS[6])
]


@pytest.mark.parametrize("schedule,sampler", CASES,
                         ids=lambda v: type(v).__name__ + (f"-{v.steps}" if hasattr(v, "steps") and not hasattr(v, "betas") else ""))
def test_samplers_reproduce_a_gaussian(gaussian, schedule, sampler):
    mean, cov = gaussian
    prior = GaussianDiffusionPrior(mean, cov, schedule)
    x = sampler.sample(prior, (6000, 3), generator=torch.Generator().manual_seed(1))
    m, c = moments(x)
    # mean: 6000 draws of std ≤ 1.1 → sampling error ≤ 0.014
    assert (m - mean).abs().max() < 0.045
    assert torch.linalg.norm(c - cov) / torch.linalg.norm(cov) < 0.06


def test_dpm_solver_converges_with_steps(gaussian):
    mean, cov = gaussian
    prior = GaussianDiffusionPrior(mean, cov, CosineSchedule())
    errors = []
    for steps in (3, 6, 24):
        x = DPMSolverPP2MSampler(steps).sample(prior, (4000, 3), generator=torch.Generator().manual_seed(2))
        errors.append((torch.cov(x.T) - cov).abs().max().item())
    assert errors[2] < errors[1] < errors[0]


def test_ddim_eta0_equals_euler_without_churn(gaussian):
    mean, cov = gaussian
    prior = GaussianDiffusionPrior(mean, cov, CosineSchedule())
    a = DDIMSampler(15, spacing="karras").sample(prior, (50, 3), generator=torch.Generator().manual_seed(3))
    b = EulerSampler(15, spacing="karras").sample(prior, (50, 3), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_equals_ddpm_posterior(gaussian):
    mean, cov = gaussian
    prior = GaussianDiffusionPrior(mean, cov, LinearBetaSchedule())
    a = DDIMSampler(40, eta=1.0).sample(prior, (50, 3), generator=torch.Generator().manual_seed(4))
    b = DDPMSampler(40).sample(prior, (50, 3), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_ddpm_matches_ho_et_al_update():
    """steps = T on a linear-β schedule: x_{k−1} = (x_k − β_k/√(1−ᾱ_k) ε̂)/√(1−β_k) + √β̃_k z."""
    T = 4
    schedule = LinearBetaSchedule(0.05, 0.4, T)
    prior = GaussianDiffusionPrior(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 0.5,
                                   schedule)
    ours = DDPMSampler(T).sample(prior, (5, 2), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    betas = schedule.betas
    abar = schedule.alphas_cumprod
    for k in range(T, 0, -1):
        t = torch.full((5,), k / T, dtype=torch.float64)
        x0 = prior.denoise(x, t)
        eps = (x - abar[k - 1].sqrt() * x0) / (1 - abar[k - 1]).sqrt()
        if k == 1:
            x = x0
            break
        mean = (x - betas[k - 1] / (1 - abar[k - 1]).sqrt() * eps) / (1 - betas[k - 1]).sqrt()
        var = betas[k - 1] * (1 - abar[k - 2]) / (1 - abar[k - 1])
        x = mean + var.sqrt() * torch.randn(5, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours, x)


def test_conditional_prior_gets_its_condition():
    mean_map = lambda c: c * 10.0  # noqa: E731
    prior = GaussianDiffusionPrior(torch.zeros(2, dtype=torch.float64), 0.01 * torch.eye(2, dtype=torch.float64),
                                   CosineSchedule(), mean_map=mean_map)
    condition = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    draws = prior.sample(300, condition=condition, sampler=DPMSolverPP2MSampler(15),
                         generator=torch.Generator().manual_seed(6))
    assert draws.shape == (2, 300, 2)
    torch.testing.assert_close(draws.mean(1), condition * 10.0, atol=0.03, rtol=0)


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler, DPMSolverPP2MSampler, DPMSolverPP2MSDESampler,
                                 EulerSampler])
def test_zero_steps_is_an_error(cls):
    with pytest.raises(EmverseError, match="steps = 0: a sampler needs at least one step"):
        cls(steps=0)


def test_one_step_returns_the_denoised_start(gaussian):
    mean, cov = gaussian
    prior = GaussianDiffusionPrior(mean, cov, CosineSchedule())
    x = DDIMSampler(1).sample(prior, (4000, 3), generator=torch.Generator().manual_seed(7))
    # one step from pure noise returns E[x0 | x_1] ≈ the mean (α(1) ≈ 5e-4)
    assert (x.mean(0) - mean).abs().max() < 1e-2 and x.std(0).max() < 0.01
    assert math.isfinite(float(x.sum()))
