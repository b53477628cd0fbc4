"""The accelerated sampler on a problem with a known answer.

Data x_0 ~ N(m, s² I) has the exact noise predictor
ε̂(x_t) = σ_t (x_t − α_t m) / (α_t² s² + σ_t²); with it, plain DDIM (the probability-flow
ODE, linear for Gaussian data) must return N(m, s²). The accelerated jump with an
independent z_c ~ N(m, s²) gives x_{t₂} the mean α₂ m and the variance
v = (α₂ − σ₂α₁/σ₁)² s² + (σ₂/σ₁)² (α₁² s² + σ₁²) instead of α₂² s² + σ₂²; the linear
ODE from t₂ then returns std s·√(v / (α₂² s² + σ₂²)): the known answer below.
"""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_cbldm.prior import cosine_schedule
from emverse_cbldm.sampler import AcceleratedSampler


class GaussianPrior:
    event_shape = (1, 4, 4)

    def __init__(self, mean, std, offset=5e-4):
        self.mean, self.std = mean, std
        self.schedule = cosine_schedule(offset)
        self.calls = 0

    def embed(self, condition):
        return condition

    def predict_noise(self, x_t, t, condition, embedding=None):
        self.calls += 1
        a, s = self.schedule.alpha_sigma(t)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        return s * (x_t - a * self.mean) / (a**2 * self.std**2 + s**2)

    def denoise(self, x_t, t, condition=None):
        a, s = self.schedule.alpha_sigma(t)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        return (x_t - s * self.predict_noise(x_t, t, condition)) / a

    def conditional_prior_sample(self, condition, generator=None):
        shape = (condition.shape[0], *self.event_shape)
        return self.mean + self.std * torch.randn(shape, generator=generator, dtype=condition.dtype)


def expected_std(schedule, s, t1, t2):
    if t1 == 1.0 and t2 == 1.0:
        return s
    a1, s1 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t1, dtype=torch.float64)))
    a2, s2 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t2, dtype=torch.float64)))
    v = (a2 - s2 * a1 / s1) ** 2 * s**2 + (s2 / s1) ** 2 * (a1**2 * s**2 + s1**2)
    return s * math.sqrt(v / (a2**2 * s**2 + s2**2))


@pytest.mark.parametrize("t1,t2", [(1.0, 1.0), (0.9, 0.4), (0.8, 0.2)])
def test_sampler_returns_the_known_gaussian_answer(t1, t2):
    prior = GaussianPrior(mean=1.5, std=0.3)
    steps = 200
    sampler = AcceleratedSampler(steps=steps, t1=t1, t2=t2)
    n = 2000
    cond = torch.zeros(n, 3, dtype=torch.float64)
    x = sampler.sample(prior, (n, *prior.event_shape), cond, None, torch.Generator().manual_seed(0))
    assert prior.calls == sampler.nfe == round((1 - t1) * steps) + round(t2 * steps)
    assert float(x.mean()) == pytest.approx(1.5, abs=0.01)
    assert float(x.std()) == pytest.approx(expected_std(prior.schedule, 0.3, t1, t2), rel=0.02)


def test_plain_sampler_is_deterministic_map_of_the_noise():
    prior = GaussianPrior(mean=0.0, std=2.0)
    sampler = AcceleratedSampler(steps=20)
    cond = torch.zeros(8, 1, dtype=torch.float64)
    a = sampler.sample(prior, (8, 1, 4, 4), cond, None, torch.Generator().manual_seed(3))
    b = sampler.sample(prior, (8, 1, 4, 4), cond, None, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # with eta = 0 the probability-flow map is linear for zero-mean Gaussian data: x0 = c · noise
    noise = torch.randn(
        (8, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    ratio = a / noise
    assert float(ratio.std()) < 1e-6 * float(ratio.mean().abs())
    assert float(ratio.mean()) == pytest.approx(2.0, rel=0.1)


def test_sampler_bad_settings():
    with pytest.raises(EmverseError, match="t2"):
        AcceleratedSampler(steps=10, t1=0.5, t2=0.8)
    with pytest.raises(EmverseError, match="no step"):
        AcceleratedSampler(steps=10, t1=0.5, t2=0.01)
    assert AcceleratedSampler(steps=100, t1=0.9, t2=0.8).nfe == 90
    assert math.isclose(AcceleratedSampler(steps=100).nfe, 100)
