"""Training the mep.unet3d prior (core train task) killed with SIGKILL midway and resumed ends with bit-identical prior weights."""

from pathlib import Path

from emverse.run import run_recipe
from emverse.testing.resume import check_kill_9_resume

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def test_kill_9_then_resume_gives_identical_prior(tmp_path):
    data = tmp_path / "data"
    run_recipe(RECIPES / "mep-cpu-dataset.toml", tmp_path / "ds", overrides=[
        f"dataset.output={data}", "dataset.n_train_materials=3", "dataset.n_test_materials=1",
        "dataset.n_val_materials=1", "dataset.train_shape=[4, 16, 16]", "dataset.test_shape=[4, 16, 16]",
        "dataset.chunk_size=4", "dataset.scale_pilot=4",
    ], progress=False)
    check_kill_9_resume(
        RECIPES / "mep-cpu-train.toml", tmp_path,
        overrides=[f"dataset.path={data / 'train.zarr'}", "options.steps=150", "options.batch_size=2",
                   "options.checkpoint_every=5", "prior.event_shape=[4, 16, 16]",
                   "prior.channels=[4, 4, 4, 4]", "prior.groups=2"],
        kill_when="prior-resume.safetensors", outputs=["prior.safetensors"],
    )
