"""The CPU recipes end to end at toy size: dataset → train → evaluate / reconstruct,
and the bad-input errors of the reconstruction tasks."""

from pathlib import Path

import pytest
import torch
from emverse.errors import EmverseError
from emverse.run import read_metrics, run_recipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("mep")
    data = root / "data"
    run_recipe(RECIPES / "mep-cpu-dataset.toml", root / "ds", overrides=[
        f"dataset.output={data}", "dataset.n_train_materials=3", "dataset.n_test_materials=2",
        "dataset.n_val_materials=1",
        "dataset.train_shape=[4, 16, 16]", "dataset.test_shape=[4, 16, 16]", "dataset.chunk_size=4",
        "dataset.scale_pilot=4",
    ])
    prior_overrides = ["prior.event_shape=[4, 16, 16]", "prior.channels=[4, 8, 8, 8]", "prior.groups=4"]
    train_dir = run_recipe(RECIPES / "mep-cpu-train.toml", root / "train", overrides=[
        f"dataset.path={data / 'train.zarr'}", "options.steps=3", "options.batch_size=2", "options.log_every=1",
        *prior_overrides,
    ])
    return root, data, train_dir, prior_overrides


def _eval_overrides(data, train_dir, prior_overrides):
    return [
        f"options.data={data / 'test.zarr'}", "options.count=2", "options.samples=2", "sampler.steps=2",
        "options.steps_sweep=[2]", "options.bootstrap=50", "options.adam.epochs=2", "options.lbfgs.iterations=1",
        "forward_model.object_shape=[4, 16, 16]", "forward_model.scan_shape=[2, 2]",
        f"prior.checkpoint={train_dir / 'prior.safetensors'}", *prior_overrides,
    ]


def test_dataset_store_is_rescaled_and_resumable(tiny_pipeline):
    import zarr

    root, data, _, _ = tiny_pipeline
    group = zarr.open_group(str(data / "train.zarr"), mode="r")
    assert group["volume"].shape == (9, 4, 16, 16)  # 3 materials × 3 axes
    assert group.attrs["phase_scale"] > 1.0
    val = zarr.open_group(str(data / "val.zarr"), mode="r")["volume"]
    test = zarr.open_group(str(data / "test.zarr"), mode="r")["volume"]
    assert val.shape == (3, 4, 16, 16) and test.shape == (6, 4, 16, 16)
    # the validation material is not one of the test materials
    assert min(float(abs(val[i] - test[j]).max()) for i in range(3) for j in range(6)) > 0.1
    metrics = read_metrics(root / "ds")
    assert 0.3 < metrics["train_std"] < 3.0
    # a second run over the same store resumes (nothing left to do) and gives the same numbers
    again = run_recipe(RECIPES / "mep-cpu-dataset.toml", root / "ds2", overrides=[
        f"dataset.output={data}", "dataset.n_train_materials=3", "dataset.n_test_materials=2",
        "dataset.n_val_materials=1",
        "dataset.train_shape=[4, 16, 16]", "dataset.test_shape=[4, 16, 16]", "dataset.chunk_size=4",
        "dataset.scale_pilot=4",
    ])
    assert read_metrics(again)["train_std"] == pytest.approx(metrics["train_std"])


def test_evaluate_end_to_end(tiny_pipeline, tmp_path):
    _, data, train_dir, prior_overrides = tiny_pipeline
    run = run_recipe(RECIPES / "mep-cpu.toml", tmp_path / "eval",
                     overrides=_eval_overrides(data, train_dir, prior_overrides))
    m = read_metrics(run)
    for method in ("guided_shifted_sigmoid", "guided_alpha", "guided_constant", "adam", "lbfgs"):
        for key in ("psnr", "ssim", "psnr_depth_sum", "ssim_depth_sum", "interslice_correlation"):
            assert f"{method}_{key}" in m
    assert "bootstrap_ssim_vs_adam_p" in m and "spread_error_correlation" in m
    # each method's result is kept as it finishes, for `emverse run --resume`
    kept = {p.stem for p in (run / "stages").glob("*.safetensors")}
    assert kept == {"guided_shifted_sigmoid", "guided_alpha", "guided_constant", "adam", "lbfgs", "sweep_steps2"}
    assert (run / "figures").exists() or any(run.glob("*.png"))


