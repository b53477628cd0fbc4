"""cdi.transformer / cdi.regression: the ε → x₀ algebra, checkpoints and bad input."""

import pytest
import torch
from emverse.errors import EmverseError
from emverse.parameter_space import Parameter, ParameterSpace
from emverse_cdi.parameter_table import mgb2_parameter_space
from emverse_cdi.prior import CdiTransformerPrior, RegressionPrior


def test_denoise_inverts_the_forward_noising_when_noise_is_known(tiny_prior_kwargs, patterns):
    prior = CdiTransformerPrior(**tiny_prior_kwargs).eval()
    x0 = torch.rand(3, 13) * 1.6 - 0.8
    eps = torch.randn(3, 13)
    t = torch.full((3,), 0.4)
    alpha, sigma = prior.schedule.alpha_sigma(t.double())
    x_t = alpha.float()[:, None] * x0 + sigma.float()[:, None] * eps
    # replace the network by an oracle that returns the true noise
    prior.predict_noise = lambda x, tt, c: eps
    torch.testing.assert_close(prior.denoise(x_t, t, prior.prepare(patterns)), x0)


def test_integer_step_maps_grid_times_to_ddpm_steps(tiny_prior_kwargs):
    prior = CdiTransformerPrior(**tiny_prior_kwargs)
    t = torch.tensor([1 / 50, 0.5, 1.0], dtype=torch.float32)
    assert prior.integer_step(t).tolist() == [1, 25, 50]


def test_vision_tokens_are_cached_per_condition_tensor(tiny_prior_kwargs, patterns):
    prior = CdiTransformerPrior(**tiny_prior_kwargs).eval()
    images = prior.prepare(patterns)
    calls = []
    original = prior.network.encode
    prior.network.encode = lambda im: calls.append(1) or original(im)
    with torch.no_grad():
        for _ in range(3):
            prior.denoise(torch.zeros(3, 13), torch.full((3,), 0.5), images)
    assert len(calls) == 1
    images.mul_(2.0)  # an in-place change must invalidate the cache
    with torch.no_grad():
        prior.denoise(torch.zeros(3, 13), torch.full((3,), 0.5), images)
    assert len(calls) == 2


def test_checkpoint_round_trip_and_mismatches(tmp_path, tiny_prior_kwargs, tiny_regression_kwargs,
                                              patterns):
    torch.manual_seed(0)
    prior = CdiTransformerPrior(**tiny_prior_kwargs).eval()
    prior.pattern_shape = (20, 20)
    prior.intensity_scale.fill_(0.3)
    path = prior.save(tmp_path / "cdi.safetensors")
    torch.manual_seed(1)
    loaded = CdiTransformerPrior(checkpoint=str(path), **tiny_prior_kwargs).eval()
    x = torch.zeros(3, 13)
    t = torch.full((3,), 0.5)
    torch.testing.assert_close(loaded.denoise(x, t, loaded.prepare(patterns)),
                               prior.denoise(x, t, prior.prepare(patterns)))
    assert float(loaded.intensity_scale) == pytest.approx(0.3)
    # patterns of another size than the training patterns
    with pytest.raises(EmverseError, match="trained on 20×20"):
        loaded.prepare(torch.rand(2, 24, 24))
    with pytest.raises(EmverseError, match="NaN"):
        bad = patterns.clone()
        bad[0, 0, 0] = float("nan")
        loaded.prepare(bad)
    # architecture mismatch names the field
    with pytest.raises(EmverseError, match="token_dim"):
        CdiTransformerPrior(checkpoint=str(path), **(tiny_prior_kwargs | {"token_dim": 32}))
    # a regression checkpoint is not a CDI model
    reg = RegressionPrior(**tiny_regression_kwargs)
    reg_path = reg.save(tmp_path / "reg.safetensors")
    with pytest.raises(EmverseError, match="cdi.regression"):
        CdiTransformerPrior(checkpoint=str(reg_path), **tiny_prior_kwargs)
    # another parameter space
    other = ParameterSpace([Parameter("a", "Å", 0, 1)] + list(mgb2_parameter_space().parameters[1:]))
    with pytest.raises(EmverseError, match="parameters"):
        CdiTransformerPrior(checkpoint=str(path), parameter_space=other, **tiny_prior_kwargs)


def test_regression_is_a_point_mass(tiny_regression_kwargs, patterns):
    reg = RegressionPrior(**tiny_regression_kwargs).eval()
    draws = reg.sample(4, patterns)
    assert draws.shape == (3, 4, 13)
    torch.testing.assert_close(draws[:, 0], draws[:, 3])
    torch.testing.assert_close(draws[:, 0], reg.predict(patterns))


def test_crop_larger_than_pattern_is_a_clear_error(tiny_prior_kwargs):
    prior = CdiTransformerPrior(**tiny_prior_kwargs)
    with pytest.raises(EmverseError, match="smaller than crop_size"):
        prior.prepare(torch.rand(1, 12, 12))
    with pytest.raises(EmverseError, match="input_size"):
        CdiTransformerPrior(**(tiny_prior_kwargs | {"input_size": 32}))


def test_shipped_checkpoint_name_is_checked():
    from emverse_cdi.prior import resolve_checkpoint

    with pytest.raises(EmverseError, match="no shipped model"):
        resolve_checkpoint("builtin:nope.safetensors")
