"""NRMSE, calibration and sharpness on samples with a known answer."""

import math

import pytest
import torch
from emverse_cdi.evaluation import calibration, nrmse
from emverse_cdi.parameter_table import (
    NRMSE_MEAN_PREDICTOR,
    NRMSE_UNIFORM_SAMPLER,
    mgb2_parameter_space,
)


def test_nrmse_references_for_an_unconstrained_parameter():
    space = mgb2_parameter_space()
    g = torch.Generator().manual_seed(0)
    truth = space.sample_uniform(20000, generator=g)
    low, high = space.bounds()
    mean_pred = ((low + high) / 2).expand_as(truth)
    draws = space.sample_uniform(20000, generator=g)
    assert torch.allclose(nrmse(mean_pred, truth, space), torch.full((13,), NRMSE_MEAN_PREDICTOR,
                                                                      dtype=torch.float64), atol=0.005)
    assert torch.allclose(nrmse(draws, truth, space), torch.full((13,), NRMSE_UNIFORM_SAMPLER,
                                                                 dtype=torch.float64), atol=0.006)
    assert NRMSE_MEAN_PREDICTOR == pytest.approx(0.2887, abs=1e-4)
    assert NRMSE_UNIFORM_SAMPLER == pytest.approx(0.4082, abs=1e-4)


def test_exact_posteriors_are_calibrated_and_overconfident_ones_are_not():
    # truth ~ N(m, s²) and samples ~ N(m, s²): the samples are the exact posterior
    space = mgb2_parameter_space()
    g = torch.Generator().manual_seed(1)
    n, s = 2000, 200
    low, high = space.bounds()
    centre = space.sample_uniform(n, generator=g)
    scale = 0.05 * (high - low)
    truth = centre + scale * torch.randn(n, 13, generator=g, dtype=torch.float64)
    exact = centre[:, None] + scale * torch.randn(n, s, 13, generator=g, dtype=torch.float64)
    narrow = centre[:, None] + 0.3 * scale * torch.randn(n, s, 13, generator=g, dtype=torch.float64)
    good = calibration(exact, truth, space)
    bad = calibration(narrow, truth, space)
    assert float(good["error"].max()) < 0.03
    assert float(bad["error"].min()) > 0.2
    # sharpness of the central 90% interval of a Gaussian: 2·1.645·σ / range
    i90 = int(torch.argmin((good["levels"] - 0.9).abs()))
    assert float(good["sharpness"][i90].mean()) == pytest.approx(2 * 1.6449 * 0.05, rel=0.03)


def test_table_matches_bloch_cbed_parameter_space():
    bloch = pytest.importorskip("emverse_bloch.cbed")
    ours = mgb2_parameter_space()
    theirs = bloch.mgb2_parameter_space()
    assert ours.names == theirs.names
    assert ours.units == theirs.units
    for a, b in zip(ours.parameters, theirs.parameters, strict=True):
        assert math.isclose(a.low, b.low) and math.isclose(a.high, b.high)


def test_calibration_agrees_with_emverse_diffusion_uq():
    uq = pytest.importorskip("emverse_diffusion.metrics.uq")
    space = mgb2_parameter_space()
    g = torch.Generator().manual_seed(2)
    truth = space.sample_uniform(300, generator=g)
    samples = space.sample_uniform(300 * 40, generator=g).reshape(300, 40, 13)
    ours = calibration(samples, truth, space)
    low, high = space.bounds()
    torch.testing.assert_close(ours["error"], uq.calibration_error(samples, truth, 19))
    i90 = int(torch.argmin((ours["levels"] - 0.9).abs()))
    torch.testing.assert_close(ours["sharpness"][i90], uq.sharpness(samples, truth, 0.9, low, high))
    torch.testing.assert_close(nrmse(samples.mean(1), truth, space), uq.nrmse(samples, truth, low, high))
