"""The shipped recipes validate; the shipped model infers a posterior in seconds."""

import json
from pathlib import Path

import pytest
from emverse.errors import EmverseError
from emverse.recipe import load_recipe
from emverse.run import run_recipe

RECIPES = Path(__file__).parents[3] / "recipes"
#: the [prior] table swapped to the shipped regression baseline, as one --set
REGRESSION_PRIOR = ('prior={type = "cdi.regression", checkpoint = "builtin:regression-mgb2-small.safetensors", '
                    'depth = 10, width = 8, stem = "small", crop_size = 28, input_size = 28}')
NAMES = ("cbed-mgb2-cpu.toml", "cbed-mgb2-paper.toml", "cbed-mgb2-infer.toml", "cbed-mgb2-physics.toml")


@pytest.mark.parametrize("name", NAMES)
def test_recipes_validate(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.task.type.startswith("cdi.") or recipe.components["prior"].type.startswith("cdi.")


def test_paper_recipe_has_the_paper_architecture():
    recipe = load_recipe(RECIPES / "cbed-mgb2-paper.toml")
    prior = recipe.components["prior"].params
    assert (prior.encoder_depth, prior.token_dim, prior.n_layers, prior.n_heads, prior.ffn_dim) == (
        34, 256, 8, 8, 1024)
    # 320 px input, total stride 64 -> 5×5 = 25 vision tokens (appendix B.3)
    assert prior.input_size // 64 == 5
    opts = recipe.task.params
    assert (opts.n_train, opts.n_test, opts.epochs) == (1_000_000, 100_000, 1000)
    assert recipe.device == "cuda"


def test_shipped_model_infers_a_posterior(tmp_path):
    """The core infer task with the shipped CDI model and, as a [[compare]] method, the shipped
    regression: narrow tilts and thickness, and the regression's point in physical units (its
    own prediction of the observed pattern)."""
    pytest.importorskip("emverse_bloch")
    import torch
    from emverse.checkpoint import load_checkpoint
    from emverse.run import RunContext

    run = run_recipe(RECIPES / "cbed-mgb2-infer.toml", tmp_path / "run",
                     overrides=["options.n_samples=64"])
    m = json.loads((run / "metrics.json").read_text())
    # the trained model narrows tilt and thickness well below their prior widths
    # (uniform over mean ± half range: std = half range / √3)
    assert m["posterior_std/tilt_x"] < 0.5 * 0.2 / 3**0.5
    assert m["posterior_std/tilt_y"] < 0.5 * 0.2 / 3**0.5
    assert m["posterior_std/thickness"] < 0.6 * 1000.0 / 3**0.5
    assert (run / "figures" / "posterior.png").exists() and (run / "figures" / "ppc_0.png").exists()
    saved = load_checkpoint(run / "posterior.safetensors").tensors
    ctx = RunContext(load_recipe(RECIPES / "cbed-mgb2-infer.toml"), tmp_path / "ctx")
    expected = ctx.build("compare")[0].prior.predict_physical(saved["observation"].float())[0]
    # float32 network: equal to its precision (normalised units would be off by O(1) factors)
    torch.testing.assert_close(saved["compare/regression"][0], expected, rtol=1e-5, atol=0)
    assert m["compare/regression/thickness"] == pytest.approx(float(expected[-1]), rel=1e-5)


def test_shipped_models_beat_the_prior_mean_on_tilts_and_thickness(tmp_path):
    """Over 8 fresh noisy patterns both shipped models place tilts and thickness far better than
    the prior mean (NRMSE 1/√12 ≈ 0.289): the CDI posterior mean (measured 0.022/0.018 and 0.074)
    and the regression's point (0.044/0.045 and 0.150). Run with its BatchNorm layers in training
    mode (before session 15's fix of the infer task) the CDI mean's thickness was 0.33."""
    pytest.importorskip("emverse_bloch")
    run = run_recipe(RECIPES / "cbed-mgb2-infer.toml", tmp_path / "run",
                     overrides=["options.n_samples=32", "options.n_observations=8", "options.n_ppc=0"])
    m = json.loads((run / "metrics.json").read_text())
    for name in ("tilt_x", "tilt_y"):
        assert m[f"posterior/nrmse/{name}"] < 0.1 and m[f"compare/regression/nrmse/{name}"] < 0.15, name
    assert m["posterior/nrmse/thickness"] < 0.15 and m["compare/regression/nrmse/thickness"] < 0.25


def test_infer_rejects_a_truth_of_the_wrong_length(tmp_path):
    pytest.importorskip("emverse_bloch")
    with pytest.raises(EmverseError, match="options.truth has 3 values"):
        run_recipe(RECIPES / "cbed-mgb2-infer.toml", tmp_path / "run",
                   overrides=["options.truth=[1.0, 2.0, 3.0]"])


def test_paper_recipe_on_a_cpu_machine_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EmverseError, match="CUDA"):
        run_recipe(RECIPES / "cbed-mgb2-paper.toml", tmp_path / "run")


