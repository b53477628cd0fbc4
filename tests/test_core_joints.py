"""The joints of the core workflow: likelihoods, parametrizations, the one refiner loop, the
refine and evaluate tasks, and the validation-time check that components fit each other."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from emverse.builtin.parametrizations import ParameterVector
from emverse.builtin.refiners import AdamRefiner, LBFGSRefiner
from emverse.components import Component
from emverse.errors import EmverseError, RecipeError
from emverse.hookspecs import hookimpl
from emverse.interfaces import Parametrization
from emverse.likelihoods import (
    AmplitudeLikelihood,
    GaussianLikelihood,
    ModelLikelihood,
    NCCLikelihood,
    Observation,
    PoissonLikelihood,
    RwLikelihood,
    WeightedIntensityLikelihood,
)
from emverse.noise import GaussianNoise, PoissonNoise
from emverse.recipe import load_recipe
from emverse.run import run_recipe
from emverse_example.linear import LinearGaussian


# ------------------------------------------------------------------ likelihoods
def test_gaussian_and_poisson_match_the_noise_models_up_to_a_constant():
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(3, 5, generator=gen, dtype=torch.float64) + 0.1
    a = torch.rand(3, 5, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(3, 5, generator=gen, dtype=torch.float64) + 0.1
    for likelihood, noise in ((GaussianLikelihood(0.3), GaussianNoise(0.3)),
                              (PoissonLikelihood(50.0), PoissonNoise(50.0))):
        # differences of ℓ between two predictions are differences of −log p: constants cancel
        ours = likelihood.negative_log_likelihood(a, y) - likelihood.negative_log_likelihood(b, y)
        theirs = -noise.log_likelihood(a, y) + noise.log_likelihood(b, y)
        torch.testing.assert_close(ours, theirs)


def test_amplitude_uses_the_variance_stabilised_sigma_for_counts():
    assert AmplitudeLikelihood(dose=100.0).amplitude_sigma == pytest.approx(0.05)
    y = torch.tensor([[4.0, 9.0]])
    pred = torch.tensor([[1.0, 4.0]])
    # (√1 − √4)² + (√4 − √9)² = 2, / (2 · 0.05²)
    assert float(AmplitudeLikelihood(dose=100.0)(pred, y)) == pytest.approx(2 / (2 * 0.05**2), rel=1e-9)


def test_weighted_intensity_is_half_chi2_and_needs_sigma():
    y = Observation(torch.tensor([[10.0, 20.0]]), sigma=torch.tensor([[2.0, 5.0]]))
    pred = torch.tensor([[12.0, 10.0]])
    assert float(WeightedIntensityLikelihood()(pred, y)) == pytest.approx(0.5 * (1.0 + 4.0))
    with pytest.raises(EmverseError, match="needs σ"):
        WeightedIntensityLikelihood()(pred, torch.tensor([[10.0, 20.0]]))


def test_rw_is_the_squared_agreement_factor():
    g = torch.tensor([[1.0, -1.0, 2.0]])
    assert float(RwLikelihood()(g, g)) == 0.0
    assert math.sqrt(float(RwLikelihood()(torch.zeros_like(g), g))) == pytest.approx(1.0)


def test_ncc_ignores_scale_and_offset_but_not_shape():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 8, 8, generator=gen, dtype=torch.float64)
    assert float(NCCLikelihood()(3.0 * image + 7.0, image)) == pytest.approx(0.0, abs=1e-12)
    assert float(NCCLikelihood()(image.flip(-1), image)) > 0.05


def test_observation_of_the_wrong_shape_is_refused():
    with pytest.raises(EmverseError, match="observation has shape"):
        GaussianLikelihood()(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------- refiners on the joints
def _linear_problem(seed=0):
    model = LinearGaussian(dim_x=4, dim_y=8, noise_sigma=0.05)
    truth = torch.tensor([[0.5, -1.0, 1.2, 0.3]], dtype=torch.float64)
    y = model.simulate(truth, generator=torch.Generator().manual_seed(seed))
    return model, truth, y


@pytest.mark.parametrize("refiner", [AdamRefiner(steps=400, lr=0.05), LBFGSRefiner(steps=50)])
def test_refiners_reach_the_least_squares_solution(refiner):
    model, truth, y = _linear_problem()
    start = torch.zeros(1, 4, dtype=torch.float64)
    parametrization = ParameterVector().start_at(model, start)
    result = refiner.run(parametrization, model, GaussianLikelihood(0.05), y)
    least_squares = torch.linalg.lstsq(model.matrix, y[0]).solution
    torch.testing.assert_close(parametrization()[0], least_squares, atol=2e-3, rtol=0)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert set(result.parameters) == {"x0", "x1", "x2", "x3"}


def test_free_subset_keeps_the_others_at_the_start():
    model, truth, y = _linear_problem()
    start = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    parametrization = ParameterVector(free=("x1",)).start_at(model, start)
    LBFGSRefiner(steps=30).run(parametrization, model, GaussianLikelihood(0.05), y)
    refined = parametrization().detach()[0]
    assert refined[[0, 2, 3]].tolist() == pytest.approx([0.1, 0.3, 0.4])
    assert abs(float(refined[1]) - 0.2) > 1e-3


def test_unknown_free_parameter_names_both_tables():
    model, _, _ = _linear_problem()
    with pytest.raises(EmverseError, match=r"\[parametrization\].*\[forward_model\]"):
        ParameterVector(free=("thickness",)).start_at(model, torch.zeros(1, 4, dtype=torch.float64))


class _TwoGroups(Parametrization):
    """Two scalars with their own learning-rate scale; one of them poisons its gradient."""

    def __init__(self, poison=False):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.poison = poison

    def parameter_groups(self):
        return [{"name": "a", "params": [self.a], "lr_scale": 1.0},
                {"name": "b", "params": [self.b], "lr_scale": 0.0}]

    def forward(self):
        b = self.b * torch.tensor(float("nan")) if self.poison else self.b
        return torch.cat([self.a, b.nan_to_num(0.0) if self.poison else b])[None]


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


def test_parameter_groups_have_their_own_rates_and_bad_gradients_are_zeroed():
    target = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    p = _TwoGroups()
    AdamRefiner(steps=200, lr=0.05).run(p, _Identity(), GaussianLikelihood(1.0), target)
    assert float(p.a) == pytest.approx(1.0, abs=0.05)
    assert float(p.b) == 0.0  # lr_scale 0: this group never moves
    poisoned = _TwoGroups(poison=True)
    result = AdamRefiner(steps=5, lr=0.05).run(poisoned, _Identity(), GaussianLikelihood(1.0), target)
    assert sum(result.history["bad_gradients"]) == 5  # one NaN gradient element per step
    assert math.isfinite(float(poisoned.a)) and float(poisoned.b) == 0.0


def test_adam_stops_early_when_the_loss_stalls():
    model, _, y = _linear_problem()
    p = ParameterVector().start_at(model, torch.zeros(1, 4, dtype=torch.float64))
    result = AdamRefiner(steps=5000, lr=0.05, tolerance=1e-9, patience=10).run(
        p, model, GaussianLikelihood(0.05), y)
    assert result.iterations < 5000 and result.message == "loss stalled"


def test_model_likelihood_is_the_forward_models_noise():
    model, truth, y = _linear_problem()
    pred = model(truth)
    torch.testing.assert_close(ModelLikelihood(model).negative_log_likelihood(pred, y),
                               -model.log_likelihood(pred, y))


# ------------------------------------------------------------- recipes end to end
def _recipe(tmp_path, body: str, name="joints"):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return path


REFINE = """
    schema_version = 1
    name = "joints-refine"
    seed = 5
    task = "refine"
    dtype = "float64"
    [forward_model]
    type = "example.linear_gaussian"
    dim_x = 3
    dim_y = 6
    noise_sigma = 0.05
    [likelihood]
    type = "core.gaussian"
    sigma = 0.05
    [parametrization]
    type = "core.parameter_vector"
    [refiner]
    type = "core.lbfgs"
    steps = 40
