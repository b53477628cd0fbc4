"""DPS guidance: weight schedules, the correction, the must-show with a trained prior, bad input."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse.noise import PoissonNoise
from emverse_diffusion.analytic import GaussianDiffusionPrior
from emverse_diffusion.guidance.dps import DPSGuidance
from emverse_diffusion.guidance.weights import AlphaWeight, ConstantWeight, ShiftedSigmoidWeight
from emverse_diffusion.samplers.ddpm import DDPMSampler
from emverse_diffusion.schedules import CosineSchedule


def test_weight_schedules_shapes_and_limits():
    schedule = CosineSchedule()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    const = ConstantWeight(0.7)(t, schedule)
    assert const.shape == t.shape and (const == 0.7).all()
    alpha = AlphaWeight(2.0, power=2.0)(t, schedule)
    torch.testing.assert_close(alpha, 2.0 * schedule.alpha(t) ** 2)
    assert alpha[0] > 1.99 and alpha[-1] < 1e-6  # grows as noise falls
    sig = ShiftedSigmoidWeight(scale=3.0, center=1.0, sharpness=2.0)(t, schedule)
    assert sig.shape == t.shape
    assert sig[-1].item() == pytest.approx(3.0, rel=1e-6)  # strong at high noise (λ = −15)
    assert sig[0].item() < 1e-10  # → 0 as sampling ends (λ = +15)
    assert (sig[1:] >= sig[:-1]).all()
    t_centre = schedule.t_from_logsnr(torch.tensor(1.0, dtype=torch.float64))
    assert ShiftedSigmoidWeight(3.0, 1.0, 2.0)(t_centre, schedule).item() == pytest.approx(1.5)
    with pytest.raises(EmverseError, match="sharpness = 0"):
        ShiftedSigmoidWeight(sharpness=0)


class _Scale(ForwardModel):
    def __init__(self, factor=2.0, out=3, noise=None):
        super().__init__(noise)
        self.factor, self.out = factor, out

    def forward(self, x):
        return self.factor * x[:, : self.out]


def test_correction_is_the_tweedie_scaled_likelihood_gradient():
    """For x̂₀ = x_t (identity denoiser) the correction is −w σ²/α · Aᵀ(A x̂₀ − y)/σ_y²."""
    schedule = CosineSchedule()
    model = _Scale(2.0, out=3)
    y = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    dps = DPSGuidance(ConstantWeight(0.3), noise_sigma=0.5).bind(model, y)
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    corrected = dps.correct(x_t, x_t * 1.0, t, schedule)
    alpha, sigma = schedule.alpha_sigma(t[0])
    expected = x_t.detach() - 0.3 * sigma**2 / alpha * 2.0 * (2.0 * x_t.detach() - y) / 0.25
    torch.testing.assert_close(corrected, expected)


def test_poisson_likelihood_gradient():
    model = _Scale(1.0, out=2, noise=PoissonNoise(100.0))
    y = torch.tensor([0.5, 0.2], dtype=torch.float64)
    dps = DPSGuidance(ConstantWeight(1.0), likelihood="poisson", tweedie=False).bind(model, y)
    x = torch.tensor([[0.4, 0.3]], dtype=torch.float64, requires_grad=True)
    corrected = dps.correct(x, x * 1.0, torch.tensor([0.5]), CosineSchedule())
    # d/dx Σ (D x − D y log(D x)) = D (1 − y/x)
    expected = x.detach() - 100.0 * (1 - y / x.detach())
    torch.testing.assert_close(corrected, expected)


def test_amplitude_likelihood_gradient_and_poisson_noise_level():
    """ℓ = ‖√(A x) − √y‖²/(2σ_a²) with σ_a = 1/(2√dose) for Poisson counts:
    dℓ/dx = (√x − √y)/(2√x) / σ_a² = 2·dose·(√x − √y)/√x for A = identity."""
    dose = 400.0
    model = _Scale(1.0, out=2, noise=PoissonNoise(dose))
    y = torch.tensor([0.5, 0.2], dtype=torch.float64)
    dps = DPSGuidance(ConstantWeight(1.0), likelihood="amplitude", tweedie=False).bind(model, y)
    x = torch.tensor([[0.4, 0.3]], dtype=torch.float64, requires_grad=True)
    corrected = dps.correct(x, x * 1.0, torch.tensor([0.5]), CosineSchedule())
    xd = x.detach()
    expected = xd - 2.0 * dose * (xd.sqrt() - y.sqrt()) / xd.sqrt()
    torch.testing.assert_close(corrected, expected)
    # and σ_a is the std of √(counts/dose) for Poisson counts (variance stabilisation)
    counts = torch.poisson(torch.full((200_000,), 0.3 * dose, dtype=torch.float64),
                           generator=torch.Generator().manual_seed(1))
    assert (counts / dose).sqrt().std().item() == pytest.approx(0.5 / math.sqrt(dose), rel=0.02)


def test_rms_normalisation_makes_the_weight_the_rms_step():
    """With normalize="rms" the correction has RMS = w per sample, whatever the gradient's scale,
    and points along the raw gradient."""
    model = _Scale(1e-4, out=3)
    y = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    raw = DPSGuidance(ConstantWeight(1.0), tweedie=False).bind(model, y).correct(x, x * 1.0, t, CosineSchedule())
    rms = DPSGuidance(ConstantWeight(0.25), tweedie=False, normalize="rms").bind(model, y)
    step = x.detach() - rms.correct(x, x * 1.0, t, CosineSchedule())
    torch.testing.assert_close(step.pow(2).mean(1).sqrt(), torch.full((3,), 0.25, dtype=torch.float64))
    raw_step = x.detach() - raw
    cos = (step * raw_step).sum(1) / (step.norm(dim=1) * raw_step.norm(dim=1))
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))
    with pytest.raises(EmverseError, match="normalize = 'unit'"):
        DPSGuidance(normalize="unit")


def test_observation_shape_mismatch_is_an_error():
    dps = DPSGuidance().bind(_Scale(out=3), torch.zeros(5))
    x = torch.zeros(2, 4, requires_grad=True)
    with pytest.raises(EmverseError, match=r"predicts observations of shape \(3,\).*bound observation has shape \(5,\)"):
        dps.correct(x, x * 1.0, torch.full((2,), 0.5), CosineSchedule())


def test_unbound_guidance_is_an_error():
    x = torch.zeros(2, 4, requires_grad=True)
    with pytest.raises(EmverseError, match="not bound"):
        DPSGuidance().correct(x, x * 1.0, torch.full((2,), 0.5), CosineSchedule())


def _dps_errors(prior, linear_problem, weight, n_obs=4, n=200, prior_mean=None):
    model, data_prior = linear_problem
    g = torch.Generator().manual_seed(20)
    x = data_prior.sample(n_obs, generator=g)
    y = model.simulate(x, generator=g)
    sampler = DDPMSampler(200)
    guided, unguided = [], []
    for i in range(n_obs):
        exact = data_prior.exact_posterior(model, y[i])
        dps = DPSGuidance(weight).bind(model, y[i])
        d = prior.sample(n, sampler=sampler, guidance=dps, generator=torch.Generator().manual_seed(i))
        if prior_mean is None:
            prior_mean = prior.sample(n, sampler=sampler, generator=torch.Generator().manual_seed(i)).double().mean(0)
        guided.append((d.double().mean(0) - exact.mean).norm())
        unguided.append((prior_mean - exact.mean).norm())
    return torch.stack(guided).mean().item(), torch.stack(unguided).mean().item()


@pytest.mark.slow  # same check as the trained-prior test below, with the exact denoiser
def test_dps_with_exact_gaussian_prior(linear_problem):
    prior = GaussianDiffusionPrior(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64),
                                   CosineSchedule())
    # unguided, this prior's draws average to its exact mean 0
    guided, unguided = _dps_errors(prior, linear_problem, ShiftedSigmoidWeight(1.0, 0.0, 1.0),
                                   prior_mean=torch.zeros(4, dtype=torch.float64))
    assert guided * 5 < unguided, (guided, unguided)


def test_dps_with_trained_unconditional_prior(unconditional_prior, linear_problem):
    """Must-show: a trained unconditional prior + DPS through the linear model moves the
    posterior mean ≥ 5× closer to the exact one than the unguided prior."""
    prior, _ = unconditional_prior
    guided, unguided = _dps_errors(prior, linear_problem, ShiftedSigmoidWeight(1.0, 0.0, 1.0))
    assert guided * 5 < unguided, (guided, unguided)
    assert math.isfinite(guided)
