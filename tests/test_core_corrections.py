"""Posterior corrections (core.laplace, core.importance) on problems whose posterior is known.

* Linear forward model, Gaussian noise, uniform box prior far wider than the posterior:
  the posterior is Gaussian with mean (AᵀA)⁻¹Aᵀy and covariance σ²(AᵀA)⁻¹ (analytic).
* y = x² + noise in one dimension: two mirror modes at ±√y; with the box asymmetric the
  weights are known from the truncated masses; with it symmetric they are ½ each.
* Likelihood Fisher diagonals and χ² against their definitions.
"""

from __future__ import annotations

import math

import pytest
import torch
from emverse.builtin.corrections import ImportanceResampling, LaplaceMixture
from emverse.interfaces import ForwardModel
from emverse.likelihoods import GaussianLikelihood, PoissonLikelihood
from emverse.parameter_space import Parameter, ParameterSpace


class Linear(ForwardModel):
    def __init__(self, matrix, bound=5.0):
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.parameter_space = ParameterSpace([Parameter(f"x{i}", "1", -bound, bound)
                                               for i in range(matrix.shape[1])])

    def forward(self, x):
        return x @ self.matrix.T


class Square(ForwardModel):
    def __init__(self, low=-2.0, high=2.0):
        super().__init__()
        self.parameter_space = ParameterSpace([Parameter("x", "1", low, high)])

    def forward(self, x):
        return (x**2).expand(-1, 4)  # four independent looks at x²


def _linear_problem(seed=0, sigma=0.05):
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    model = Linear(matrix)
    truth = torch.tensor([[0.7, -1.2, 2.1]], dtype=torch.float64)
    likelihood = GaussianLikelihood(sigma)
    y = likelihood.sample(model(truth), gen)
    precision = matrix.T @ matrix / sigma**2
    cov = torch.linalg.inv(precision)
    mean = cov @ matrix.T @ y[0] / sigma**2
    return model, likelihood, y, mean, cov, gen