def test_reconstruct_end_to_end(tiny_pipeline, tmp_path):
    _, data, train_dir, prior_overrides = tiny_pipeline
    overrides = [o for o in _eval_overrides(data, train_dir, prior_overrides)
                 if not o.startswith(("options.steps_sweep", "options.bootstrap", "options.adam", "options.lbfgs"))]
    run = run_recipe(RECIPES / "mep-cpu-reconstruct.toml", tmp_path / "rec", overrides=overrides)
    m = read_metrics(run)
    assert "sample_ssim" in m and "spread_error_correlation" in m


def test_prior_of_another_shape_is_a_clear_error(tiny_pipeline, tmp_path):
    _, data, train_dir, prior_overrides = tiny_pipeline
    overrides = _eval_overrides(data, train_dir, prior_overrides)
    overrides = [o for o in overrides if not o.startswith("prior.event_shape")] + ["prior.event_shape=[8, 16, 16]",
                                                                                  "forward_model.object_shape=[8, 16, 16]"]
    with pytest.raises(EmverseError, match="trained on volumes of shape"):
        run_recipe(RECIPES / "mep-cpu.toml", tmp_path / "bad", overrides=overrides)


def test_mismatched_diffraction_stack_is_a_clear_error():
    from emverse_mep.reconstruct import check_observation
    from emverse_multislice.ptychography import MultislicePtychography

    model = MultislicePtychography(object_shape=(4, 16, 16), scan_shape=(2, 2))
    good = torch.zeros(1, *model.observation_shape)
    assert check_observation(model, good) is good
    with pytest.raises(EmverseError, match="scan_shape"):
        check_observation(model, torch.zeros(1, 9, 16, 16))
    with pytest.raises(EmverseError, match="detector"):
        check_observation(model, torch.zeros(1, 4, 8, 8))


def test_sampler_and_guidance_weight_swap_by_set_alone(tiny_pipeline, tmp_path):
    """The MEP reconstruction's sampler (dpmpp_2m_sde -> ddim) and guidance weight (shifted
    sigmoid -> constant) are swapped by --set overrides alone, and the swap takes effect."""
    import tomllib

    _, data, train_dir, prior_overrides = tiny_pipeline
    base = [o for o in _eval_overrides(data, train_dir, prior_overrides)
            if not o.startswith(("options.steps_sweep", "options.bootstrap", "options.adam", "options.lbfgs"))]
    default = run_recipe(RECIPES / "mep-cpu-reconstruct.toml", tmp_path / "default", overrides=base)
    swapped = run_recipe(RECIPES / "mep-cpu-reconstruct.toml", tmp_path / "swapped", overrides=[
        *base, "sampler.type=diffusion.ddim", 'guidance.schedule={type = "diffusion.constant", scale = 0.5}'])
    recipe = tomllib.loads((swapped / "recipe.toml").read_text())
    assert recipe["sampler"]["type"] == "diffusion.ddim"
    assert recipe["guidance"]["schedule"] == {"type": "diffusion.constant", "scale": 0.5}
    assert read_metrics(swapped)["sample_ssim"] != read_metrics(default)["sample_ssim"]


def test_kill_9_then_resume_continues_the_reconstruction_batch_by_batch(tiny_pipeline, tmp_path):
    """Killed once its first batch of measurements is kept, resumed: the finished batch is read
    back, the rest sampled, and every draw equals an uninterrupted run's."""
    from emverse.testing.resume import check_kill_9_resume

    _, data, train_dir, prior_overrides = tiny_pipeline
    overrides = [o for o in _eval_overrides(data, train_dir, prior_overrides)
                 if not o.startswith(("options.steps_sweep", "options.bootstrap", "options.adam", "options.lbfgs",
                                      "options.count", "sampler.steps"))]
    out = check_kill_9_resume(RECIPES / "mep-cpu-reconstruct.toml", tmp_path,
                              overrides=[*overrides, "options.count=6", "options.batch=1", "sampler.steps=20"],
                              kill_when="stages/reconstruct-0-1.safetensors", outputs=["reconstructions.safetensors"])
    assert out["reconstructions.safetensors"]["samples"].shape[:2] == (6, 2)
    log = (tmp_path / "killed" / "run.log").read_text()
    assert "stage reconstruct-0-1 restored" in log and "stage reconstruct-5-6 restored" not in log
