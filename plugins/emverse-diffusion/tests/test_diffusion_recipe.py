"""End to end through the recipe runner: the core train task + its posterior check, the checkpoint
reused by the core infer task, mismatch error."""

import json
from pathlib import Path

import pytest
from emverse.errors import EmverseError
from emverse.run import run_recipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"

SMALL = [
    "options.steps=60", "options.batch_size=128", "options.validate_every=30", "options.checkpoint_every=30",
    "options.n_observations=6", "options.n_samples=40", "dataset.n_train=1024", "dataset.n_validation=128",
    "prior.hidden=32", "prior.depth=1", "sampler.steps=8",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion-recipe") / "train"
    return run_recipe(RECIPES / "diffusion-linear-gaussian.toml", out, overrides=SMALL)


def test_small_train_recipe_runs_end_to_end(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("train_loss", "validation_loss", "uq.calibration.calibration_error", "uq.nrmse.nrmse_mean",
                "uq.crps.crps", "uq.sbc.sbc_min_pvalue", "exact.mean_error_in_std", "exact.std_relative_error"):
        assert key in metrics, key
    assert metrics["steps"] == 60
    assert (trained_run / "model.safetensors").exists() and (trained_run / "model-resume.safetensors").exists()
    assert (trained_run / "figures" / "training_loss.png").exists()
    assert (trained_run / "report.html").exists()


def _posterior_recipe(tmp_path, checkpoint, hidden):
    """The core infer task on the trained checkpoint, with the train recipe's seed, forward model,
    dataset, sampler and check sizes (SMALL)."""
    text = f"""
schema_version = 1
name = "diffusion-posterior-from-checkpoint"
seed = 7
task = "infer"
dtype = "float32"
[options]
n_observations = 6
n_samples = 40
[forward_model]
type = "example.linear_gaussian"
dim_x = 4
dim_y = 6
noise_sigma = 0.3
[dataset]
type = "diffusion.simulated"
n_train = 1
n_validation = 0
[dataset.prior]
type = "example.gaussian"
dim = 4
[prior]
type = "diffusion.mlp"
dim = 4
condition_dim = 6
hidden = {hidden}
depth = 1
prediction = "v"
checkpoint = "{checkpoint}"
[prior.schedule]
type = "diffusion.cosine"
offset = 0.008
[sampler]
type = "diffusion.dpmpp_2m"
steps = 8
"""
    path = tmp_path / f"posterior-{hidden}.toml"
    path.write_text(text)
    return path


def test_checkpoint_reused_by_infer_reproduces_the_check(trained_run, tmp_path):
    """The infer task on the saved weights, with the same seed and [dataset], draws the same
    held-out observations and posterior samples as the train task's check: equal exact errors."""
    recipe = _posterior_recipe(tmp_path, trained_run / "model.safetensors", hidden=32)
    run = run_recipe(recipe, tmp_path / "post")
    metrics = json.loads((run / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    for key in ("exact.mean_error_in_std", "exact.std_relative_error", "posterior_mean_rmse"):
        assert metrics[key] == pytest.approx(trained[key], rel=1e-6), key


def test_checkpoint_recipe_mismatch_is_a_clear_error(trained_run, tmp_path):
    recipe = _posterior_recipe(tmp_path, trained_run / "model.safetensors", hidden=48)
    with pytest.raises(EmverseError, match="hidden: checkpoint 32, recipe 48.*set these in the recipe"):
        run_recipe(recipe, tmp_path / "bad")


def test_zero_sampler_steps_rejected_by_recipe_validation(tmp_path):
    from emverse.errors import RecipeError

    with pytest.raises(RecipeError, match="steps"):
        run_recipe(RECIPES / "diffusion-linear-gaussian.toml", tmp_path / "zero", overrides=["sampler.steps=0"])