def test_default_jacobian_is_exact_for_a_linear_model_and_stays_in_the_box():
    """ForwardModel.jacobian's one-sided differences: the matrix of a linear model (to rounding),
    with the step taken inwards at the upper face (a model that refuses points outside its box
    still answers), in chunks of rows equal to one pass; x² gives 2x + its step at the face."""

    class Boxed(Linear):
        def forward(self, x):
            low, high = self.parameter_space.bounds(x.dtype)
            assert bool(((x >= low) & (x <= high)).all()), "a point outside the box"
            return super().forward(x)

    matrix = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Boxed(matrix)
    x = torch.tensor([[0.3, -1.0, 5.0], [5.0, 5.0, -5.0]], dtype=torch.float64)  # upper faces included
    y, jac = model.jacobian(x, chunk=3)
    torch.testing.assert_close(y, model(x))
    torch.testing.assert_close(jac, matrix.T.expand(2, 3, 5), rtol=1e-8, atol=1e-8)
    # chunked = one pass up to the forward pass's rounding (1e-16, which depends on the BLAS
    # kernel a batch size picks) amplified by 1/step = 1e6 in the difference quotient
    torch.testing.assert_close(model.jacobian(x)[1], jac, rtol=0, atol=1e-9)
    square = Square()
    _, slope = square.jacobian(torch.tensor([[0.5], [2.0]], dtype=torch.float64), step=1e-6)
    half = 2.0  # the box is [-2, 2]
    torch.testing.assert_close(slope[:, 0, 0], torch.tensor([1.0 + 1e-6 * half, 4.0 - 1e-6 * half],
                                                             dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_laplace_is_exact_for_a_linear_gaussian_problem():
    model, likelihood, y, mean, cov, gen = _linear_problem()
    # approximate draws: deliberately off (shifted, too broad)
    draws = mean + 0.5 + 0.3 * torch.randn(50, 3, generator=gen, dtype=torch.float64)
    post = LaplaceMixture(n_starts=3).correct(draws, model, likelihood, y, model.parameter_space,
                                              n_samples=20000, generator=gen)
    assert len(post.modes) == 1
    mode = post.modes[0]
    torch.testing.assert_close(mode.location, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(mode.covariance, cov, rtol=1e-4, atol=1e-9)
    sd = cov.diagonal().sqrt()
    assert ((post.samples.mean(0) - mean).abs() < 4 * sd / math.sqrt(20000)).all()
    assert ((post.samples.std(0) / sd - 1).abs() < 0.03).all()


def test_importance_resampling_keeps_the_exact_posterior_and_reports_ess():
    model, likelihood, y, mean, cov, gen = _linear_problem(seed=3)
    draws = mean + 0.2 * torch.randn(40, 3, generator=gen, dtype=torch.float64)
    post = ImportanceResampling(n_starts=2, proposals=4000).correct(
        draws, model, likelihood, y, model.parameter_space, n_samples=4000, generator=gen)
    # the proposal is the exact posterior here: every weight is equal, ESS = proposals
    assert post.diagnostics["ess_fraction"] > 0.99
    sd = cov.diagonal().sqrt()
    assert ((post.samples.mean(0) - mean).abs() < 5 * sd / math.sqrt(1000)).all()


def test_two_mirror_modes_are_both_found_with_their_weights():
    gen = torch.Generator().manual_seed(1)
    likelihood = GaussianLikelihood(0.02)
    # symmetric box: the modes at ±1 carry half the mass each
    model = Square()
    y = torch.ones(1, 4, dtype=torch.float64)
    draws = torch.tensor([[-0.9], [-1.2], [0.8], [1.1], [0.05]], dtype=torch.float64)
    post = ImportanceResampling(n_starts=4, proposals=4000).correct(
        draws, model, likelihood, y, model.parameter_space, n_samples=4000, generator=gen)
    assert len(post.modes) == 2
    locations = sorted(float(m.location[0]) for m in post.modes)
    assert locations == pytest.approx([-1.0, 1.0], abs=1e-4)
    for m in post.modes:
        assert m.weight == pytest.approx(0.5, abs=0.05)
    assert float((post.samples > 0).double().mean()) == pytest.approx(0.5, abs=0.05)
    # a draw-starved basin still counts by its evidence, not by how many draws fell there
    lopsided = torch.tensor([[-1.1]] + [[0.9 + 0.01 * i] for i in range(20)], dtype=torch.float64)
    post = LaplaceMixture(n_starts=2, separation=0.2).correct(
        lopsided, model, likelihood, y, model.parameter_space, n_samples=10, generator=gen)
    assert sorted(m.weight for m in post.modes) == pytest.approx([0.5, 0.5], abs=0.01)


def test_a_box_face_cuts_a_mode_s_weight():
    """Modes at ±1 with the box [-1.0, 2]: the mode at −1 sits on the face and keeps half its mass."""
    gen = torch.Generator().manual_seed(2)
    model = Square(low=-1.0, high=2.0)
    y = torch.ones(1, 4, dtype=torch.float64)
    draws = torch.tensor([[-0.95], [1.05]], dtype=torch.float64)
    post = LaplaceMixture(n_starts=2).correct(draws, model, GaussianLikelihood(0.02), y,
                                              model.parameter_space, n_samples=10, generator=gen)
    weights = {round(float(m.location[0])): m.weight for m in post.modes}
    assert weights[1] == pytest.approx(2 / 3, abs=0.02)
    assert weights[-1] == pytest.approx(1 / 3, abs=0.02)


def test_an_unconstrained_parameter_stays_spread_over_its_box():
    """x1 does not enter the prediction: its corrected draws spread over the box (no
    collapse onto a face or onto the start)."""
    matrix = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    model = Linear(matrix, bound=1.0)
    gen = torch.Generator().manual_seed(4)
    y = torch.tensor([[0.3, 0.6, 0.15]], dtype=torch.float64)
    draws = torch.tensor([[0.2, 0.1], [0.4, -0.2]], dtype=torch.float64)
    post = ImportanceResampling(n_starts=1, proposals=4000).correct(
        draws, model, GaussianLikelihood(0.01), y, model.parameter_space, n_samples=4000, generator=gen)
    free = post.samples[:, 1]
    assert float(free.std()) == pytest.approx(1 / math.sqrt(3), rel=0.1)  # uniform on [-1, 1]
    assert float((free.abs() > 0.999).double().mean()) < 0.01


def test_poisson_fisher_and_chi2_follow_their_definitions():
    likelihood = PoissonLikelihood(dose=500.0)
    pred = torch.tensor([[0.1, 0.2, 0.0]], dtype=torch.float64)
    obs = torch.tensor([[0.11, 0.19, 0.0]], dtype=torch.float64)
    fisher = likelihood.fisher_diagonal(pred, obs)
    torch.testing.assert_close(fisher[0, :2], torch.tensor([5000.0, 2500.0], dtype=torch.float64))
    assert float(fisher[0, 2]) == 0.0
    chi2, count = likelihood.chi2(pred, obs)
    expected = (55 - 50) ** 2 / 50 + (95 - 100) ** 2 / 100
    assert float(chi2) == pytest.approx(expected)
    assert float(count) == 2
    # a count where nothing is expected: the model cannot explain it
    chi2, _ = likelihood.chi2(pred, torch.tensor([[0.1, 0.2, 0.01]], dtype=torch.float64))
    assert math.isinf(float(chi2))
    gaussian = GaussianLikelihood(0.5)
    chi2, count = gaussian.chi2(pred, obs)
    assert float(chi2) == pytest.approx((0.01**2 + 0.01**2) / 0.25)
    assert float(count) == 3


class Banana(ForwardModel):
    """y = (x0, x1 + x0²): a curved posterior the Laplace mixture only approximates."""

    def __init__(self):
        super().__init__()
        self.parameter_space = ParameterSpace([Parameter("x0", "1", -3.0, 3.0), Parameter("x1", "1", -3.0, 6.0)])

    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 1] + x[:, 0] ** 2], dim=1)


