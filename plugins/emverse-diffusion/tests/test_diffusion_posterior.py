"""The must-show: a small conditional denoiser trained on CPU gives the exact linear-Gaussian posterior.

Errors are in units of the exact posterior standard deviation and summarised as
RMS over observations and parameters: with n draws the sampling noise alone is
1/√n for means and ≈ 1/√(2n) for standard deviations.
"""

import pytest
import torch
from emverse_diffusion.metrics.uq import calibration_error
from emverse_diffusion.samplers.ddim import DDIMSampler
from emverse_diffusion.samplers.ddpm import DDPMSampler
from emverse_diffusion.samplers.dpmpp_2m import DPMSolverPP2MSampler


def _observations(linear_problem, n, seed):
    model, data_prior = linear_problem
    g = torch.Generator().manual_seed(seed)
    x = data_prior.sample(n, generator=g)
    return x, model.simulate(x, generator=g)



def _errors(draws, y, linear_problem):
    model, data_prior = linear_problem
    means, stds = [], []
    for i in range(y.shape[0]):
        post = data_prior.exact_posterior(model, y[i].double())
        means.append(post.mean)
        stds.append(post.covariance_matrix.diagonal().sqrt())
    mean, std = torch.stack(means), torch.stack(stds)
    d = draws.double()
    mean_err = ((d.mean(1) - mean) / std).pow(2).mean().sqrt().item()
    std_err = (d.std(1) / std - 1).pow(2).mean().sqrt().item()
    return mean_err, std_err, std


def test_training_converged(conditional_prior):
    _, result = conditional_prior
    first, last = result.history["loss"][:50], result.history["loss"][-100:]
    assert sum(last) / len(last) < 0.6 * sum(first) / len(first)


@pytest.mark.parametrize("sampler", [DPMSolverPP2MSampler(20), DDIMSampler(50)], ids=["dpmpp2m-20", "ddim-50"])
def test_posterior_moments_within_10_percent(conditional_prior, linear_problem, sampler):
    prior, _ = conditional_prior
    _, y = _observations(linear_problem, 32, seed=10)
    draws = prior.sample(400, condition=y.float(), sampler=sampler, generator=torch.Generator().manual_seed(11))
    mean_err, std_err, _ = _errors(draws, y, linear_problem)
    # sampling noise: 0.05 (means), 0.035 (stds)
    assert mean_err < 0.10, mean_err
    assert std_err < 0.10, std_err


def test_calibration_error_below_005(conditional_prior, linear_problem):
    prior, _ = conditional_prior
    x, y = _observations(linear_problem, 128, seed=12)
    draws = prior.sample(100, condition=y.float(), sampler=DPMSolverPP2MSampler(20),
                         generator=torch.Generator().manual_seed(13))
    err = calibration_error(draws, x).mean().item()
    assert err <= 0.05, err


def test_ddpm_1000_steps_matches_exact_and_dpm_solver_20(conditional_prior, linear_problem):
    prior, _ = conditional_prior
    _, y = _observations(linear_problem, 4, seed=14)
    ddpm = prior.sample(500, condition=y.float(), sampler=DDPMSampler(1000), generator=torch.Generator().manual_seed(15))
    dpm = prior.sample(500, condition=y.float(), sampler=DPMSolverPP2MSampler(20),
                       generator=torch.Generator().manual_seed(16))
    mean_err, std_err, exact_std = _errors(ddpm, y, linear_problem)
    assert mean_err < 0.10 and std_err < 0.10, (mean_err, std_err)
    # DPM-Solver++ 20 steps vs DDPM 1000 steps: same posterior within the same tolerance
    # (two independent 500-draw estimates: noise ≈ 0.063 for the means, 0.045 for the stds)
    mean_gap = ((dpm.double().mean(1) - ddpm.double().mean(1)) / exact_std).pow(2).mean().sqrt().item()
    std_gap = (dpm.double().std(1) / ddpm.double().std(1) - 1).pow(2).mean().sqrt().item()
    assert mean_gap < 0.10 and std_gap < 0.10, (mean_gap, std_gap)
