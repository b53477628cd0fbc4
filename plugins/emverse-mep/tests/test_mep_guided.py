"""The guided DPM-Solver++(2M) SDE on a prior whose denoiser is known exactly."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_mep.guided import guidance_weight, guided_sample, logsnr_ladder
from torch import nn


class GaussianPrior(nn.Module):
    """x₀ ~ N(μ, s²) per voxel: the exact posterior mean is
    x̂₀ = (α s² x_t + σ² μ)/(α² s² + σ²); v̂ = (α x_t − x̂₀)/σ."""

    def __init__(self, mean, std, shape=(2, 8, 8)):
        super().__init__()
        self.mean, self.std = mean, std
        self.event_shape = shape
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def predict_v(self, x_t, logsnr):
        alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
        sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
        x0 = (alpha * self.std**2 * x_t + sigma**2 * self.mean) / (alpha**2 * self.std**2 + sigma**2)
        return (alpha * x_t - x0) / sigma + 0 * self.dummy


class Square(nn.Module):
    """y = x² per voxel, laid out as (B, n, 1, 1) 'patterns'."""

    def forward(self, x):
        return (x**2).reshape(x.shape[0], -1, 1, 1)


@pytest.mark.parametrize("steps", [25, 60])
def test_unguided_samples_follow_the_gaussian_prior(steps):
    prior = GaussianPrior(mean=1.5, std=0.5)
    gen = torch.Generator().manual_seed(0)
    fake_obs = None
    x = torch.cat([
        guided_sample(prior, fake_obs, None, steps=steps, generator=gen) for _ in range(40)
    ])
    assert float(x.mean()) == pytest.approx(1.5, abs=0.03)
    assert float(x.std()) == pytest.approx(0.5, rel=0.08)


def test_guidance_pulls_samples_to_the_measurement():
    prior = GaussianPrior(mean=0.0, std=1.0, shape=(1, 4, 4))
    target = torch.full((8, 1, 4, 4), 2.0, dtype=torch.float64)
    y = Square()(target)
    gen = torch.Generator().manual_seed(1)
    free = guided_sample(prior, y, Square(), steps=40, w_max=0.0, generator=gen)
    gen = torch.Generator().manual_seed(1)
    guided = guided_sample(prior, y, Square(), steps=40, w_max=0.3, centre=10.0, generator=gen)
    err_free = float((free.abs() - 2.0).abs().mean())
    err_guided = float((guided.abs() - 2.0).abs().mean())
    assert err_guided < 0.25 * err_free
    # a linear denoiser: ∇_{x_t} = (∂x̂₀/∂x_t) ∇_{x̂₀} is a scalar multiple, gone after the RMS rescaling
    gen = torch.Generator().manual_seed(1)
    direct = guided_sample(prior, y, Square(), steps=40, w_max=0.3, centre=10.0, through_denoiser=False,
                           generator=gen)
    torch.testing.assert_close(direct, guided)


def test_guidance_schedules():
    assert guidance_weight("shifted_sigmoid", -20.0, 2.0, centre=-4.0) == pytest.approx(2.0, rel=1e-6)
    assert guidance_weight("shifted_sigmoid", 10.0, 2.0, centre=-4.0) < 1e-5
    assert guidance_weight("shifted_sigmoid", -4.0, 2.0, centre=-4.0) == pytest.approx(1.0)
    lams = [-10.0, -2.0, 0.0, 4.0]
    alpha = [guidance_weight("alpha", lam, 1.0) for lam in lams]
    assert alpha == sorted(alpha) and alpha[-1] < 1.0
    assert alpha[2] == pytest.approx(math.sqrt(0.5))
    assert guidance_weight("constant", 3.0, 0.7) == 0.7
    with pytest.raises(EmverseError, match="unknown"):
        guidance_weight("cosine", 0.0, 1.0)


def test_ladder_and_bad_steps():
    lam = logsnr_ladder(5)
    assert float(lam[0]) == pytest.approx(-2 * math.log(800.0))
    assert float(lam[-1]) == pytest.approx(-2 * math.log(0.1))
    assert torch.all(lam[1:] > lam[:-1])
    with pytest.raises(EmverseError, match="steps"):
        logsnr_ladder(0)
    with pytest.raises(EmverseError, match="physics"):
        guided_sample(GaussianPrior(0.0, 1.0), torch.zeros(1, 4, 1, 1), None, steps=2)