def _quadrature_moments(model, likelihood, y, n=801):
    """Posterior mean and std on a fine grid over the box: exact to the grid's resolution."""
    low, high = model.parameter_space.bounds(torch.float64)
    a = torch.linspace(float(low[0]), float(high[0]), n, dtype=torch.float64)
    b = torch.linspace(float(low[1]), float(high[1]), n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)
    log_p = -likelihood.negative_log_likelihood(model(grid), y)
    w = torch.exp(log_p - log_p.max())
    w = w / w.sum()
    mean = (w[:, None] * grid).sum(0)
    return mean, ((w[:, None] * (grid - mean) ** 2).sum(0)).sqrt()


def test_importance_resampling_matches_the_exact_curved_posterior_and_nuts():
    model, likelihood = Banana(), GaussianLikelihood(0.4)
    y = torch.tensor([[1.0, 1.5]], dtype=torch.float64)
    mean, sd = _quadrature_moments(model, likelihood, y)
    gen = torch.Generator().manual_seed(7)
    draws = torch.tensor([[1.0, 0.5], [0.8, 0.9]], dtype=torch.float64)
    post = ImportanceResampling(n_starts=2, proposals=20000, scan_points=0).correct(
        draws, model, likelihood, y, model.parameter_space, n_samples=20000, generator=gen)
    laplace = LaplaceMixture(n_starts=2, scan_points=0).correct(
        draws, model, likelihood, y, model.parameter_space, n_samples=20000, generator=gen).samples
    # the posterior is curved: the plain Laplace mixture is visibly off ...
    assert float(((laplace.mean(0) - mean).abs() / sd).max()) > 0.15
    # ... importance resampling under the exact likelihood is not
    assert ((post.samples.mean(0) - mean).abs() < 0.05 * sd).all()
    assert ((post.samples.std(0) / sd - 1).abs() < 0.05).all()
    # the NUTS reference agrees within its own Monte Carlo error
    pytest.importorskip("pyro")
    from emverse.reference import nuts_reference

    reference = nuts_reference(model, likelihood, y, model.parameter_space,
                               torch.tensor([[1.0, 0.5], [0.5, 1.2]], dtype=torch.float64),
                               num_samples=800, warmup_steps=300, seed=3)
    assert bool((reference.r_hat < 1.01).all()), reference.r_hat
    ref = reference.flat()
    assert ((ref.mean(0) - mean).abs() < 0.2 * sd).all()
    assert ((ref.std(0) / sd - 1).abs() < 0.15).all()
