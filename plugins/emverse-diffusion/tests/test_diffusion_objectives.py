"""Prediction conversions, loss weightings, the adaptive λ sampler, L1/L2."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_diffusion.objectives import (
    AdaptiveLogSNRSampler,
    DiffusionObjective,
    LossWeighting,
    convert,
    eps_from,
    prediction_target,
    v_from,
    x0_from,
)
from emverse_diffusion.schedules import CosineSchedule, LogSNRSchedule


@pytest.fixture
def noisy():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    alpha, sigma = CosineSchedule().alpha_sigma(t)
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    return x0, eps, alpha, sigma, x_t


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_conversions_recover_x0_eps_v(noisy, kind):
    x0, eps, alpha, sigma, x_t = noisy
    output = prediction_target(kind, x0, eps, alpha, sigma)
    torch.testing.assert_close(x0_from(output, kind, x_t, alpha, sigma), x0)
    torch.testing.assert_close(eps_from(output, kind, x_t, alpha, sigma), eps)
    v = alpha[:, None, None] * eps - sigma[:, None, None] * x0  # Salimans & Ho's definition
    torch.testing.assert_close(v_from(output, kind, x_t, alpha, sigma), v)
    for target in ("eps", "x0", "v"):
        torch.testing.assert_close(
            convert(output, kind, target, x_t, alpha, sigma), prediction_target(target, x0, eps, alpha, sigma)
        )


def test_v_loss_relation(noisy):
    """‖ε̂ − ε‖² = α² ‖v̂ − v‖² / ... checked in the form ε̂ − ε = α (v̂ − v) for x0-consistent v̂."""
    x0, eps, alpha, sigma, x_t = noisy
    v = prediction_target("v", x0, eps, alpha, sigma)
    v_hat = v + 0.1
    eps_hat = eps_from(v_hat, "v", x_t, alpha, sigma)
    torch.testing.assert_close(eps_hat - eps, alpha[:, None, None] * (v_hat - v))


def test_unknown_prediction():
    with pytest.raises(EmverseError, match="prediction = 'score' is unknown"):
        x0_from(torch.zeros(1), "score", torch.zeros(1), 1.0, 0.0)


def test_weightings():
    lam = torch.tensor([-3.0, 0.0, 1.0, 2.0, 4.4])
    torch.testing.assert_close(LossWeighting("uniform")(lam), torch.ones(5))
    w = LossWeighting("sigmoid", bias=1.0)(lam)
    assert w[2].item() == pytest.approx(0.5)  # sigmoid(b − λ) = ½ at λ = b
    assert (w[1:] < w[:-1]).all()  # emphasises noisy (low λ) times
    g = LossWeighting("gaussian", center=2.0, width=2.4)(lam)
    assert g[3].item() == pytest.approx(1.0)
    assert g[4].item() == pytest.approx(math.exp(-0.5))  # one width away
    with pytest.raises(EmverseError, match="weighting = 'edm' is unknown"):
        LossWeighting("edm")


def test_norms():
    out, target = torch.tensor([[1.0, -2.0]]), torch.zeros(1, 2)
    assert DiffusionObjective(norm="l2").elementwise(out, target).item() == pytest.approx(2.5)
    assert DiffusionObjective(norm="l1").elementwise(out, target).item() == pytest.approx(1.5)


def test_adaptive_sampler_starts_uniform_and_follows_the_loss():
    schedule = LogSNRSchedule(-10, 10, shape="linear")
    sampler = AdaptiveLogSNRSampler(bins=20, logsnr_min=-15, logsnr_max=15, decay=0.5)
    g = torch.Generator().manual_seed(0)
    t, importance = sampler.sample(20000, schedule, generator=g, dtype=torch.float64)
    assert sampler.range == (-10.0, 10.0)  # clipped to the schedule
    torch.testing.assert_close(importance, torch.ones_like(importance))
    lam = schedule.logsnr(t)
    assert abs(lam.mean().item()) < 0.15 and abs(lam.std().item() - 20 / math.sqrt(12)) < 0.1
    # a loss that lives only at λ in [−10, −5): bins there gain all the probability
    for _ in range(20):
        lam_batch = torch.linspace(-9.99, 9.99, 400, dtype=torch.float64)
        values = (lam_batch < -5).double()
        sampler.update(lam_batch, values)
    probs = sampler.probabilities()
    assert probs[:5].sum() > 0.9
    # and the importance weights keep the estimate unbiased: E_q[imp · f(λ)] = mean of f over U(−10, 10)
    t, importance = sampler.sample(200000, schedule, generator=g, dtype=torch.float64)
    lam = schedule.logsnr(t)
    estimate = (importance * lam**2).mean().item()
    assert estimate == pytest.approx(100 / 3, rel=0.03)  # ∫ λ² dλ / 20 over [−10, 10]


def test_adaptive_sampler_state_round_trip():
    schedule = CosineSchedule()
    a = AdaptiveLogSNRSampler(bins=8)
    a.sample(4, schedule)
    a.update(torch.tensor([-3.0, 2.0]), torch.tensor([5.0, 1.0], dtype=torch.float64))
    b = AdaptiveLogSNRSampler(bins=8)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.probabilities(), b.probabilities())
    assert a.range == b.range
    with pytest.raises(EmverseError, match="checkpoint has 8 bins"):
        AdaptiveLogSNRSampler(bins=9).load_state_dict(a.state_dict())
