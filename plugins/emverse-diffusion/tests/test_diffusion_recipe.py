"""End to end through the recipe runner: train + posterior check, reuse of the checkpoint, mismatch error."""

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
    assert (trained_run / "figures" / "loss.png").exists()
    assert (trained_run / "report.html").exists()


def _posterior_recipe(tmp_path, checkpoint, hidden):
    text = f"""
schema_version = 1
name = "diffusion-posterior-from-checkpoint"
seed = 3
task = "diffusion.posterior"
[options]
n_observations = 4
n_samples = 30
[forward_model]
type = "example.linear_gaussian"
[dataset]
type = "diffusion.simulated"
n_train = 1
n_validation = 0
[dataset.prior]
type = "example.gaussian"
[prior]
type = "diffusion.mlp"
dim = 4
condition_dim = 6
hidden = {hidden}
depth = 1
checkpoint = "{checkpoint}"
[sampler]
type = "diffusion.ddim"
steps = 10
"""
    path = tmp_path / f"posterior-{hidden}.toml"
    path.write_text(text)
    return path


def test_checkpoint_reused_by_posterior_task(trained_run, tmp_path):
    recipe = _posterior_recipe(tmp_path, trained_run / "model.safetensors", hidden=32)
    run = run_recipe(recipe, tmp_path / "post")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["exact.std_relative_error"] < 10  # finite, sensible numbers from the loaded weights


def test_checkpoint_recipe_mismatch_is_a_clear_error(trained_run, tmp_path):
    recipe = _posterior_recipe(tmp_path, trained_run / "model.safetensors", hidden=48)
    with pytest.raises(EmverseError, match="hidden: checkpoint 32, recipe 48.*set these in the recipe"):
        run_recipe(recipe, tmp_path / "bad")


def test_zero_sampler_steps_rejected_by_recipe_validation(tmp_path):
    from emverse.errors import RecipeError

    with pytest.raises(RecipeError, match="steps"):
        run_recipe(RECIPES / "diffusion-linear-gaussian.toml", tmp_path / "zero", overrides=["sampler.steps=0"])
