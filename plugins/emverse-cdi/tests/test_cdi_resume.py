"""Training the CDI prior and the regression baseline (core train task, cdi.augmented objective)
killed with SIGKILL midway and resumed ends with bit-identical weights."""

import pytest
from emverse.run import run_recipe
from emverse.testing.resume import check_kill_9_resume

DATASET = """
schema_version = 1
name = "toy-dataset"
seed = 4
task = "simulate"
[options]
n = 64
noise = false
chunk_size = 64
store = "{store}"
[forward_model]
type = "cdi.toy_pattern"
size_px = 16
"""

TRAIN = """
schema_version = 1
name = "toy-train"
seed = 5
task = "train"
[options]
steps = 200
batch_size = 8
learning_rate = 1e-3
lr_decay = "cosine"
ema_decay = 0.99
ema_warmup = true
grad_clip = 0
checkpoint_every = 5
checkpoint_name = "model"
[dataset]
type = "cdi.patterns"
path = "{store}"
[objective]
type = "cdi.augmented"
rotation_degrees = 2.0
[prior]
type = "{prior}"
{arch}
"""

TRANSFORMER = """encoder_depth = 10
encoder_width = 4
encoder_stem = "small"
token_dim = 16
n_layers = 1
n_heads = 2
ffn_dim = 32
crop_size = 16
input_size = 16
steps = 50"""

REGRESSION = """depth = 10
width = 4
stem = "small"
crop_size = 16
input_size = 16"""


@pytest.mark.parametrize("prior,arch", [("cdi.transformer", TRANSFORMER), ("cdi.regression", REGRESSION)],
                         ids=["transformer", "regression"])
def test_kill_9_then_resume_gives_identical_weights(tmp_path, prior, arch):
    store = tmp_path / "toy.zarr"
    (tmp_path / "dataset.toml").write_text(DATASET.format(store=store))
    run_recipe(tmp_path / "dataset.toml", tmp_path / "ds", progress=False)
    (tmp_path / "train.toml").write_text(TRAIN.format(store=store, prior=prior, arch=arch))
    check_kill_9_resume(tmp_path / "train.toml", tmp_path, overrides=[],
                        kill_when="model-resume.safetensors", outputs=["model.safetensors"])


CAMPAIGN = """
schema_version = 1
name = "campaign"
seed = 9
task = "simulate"
dtype = "float64"
[options]
n = 64
noise = false
chunk_size = 4
[forward_model]
type = "bloch.cbed"
structure = "MgB2"
detector_pixels = 16
g_max = 0.6
"""


def test_kill_9_then_resume_finishes_a_simulation_campaign_identically(tmp_path):
    """A simulation campaign (the core simulate task, bloch.cbed, 16 chunks on Dask) killed after its first finished chunk
    and resumed computes only the missing chunks: the store equals an uninterrupted run's."""
    (tmp_path / "campaign.toml").write_text(CAMPAIGN)
    out = check_kill_9_resume(tmp_path / "campaign.toml", tmp_path, overrides=[],
                              kill_when="dataset.zarr/_done/c/0", outputs=["dataset.zarr"])
    store = out["dataset.zarr"]
    assert store["_done"].all() and store["observations"].shape == (64, 16, 16)
