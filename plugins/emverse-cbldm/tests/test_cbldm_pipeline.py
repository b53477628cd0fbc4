"""End to end: a tiny dataset, training of every stage, evaluation tables, inference on a measured PDF."""

from pathlib import Path

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.run import read_metrics, run_recipe
from emverse_cbldm.clusters import from_blocks, weight_matrix
from emverse_cbldm.infer import resample_to_model_grid

TINY = """
schema_version = 1
name = "cbldm-tiny"
seed = 3
task = "cbldm.train"
device = "cpu"
dtype = "float32"
[options]
epochs_pdf_vae = 1
epochs_matrix_vae = 2
epochs_ldm = 1
epochs_baselines = 1
batch_size = 8
pdf_channels = 4
matrix_channels = 4
unet_channels = 8
latent_size = 8
eval_structures = 2
candidates = 2
sampling_steps = 6
accelerated_t1 = 0.67
accelerated_t2 = 0.34
recovery_maxiter = 10
[dataset]
type = "cbldm.dataset"
n_structures = 20
structure_types = ["FCC", "Ico", "Dec", "BCC"]
elements = ["Au", "Pt", "Cu"]
max_atoms = 64
matrix_size = 64
val_fraction = 0.1
chunk_size = 10
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cbldm")
    recipe = base / "tiny.toml"
    recipe.write_text(TINY)
    run_dir = run_recipe(recipe, base / "run")
    return Path(run_dir)


def test_tiny_training_run_writes_checkpoint_tables_and_metrics(tiny_run):
    metrics = read_metrics(tiny_run)
    assert metrics["n_train"] == 18 and metrics["n_val"] == 2
    for method in ("cbldm", "cbldm_accel", "mlp", "cnn"):
        assert 0.0 <= metrics[f"median_rw.{method}"]
    assert metrics["nfe.cbldm"] == 6 and metrics["nfe.cbldm_accel"] == 2 + 2
    import json

    tables = json.loads((tiny_run / "tables.json").read_text())
    assert any("structure type" in name for name in tables)
    assert (tiny_run / "cbldm.safetensors").exists()


def test_evaluation_record_reproduces_the_reported_medians(tiny_run):
    import json

    metrics = read_metrics(tiny_run)
    record = json.loads((tiny_run / "evaluation.json").read_text())
    assert len(record["n_atoms"]) == len(record["structure_type"]) == 2
    for method in ("cbldm", "cbldm_accel", "mlp", "cnn"):
        rw = np.asarray(record["rw"][method])
        assert rw.shape == (2, 2 if method.startswith("cbldm") else 1)
        per_pdf = np.median(rw, axis=1)
        assert np.isclose(np.median(per_pdf), metrics[f"median_rw.{method}"])
        assert metrics[f"median_rw_low95.{method}"] <= metrics[f"median_rw.{method}"]
    assert 0.0 <= metrics["win_fraction.cbldm_vs_mlp"] <= 1.0


def test_reevaluation_pairs_the_samplers_and_does_not_depend_on_workers(tiny_run, tmp_path):
    """Same weights and seed, two worker processes, accelerated set to plain (t1 = t2 = 1):
    both samplers start from the same noise, so their Rw agree candidate by candidate, and
    every number equals the single-process run's."""
    import json

    recipe = tmp_path / "again.toml"
    text = TINY.replace("epochs_matrix_vae = 2", "epochs_matrix_vae = 0")
    for stage in ("pdf_vae", "ldm", "baselines"):
        text = text.replace(f"epochs_{stage} = 1", f"epochs_{stage} = 0")
    text = text.replace("accelerated_t1 = 0.67", "accelerated_t1 = 1.0")
    text = text.replace("accelerated_t2 = 0.34", "accelerated_t2 = 1.0")
    text = text.replace(
        "recovery_maxiter = 10",
        f'recovery_maxiter = 10\neval_workers = 2\ninit_checkpoint = "{tiny_run / "cbldm.safetensors"}"',
    )
    text = text.replace("[dataset]", f'[dataset]\nstore = "{tiny_run / "dataset.zarr"}"')
    recipe.write_text(text)
    again = json.loads((run_recipe(recipe, tmp_path / "run") / "evaluation.json").read_text())
    first = json.loads((tiny_run / "evaluation.json").read_text())
    np.testing.assert_array_equal(again["rw"]["cbldm_accel"], again["rw"]["cbldm"])
    for method in ("cbldm", "mlp", "cnn"):
        np.testing.assert_array_equal(again["rw"][method], first["rw"][method])
    metrics = read_metrics(tmp_path / "run")
    assert metrics["paired_median_diff_rw.cbldm_accel_minus_cbldm"] == 0.0
    assert metrics["tie_fraction.cbldm_accel_vs_cbldm"] == 1.0


def test_dataset_store_is_consistent(tiny_run):
    import zarr
    from emverse_cbldm.pdf import cbldm_gr

    group = zarr.open_group(str(tiny_run / "dataset.zarr"), mode="r")
    pdf = np.asarray(group["pdf"][:])
    assert pdf.shape == (20, 3000)
    np.testing.assert_allclose(pdf.max(1), 1.0, rtol=1e-6)
    assert int(np.asarray(group["is_val"][:]).sum()) == 2
    i = 3
    n = int(group["n_atoms"][i])
    x = np.asarray(group["positions"][i])[:n].astype(np.float64)
    w = from_blocks(np.asarray(group["blocks"][i]))
    np.testing.assert_allclose(w, weight_matrix(x, size=64), atol=1e-6)
    g = cbldm_gr(torch.as_tensor(x)[None])[0].numpy()
    np.testing.assert_allclose(pdf[i], g / g.max(), atol=1e-5)
    assert set(np.asarray(group["type_index"][:]).tolist()) <= {0, 1, 2, 4, 5}


