"""cbldm.train killed with SIGKILL midway (inside its multi-stage training) and resumed ends
with bit-identical weights of every stage."""

from emverse.testing.resume import check_kill_9_resume

TINY = """
schema_version = 1
name = "cbldm-resume"
seed = 3
task = "cbldm.train"
[options]
epochs_pdf_vae = 30
epochs_matrix_vae = 20
epochs_ldm = 20
epochs_baselines = 5
batch_size = 8
checkpoint_every = 4
pdf_channels = 4
matrix_channels = 4
unet_channels = 8
latent_size = 8
eval_structures = 0
[dataset]
type = "cbldm.dataset"
n_structures = 20
structure_types = ["FCC", "Ico"]
elements = ["Au"]
max_atoms = 64
matrix_size = 64
val_fraction = 0.1
chunk_size = 10
"""


def test_kill_9_then_resume_gives_identical_weights(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    check_kill_9_resume(recipe, tmp_path, overrides=[], kill_when="cbldm-pdf_vae-resume.safetensors",
                        outputs=["cbldm.safetensors"])


SIMULATE = """
schema_version = 1
name = "cbldm-simulate"
seed = 5
task = "simulate"
[dataset]
type = "cbldm.dataset"
n_structures = 60
structure_types = ["FCC", "Ico", "Dec"]
elements = ["Au", "Pt"]
max_atoms = 128
matrix_size = 128
val_fraction = 0.1
chunk_size = 4
"""


def test_kill_9_then_resume_finishes_the_dataset_identically(tmp_path):
    """The core simulate task writing a cbldm.dataset store, killed after its first finished chunk and resumed computes only the missing
    chunks (it logs how many it found): the store equals an uninterrupted run's."""
    recipe = tmp_path / "simulate.toml"
    recipe.write_text(SIMULATE)
    out = check_kill_9_resume(recipe, tmp_path, overrides=[], kill_when="dataset.zarr/_done/c/0",
                              outputs=["dataset.zarr"])
    assert out["dataset.zarr"]["_done"].all()