"""


def test_refine_recipe_on_the_joints_and_refiner_swap(tmp_path):
    recipe = _recipe(tmp_path, REFINE)
    lbfgs = run_recipe(recipe, out_dir=tmp_path / "lbfgs", progress=False)
    adam = run_recipe(recipe, out_dir=tmp_path / "adam", overrides=["refiner.type=core.adam",
                                                                     "refiner.steps=600",
                                                                     "refiner.lr=0.02"],
                      progress=False)
    m_lbfgs = json.loads((lbfgs / "metrics.json").read_text())
    m_adam = json.loads((adam / "metrics.json").read_text())
    for m in (m_lbfgs, m_adam):
        assert m["refined_rmse"] < 0.1 < m["start_rmse"]
    # the same observation and start: both find the same minimum
    assert m_adam["refined_rmse"] == pytest.approx(m_lbfgs["refined_rmse"], abs=5e-3)


EVALUATE = """
    schema_version = 1
    name = "joints-evaluate"
    seed = 9
    task = "evaluate"
    dtype = "float64"
    [options]
    n_observations = 12
    start_offset = 0.5
    n_boot = 500
    [forward_model]
    type = "example.linear_gaussian"
    dim_x = 4
    dim_y = 6
    noise_sigma = 0.3
    [[compare]]
    type = "core.refine"
    label = "lbfgs"
    [compare.refiner]
    type = "core.lbfgs"
    steps = 30
    [[compare]]
    type = "core.refine"
    label = "adam_short"
    [compare.refiner]
    type = "core.adam"
    steps = 3
    lr = 0.001
    [[compare]]
    type = "core.infer"
    label = "exact_posterior"
    n_samples = 400
    [compare.prior]
    type = "example.gaussian"
    dim = 4