def test_inference_on_measured_au144(tiny_run, tmp_path):
    from emverse.testing import shared_data_dir

    gr = shared_data_dir() / "pdf_nanoparticles/deepstruc/experimental/Au144PET_100K-00000.gr"
    if not gr.exists():
        pytest.skip("shared experimental PDFs missing")
    recipe = tmp_path / "infer.toml"
    recipe.write_text(
        f"""
schema_version = 1
name = "cbldm-infer-tiny"
seed = 1
task = "cbldm.infer"
[options]
observations = ["{gr}"]
candidates = 2
[prior]
type = "cbldm.ldm"
checkpoint = "{tiny_run / "cbldm.safetensors"}"
[sampler]
type = "cbldm.accelerated"
steps = 4
[refiner]
type = "cbldm.distance_geometry"
maxiter = 5
[forward_model]
type = "pdf.debye"
elements = "Au"
"""
    )
    try:
        run_dir = run_recipe(recipe, tmp_path / "run")
    except EmverseError as exc:
        # an untrained tiny model may decode matrices with no atom above threshold: that must be said clearly
        assert "no candidate had atoms above threshold" in str(exc)
        return
    metrics = read_metrics(run_dir)
    assert metrics["nfe"] == 4
    assert 0 < metrics["Au144PET_100K-00000.n_candidates"] <= 2


def test_resampling_rules():
    r = np.arange(0, 20, 0.01)
    g = np.sin(r)
    out = resample_to_model_grid(r, g)
    assert out.shape == (3000,) and out.max() == pytest.approx(1.0)
    assert np.all(out[2000:] == 0.0)
    np.testing.assert_allclose(out[:1000], g[:1000] / g.max(), atol=1e-12)
    with pytest.raises(EmverseError, match="coarser"):
        resample_to_model_grid(np.arange(0, 30, 0.1), np.ones(300))
    with pytest.raises(EmverseError, match="increase"):
        resample_to_model_grid(r[::-1], g)
    with pytest.raises(EmverseError, match="at least 2–10"):
        resample_to_model_grid(np.arange(0, 5, 0.01), np.ones(500))


def test_simulate_task_tabulates_the_store(tmp_path):
    recipe = tmp_path / "sim.toml"
    recipe.write_text(
        """
schema_version = 1
name = "cbldm-sim"
seed = 9
task = "simulate"
[dataset]
type = "cbldm.dataset"
n_structures = 6
structure_types = ["Ico", "Oct"]
elements = ["Au", "Pt"]
max_atoms = 64
matrix_size = 64
chunk_size = 3
val_fraction = 0.2
"""
    )
    metrics = read_metrics(run_recipe(recipe, tmp_path / "run"))
    assert metrics["n_structures"] == 6 and metrics["n_val"] == 1
    # Ico with ≤ 64 atoms: 13 and 55; Oct: 6, 19 and 44 atoms (× 2 metals = 10 clusters)
    assert 6 <= metrics["mean_atoms"] <= 55


def test_simulate_refuses_more_structures_than_the_catalogue(tmp_path):
    recipe = tmp_path / "sim.toml"
    recipe.write_text(
        """
schema_version = 1
name = "cbldm-sim"
seed = 9
task = "simulate"
[dataset]
type = "cbldm.dataset"
n_structures = 50
structure_types = ["Ico"]
elements = ["Au"]
max_atoms = 64
matrix_size = 64
"""
    )
    with pytest.raises(EmverseError, match="exceeds the"):
        run_recipe(recipe, tmp_path / "run")


def test_an_interrupted_evaluation_continues_from_its_kept_blocks(tiny_run, tmp_path, monkeypatch):
    """The run kept its sampled matrices and recovered candidates under stages/. Resumed with
    the matrices and the first block kept and the candidate recovery forbidden, the evaluation
    reads both back and reproduces the run's Rw table exactly; with the block gone it recovers
    only that block again (the kept matrices are not resampled)."""
    import json
    import shutil

    from emverse.recipe import load_recipe
    from emverse.run import RunContext
    from emverse_cbldm import evaluate as E
    from emverse_cbldm.prior import CbLDMPrior

    kept = sorted(p.name for p in (tiny_run / "stages").iterdir())
    assert kept == ["evaluate-candidates-0.safetensors", "evaluate-matrices.safetensors"]
    shutil.copytree(tiny_run / "stages", tmp_path / "stages")
    ctx = RunContext(load_recipe(tiny_run / "recipe.toml"), tmp_path, resume=True)
    model = CbLDMPrior.from_checkpoint(tiny_run / "cbldm.safetensors")
    opts = ctx.recipe.task.params
    val = RunContext(load_recipe(tiny_run / "recipe.toml"), tiny_run).build("dataset").load("val")
    recorded = json.loads((tiny_run / "evaluation.json").read_text())["rw"]

    def forbidden(*_):
        raise AssertionError("a kept candidate was recovered again")

    monkeypatch.setattr(E, "matrix_to_candidate", forbidden)
    monkeypatch.setattr(E, "generate_matrices", forbidden)
    results = E.evaluate_model(model, val, opts, ctx.generator("evaluate"), keep=ctx.stage)
    for method, values in recorded.items():
        np.testing.assert_array_equal(results["rw"][method], np.asarray(values))
    monkeypatch.undo()
    (tmp_path / "stages" / "evaluate-candidates-0.safetensors").unlink()
    again = E.evaluate_model(model, val, opts, ctx.generator("evaluate"), keep=ctx.stage)
    for method, values in recorded.items():
        np.testing.assert_array_equal(again["rw"][method], np.asarray(values))
