"""Thickness models: architecture, ranges, and learning a known profile (ML check with a known answer)."""


import numpy as np
import pytest
import torch
from emverse_ed3d.synthetic import thickness_profile
from emverse_ed3d.thickness import (
    FixedThickness,
    SingleThickness,
    ThicknessNN,
    build_thickness_model,
)
from torch import nn


def test_architecture_and_output_range():
    model = ThicknessNN(100.0, 900.0, 400.0, generator=torch.Generator().manual_seed(0)).double()
    layers = list(model.net)
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(1, 64), (64, 64), (64, 2)]
    assert sum(isinstance(m, nn.Tanh) for m in layers) == 2
    theta = torch.linspace(-1, 1, 50, dtype=torch.float64)
    mean, std = model.distribution(theta)
    assert torch.allclose(mean, torch.full_like(mean, 400.0), atol=15.0)  # starts flat near t_init
    with torch.no_grad():
        model.net[-1].bias[0] = 50.0
        model.net[-1].bias[1] = -50.0
    mean, std = model.distribution(theta)
    assert mean.max() <= 900.0 and mean.min() >= 100.0
    assert std.min() >= 1.0 and std.max() <= 200.0
    draws = model.sample(theta, 4, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (4, 50)


def test_bad_range_is_refused():
    with pytest.raises(ValueError, match="thickness range"):
        ThicknessNN(500.0, 100.0)


@pytest.mark.parametrize("quadratic", [False, True])
def test_thickness_nn_learns_a_known_sinusoidal_profile(quadratic):
    """Regression on t(θ) = 400 + 150 sin(2πu): the network must fit it to < 5 Å RMS."""
    theta = torch.linspace(-0.85, 0.85, 60, dtype=torch.float64)
    truth = torch.as_tensor(thickness_profile("sinusoidal", theta.numpy(), mean_angstrom=400.0,
                                              amplitude_angstrom=150.0, rng=np.random.default_rng(0)))
    model = ThicknessNN(50.0, 1000.0, 400.0, quadratic_prior=quadratic, theta_scale_rad=0.85,
                        generator=torch.Generator().manual_seed(0)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(600):
        opt.zero_grad()
        loss = ((model(theta) - truth) ** 2).mean()
        loss.backward()
        opt.step()
    rms = loss.sqrt().item()
    assert rms < 5.0
    if quadratic:
        assert torch.exp(model.log_a).item() > 0


def test_single_and_fixed_thickness():
    theta = torch.zeros(7, dtype=torch.float64)
    single = SingleThickness(321.0)
    assert torch.allclose(single(theta), torch.full((7,), 321.0, dtype=torch.float64))
    assert [p.numel() for p in single.parameters()] == [1]
    kin = build_thickness_model("kinematical", t_min=1, t_max=2, t_init=1, quadratic_prior=False,
                                theta_scale_rad=1.0, generator=None)
    assert isinstance(kin, FixedThickness) and kin(theta)[0].item() == 10.0
    assert list(kin.parameters()) == []
    with pytest.raises(ValueError, match="unknown"):
        build_thickness_model("wedge", t_min=1, t_max=2, t_init=1, quadratic_prior=False,
                              theta_scale_rad=1.0, generator=None)