def test_physics_corrected_posterior_reproduces_the_pattern(tmp_path):
    """The demo recipe end to end at reduced settings: CDI proposal, Bloch likelihood,
    importance-resampled Laplace mixture. The corrected posterior must explain the pattern
    to its Poisson noise (reduced χ² near 1) and hold the truth (within 4 posterior std),
    where the CDI posterior alone does neither."""
    truth = [48.0, 56.0, 20.0, 47.0, 51.0, 20.0, -0.91, 0.63, 2.69, 2.94, -0.03, 0.15, 2600.0]
    run = run_recipe(RECIPES / "cbed-mgb2-physics.toml", tmp_path / "run",
                     overrides=[f"options.truth={truth}", "options.n_samples=48", "correction.n_starts=3",
                                "correction.proposals=256", "correction.max_iterations=20"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.7 < metrics["posterior_mean_chi2_reduced"] < 1.4
    z = abs(metrics["posterior_mean/thickness"] - 2600.0) / metrics["posterior_std/thickness"]
    assert z < 4.0
    assert metrics["posterior_std/thickness"] < 20.0  # Å: far sharper than the CDI posterior
    assert metrics["approximate_std/thickness"] > 5 * metrics["posterior_std/thickness"]
    assert metrics["mode_0/weight"] > 0.5 and "correction/ess" in metrics
    assert (run / "figures" / "ppc_0.png").exists()


def test_cbed_prior_swaps_to_the_regression_baseline_by_set_alone(tmp_path):
    """CBED inference's prior (CDI diffusion -> regression ResNet) is swapped by one --set of
    the [prior] table; the correction then starts from the regression's point estimate."""
    run = run_recipe(RECIPES / "cbed-mgb2-physics.toml", tmp_path / "run", overrides=[
        REGRESSION_PRIOR, "options.n_samples=8", "correction.n_starts=1", "correction.proposals=64",
        "correction.max_iterations=5", "correction.scan_points=32"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["approximate_std/thickness"] == 0.0  # a point estimate, repeated
    assert metrics["correction/n_starts"] == 1.0
    assert "posterior_mean_chi2_reduced" in metrics


def test_many_observations_report_the_explained_share(tmp_path):
    """Three patterns through the physics recipe (regression proposal, a short correction): the
    summary scores the whole set and says which share the posterior-mean patterns explain
    (reduced χ² < 2), the same share the per-pattern χ² metrics give."""
    run = run_recipe(RECIPES / "cbed-mgb2-physics.toml", tmp_path / "run", overrides=[
        REGRESSION_PRIOR, "options.n_observations=3", "options.n_samples=8", "options.n_ppc=0",
        "correction.n_starts=1", "correction.proposals=64", "correction.max_iterations=5",
        "correction.scan_points=32"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert "posterior/nrmse/thickness" in metrics and "posterior_mean_chi2_reduced_median" in metrics
    from emverse.likelihoods import PoissonLikelihood
    from emverse_bloch.cbed import BlochCBED
    from safetensors.torch import load_file

    saved = load_file(run / "posterior.safetensors")
    model = BlochCBED(structure="MgB2", detector_pixels=32, g_max=0.8)
    chi2, count = PoissonLikelihood(1000.0).chi2(model(saved["samples"].mean(1)), saved["observation"])
    share = float(((chi2 / (count - 13)) < 2.0).double().mean())
    assert metrics["explained_fraction"] == pytest.approx(share)



def test_a_prior_trained_on_another_parameter_space_is_refused(tmp_path):
    """The shipped CDI model (the paper's 13 parameters) on a forward model with the symmetry
    table: refused before sampling, naming both lists, instead of draws mapped to wrong units."""
    pytest.importorskip("emverse_bloch")
    with pytest.raises(EmverseError, match=r"\[prior\] CdiTransformerPrior was made for parameters .*Mg_U11"):
        run_recipe(RECIPES / "cbed-mgb2-infer.toml", tmp_path / "run",
                   overrides=["forward_model.parameter_table=symmetry"])
