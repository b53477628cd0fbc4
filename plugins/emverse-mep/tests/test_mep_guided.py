"""Guided sampling as the MEP recipes configure it: emverse-diffusion's DPM-Solver++(2M) SDE on
the paper's σ-ladder and DPS with the amplitude likelihood and RMS-normalised gradient,
checked on a volume prior whose denoiser is known exactly."""

from pathlib import Path

import pytest
import torch
from emverse.errors import RecipeError
from emverse.interfaces import DiffusionPrior, ForwardModel
from emverse.recipe import load_recipe
from emverse.run import RunContext
from emverse_diffusion.guidance.dps import DPSGuidance
from emverse_diffusion.guidance.weights import ShiftedSigmoidWeight
from emverse_diffusion.samplers.dpmpp_2m import DPMSolverPP2MSDESampler
from emverse_diffusion.schedules import LogSNRSchedule
from emverse_mep.reconstruct import guidance_variants

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


class GaussianVolumePrior(DiffusionPrior):
    """x₀ ~ N(μ, s²) per voxel, on the schedule of the CPU recipe's UNet (λ ∈ [−14, 10]):
    the exact clean estimate is x̂₀ = (α s² x_t + σ² μ)/(α² s² + σ²)."""

    def __init__(self, mean, std, shape=(2, 8, 8)):
        super().__init__()
        self.mean, self.std = mean, std
        self.event_shape = shape
        self.schedule = LogSNRSchedule(-14.0, 10.0, shape="linear")
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def denoise(self, x_t, t, condition=None):
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        alpha, sigma = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        s2 = self.std**2
        return (alpha * s2 * x_t + sigma**2 * self.mean) / (alpha**2 * s2 + sigma**2) + 0 * self.dummy


class Square(ForwardModel):
    """y = x² per voxel, laid out as (B, n, 1, 1) 'patterns'."""

    def forward(self, x):
        return (x**2).reshape(x.shape[0], -1, 1, 1)


def recipe_sampler(steps):
    return DPMSolverPP2MSDESampler(steps=steps, eta=1.0, spacing="polyexponential", rho=1.0,
                                   sigma_min=0.1, sigma_max=800.0)


@pytest.mark.parametrize("steps", [25, 60])
def test_recipe_sampler_follows_a_gaussian_volume_prior(steps):
    prior = GaussianVolumePrior(mean=1.5, std=0.5)
    x = recipe_sampler(steps).sample(prior, (40, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    assert float(x.mean()) == pytest.approx(1.5, abs=0.03)
    assert float(x.std()) == pytest.approx(0.5, rel=0.08)


def test_amplitude_dps_pulls_draws_to_the_measurement():
    prior = GaussianVolumePrior(mean=0.0, std=1.0, shape=(1, 4, 4))
    target = torch.full((8, 1, 4, 4), 2.0, dtype=torch.float64)
    y = Square()(target)
    sampler = recipe_sampler(40)
    free = sampler.sample(prior, target.shape, generator=torch.Generator().manual_seed(1))
    dps = DPSGuidance(ShiftedSigmoidWeight(0.3, 10.0, 1.0), likelihood="amplitude", normalize="rms",
                      tweedie=False).bind(Square(), y)
    guided = sampler.sample(prior, target.shape, guidance=dps, generator=torch.Generator().manual_seed(1))
    err_free = float((free.abs() - 2.0).abs().mean())
    err_guided = float((guided.abs() - 2.0).abs().mean())
    assert err_guided < 0.25 * err_free


def test_ablation_keeps_the_recipe_guidance_and_its_peak_weight(tmp_path):
    # check_files=False: the recipe reads the outputs of the mep-cpu-data/-train runs
    recipe = load_recipe(RECIPES / "mep-cpu.toml", overrides=["guidance.schedule.scale=0.7"], check_files=False)
    ctx = RunContext(recipe, tmp_path)
    variants = guidance_variants(ctx, ablation=True)
    assert list(variants) == ["shifted_sigmoid", "alpha", "constant"]
    for spec in variants.values():
        assert spec.type == "diffusion.dps"
        assert spec.params.likelihood == "amplitude" and spec.params.normalize == "rms"
        assert spec.params.schedule.params.scale == 0.7
    assert variants["alpha"].params.schedule.type == "diffusion.alpha"
    assert variants["constant"].params.schedule.type == "diffusion.constant"
    assert list(guidance_variants(ctx, ablation=False)) == ["shifted_sigmoid"]


def test_recipe_without_sampler_or_guidance_is_refused(tmp_path):
    text = (RECIPES / "mep-cpu-reconstruct.toml").read_text()
    head, _, tail = text.partition("[sampler]")
    stripped = head + "[forward_model]" + tail.partition("[forward_model]")[2]
    path = tmp_path / "no-guidance.toml"
    path.write_text(stripped)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "$.sampler" in message and "$.guidance" in message and "mep.reconstruct" in message