"""


def test_evaluate_compares_methods_with_a_paired_bootstrap(tmp_path):
    run = run_recipe(_recipe(tmp_path, EVALUATE), out_dir=tmp_path / "eval", progress=False)
    m = json.loads((run / "metrics.json").read_text())
    # 3 tiny Adam steps barely leave the start: L-BFGS is better, and the interval says so
    assert m["paired.lbfgs_minus_adam_short"] < 0
    assert m["paired.lbfgs_minus_adam_short_high"] < 0
    assert m["paired.lbfgs_minus_adam_short_p"] < 0.05
    # the exact posterior mean (with its N(0, 1) prior) is a shrunk least squares: both are sane
    assert m["exact_posterior.normalised_rmse"] < m["adam_short.normalised_rmse"]
    assert {"paired.lbfgs_minus_exact_posterior_low", "lbfgs.normalised_mse"} <= set(m)


# --------------------------------------------------- components that do not fit
MISMATCH_PARAMS = """
import attrs
from typing import ClassVar


@attrs.frozen
class GrModelParams:
    output: ClassVar[str] = "pdf"
    takes: ClassVar[str] = "structure"
"""


class _Mismatched:
    @hookimpl
    def emverse_components(self):
        yield Component("forward_model", "test.gr_model", "emverse_example.linear:LinearGaussian",
                        "joints_mismatch_params:GrModelParams")


def test_components_that_do_not_fit_are_refused_at_validation(tmp_path, emverse_plugin, monkeypatch):
    (tmp_path / "joints_mismatch_params.py").write_text(MISMATCH_PARAMS)
    monkeypatch.syspath_prepend(str(tmp_path))
    emverse_plugin(_Mismatched(), name="mismatch")
    body = """
        schema_version = 1
        name = "mismatch"
        seed = 1
        task = "refine"
        [forward_model]
        type = "test.gr_model"
        [likelihood]
        type = "core.poisson"
        [parametrization]
        type = "core.parameter_vector"
        [refiner]
        type = "core.adam"
    """
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, body, "mismatch"))
    text = str(err.value)
    assert "$.likelihood" in text and "'core.poisson' scores intensity" in text and "predicts pdf" in text
    assert "$.parametrization" in text and "takes a structure" in text
    # a likelihood for any prediction fits the same model
    ok = body.replace("core.poisson", "core.rw").replace(
        '[parametrization]\n        type = "core.parameter_vector"\n', "")
    load_recipe(_recipe(tmp_path, ok, "fits"))


def test_shipped_models_declare_what_they_predict(tmp_path):
    """A Poisson likelihood on the linear model's real-valued output is refused; on the Bloch
    CBED pattern (intensities) it is accepted."""
    base = """
        schema_version = 1
        name = "declared"
        seed = 1
        task = "refine"
        [forward_model]
        type = "MODEL"
        [likelihood]
        type = "core.poisson"
        [refiner]
        type = "core.adam"
    """
    with pytest.raises(RecipeError, match=r"predicts any"):
        load_recipe(_recipe(tmp_path, base.replace("MODEL", "example.linear_gaussian"), "linear"))
    load_recipe(_recipe(tmp_path, base.replace("MODEL", "bloch.cbed"), "cbed"))
