"""End to end: datasets (Zarr, resumable), the pipeline on the toy and on bloch.cbed, inference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.run import run_recipe
from emverse.simulation import write_dataset
from emverse_cdi.dataset import PatternDataset
from emverse_cdi.parameter_table import NRMSE_MEAN_PREDICTOR, NRMSE_UNIFORM_SAMPLER
from emverse_cdi.toy import ToyPatternModel

HERE = Path(__file__).parent
RECIPES = HERE.parents[2] / "recipes"
TOY = HERE / "toy-pipeline.toml"

TINY = ["options.n_train=64", "options.n_test=8", "options.chunk_size=32", "options.epochs=1",
        "options.baseline_epochs=1", "options.batch_size=16", "options.n_samples=6",
        "sampler.steps=5", "options.n_ppc_samples=2", "options.n_histogram_patterns=1",
        "options.n_ppc_patterns=1"]


def _metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def test_dataset_is_seeded_and_resumes(tmp_path):
    model = ToyPatternModel(12)
    store = tmp_path / "a.zarr"
    write_dataset(model, 20, store, chunk_size=8, seed=5)
    first = PatternDataset(store)
    # the patterns are the forward model of the stored parameters
    torch.testing.assert_close(first.all_patterns(), model(first.parameters).float())
    # interrupt: forget one chunk and spoil it; a second call recomputes exactly that chunk
    import zarr

    group = zarr.open_group(str(store), mode="a")
    done = group["_done"]
    done[1] = False
    group["observations"][8:16] = np.zeros((8, 12, 12), dtype=np.float32)
    with pytest.raises(EmverseError, match="incomplete"):
        PatternDataset(store)
    write_dataset(model, 20, store, chunk_size=8, seed=5)
    again = PatternDataset(store)
    torch.testing.assert_close(again.all_patterns(), first.all_patterns())
    # another seed gives other draws
    other = tmp_path / "b.zarr"
    write_dataset(model, 20, other, chunk_size=8, seed=6)
    assert not torch.allclose(PatternDataset(other).parameters, first.parameters)


def test_toy_pipeline_runs_end_to_end(tmp_path):
    run = run_recipe(TOY, tmp_path / "run", overrides=TINY)
    m = _metrics(run)
    assert m["n_test_patterns"] == 8
    for name in ("thickness", "tilt_x", "Mg_U11"):
        assert 0 < m[f"nrmse_mean/{name}"] < 1
        assert f"regression_nrmse/{name}" in m
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"calibration.png", "coverage_sharpness.png", "nrmse.png", "posterior_pattern_0.png",
            "ppc_pattern_0.png"} <= figures
    assert (run / "cdi.safetensors").exists() and (run / "regression.safetensors").exists()
    # the saved posterior samples are the ones the table was computed from
    from safetensors.torch import load_file
    saved = load_file(run / "posterior_samples.safetensors")
    assert saved["samples"].shape == (8, 6, 13) and saved["truth"].shape == (8, 13)
    low, high = ToyPatternModel(12).parameter_space.bounds()
    nrmse = ((saved["samples"].mean(1) - saved["truth"]) ** 2).mean(0).sqrt() / (high - low)
    assert nrmse[-1].item() == pytest.approx(m["nrmse_mean/thickness"], rel=1e-5)
    reg = ((saved["regression"] - saved["truth"]) ** 2).mean(0).sqrt() / (high - low)
    assert reg[0].item() == pytest.approx(m["regression_nrmse/Mg_U11"], rel=1e-5)


def test_bloch_cpu_recipe_runs_end_to_end_tiny(tmp_path):
    pytest.importorskip("emverse_bloch")
    run = run_recipe(RECIPES / "cbed-mgb2-cpu.toml", tmp_path / "run",
                     overrides=[*TINY, "options.n_train=32", "options.n_test=4", "options.chunk_size=16",
                                "forward_model.detector_pixels=32", "forward_model.g_max=0.6"])
    m = _metrics(run)
    assert m["n_test_patterns"] == 4
    # posterior predictive check: re-simulated posterior draws were compared with the pattern
    assert m["ppc/posterior_residual_mean"] > 0
    assert (run / "figures" / "ppc_pattern_0.png").exists()


@pytest.mark.slow
def test_toy_known_answer_identifiable_sharp_unidentifiable_uniform(tmp_path):
    """The paper's identifiability picture on a problem where it holds by construction."""
    run = run_recipe(TOY, tmp_path / "run", overrides=["options.noise_draws=8", "options.epochs=10"])
    m = _metrics(run)
    dw = ["Mg_U11", "Mg_U33", "Mg_U12", "B_U11", "B_U33", "B_U12"]
    # regression collapses to the mean of the invisible parameters ...
    for name in dw:
        assert abs(m[f"regression_nrmse/{name}"] - NRMSE_MEAN_PREDICTOR) < 0.03
    # ... and the CDI posterior stays broad (a single draw is far from the truth)
    assert np.mean([m[f"nrmse_single/{n}"] for n in dw]) > 0.8 * NRMSE_UNIFORM_SAMPLER
    # visible parameters are sharp
    for name in ("tilt_x", "tilt_y", "thickness"):
        assert m[f"nrmse_mean/{name}"] < 0.1


_TOY_PRIOR = """
[prior]
type = "cdi.transformer"
{checkpoint}encoder_depth = 10
encoder_width = 4
encoder_stem = "small"
token_dim = 16
n_layers = 1
n_heads = 2
ffn_dim = 32
crop_size = 12
input_size = 12
steps = 20
beta_start = 5e-3
beta_end = 0.5
"""


def _write(path, text):
    path.write_text(text)
    return path


def test_separate_tasks_dataset_train_evaluate(tmp_path):
    head = 'schema_version = 1\nname = "{name}"\nseed = 1\ntask = "{task}"\n'
    toy = '\n[forward_model]\ntype = "cdi.toy_pattern"\nsize_px = 12\n'
    data = _write(tmp_path / "data.toml", head.format(name="d", task="simulate")
                  + '[options]\nn = 48\nnoise = false\nchunk_size = 16\nstore = "train.zarr"\n' + toy)
    run_recipe(data, tmp_path / "d")
    assert PatternDataset(tmp_path / "train.zarr").parameters.shape == (48, 13)
    train = _write(tmp_path / "train.toml", head.format(name="t", task="train")
                   + '[options]\nsteps = 3\nbatch_size = 16\nema_warmup = true\ngrad_clip = 0\n'
                   + 'checkpoint_name = "cdi"\n[dataset]\ntype = "cdi.patterns"\npath = "train.zarr"\n'
                   + '[objective]\ntype = "cdi.augmented"\nnoise_draws = 2\n' + _TOY_PRIOR.format(checkpoint=""))
    run = run_recipe(train, tmp_path / "t")
    assert (run / "cdi.safetensors").exists()
    # the evaluation: the core infer task on the store's pairs (a cdi.patterns [dataset])
    evaluate = _write(tmp_path / "eval.toml", head.format(name="e", task="infer")
                      + '[options]\nn_observations = 6\nn_samples = 4\n' + toy
                      + '[dataset]\ntype = "cdi.patterns"\npath = "train.zarr"\n'
                      + _TOY_PRIOR.format(checkpoint='checkpoint = "t/cdi.safetensors"\n')
                      + '\n[sampler]\ntype = "diffusion.ddpm"\nsteps = 4\n')
    m = json.loads((run_recipe(evaluate, tmp_path / "e") / "metrics.json").read_text())
    assert "posterior/nrmse/thickness" in m and "posterior/calibration_error_mean" in m
    assert (tmp_path / "e" / "stages" / "approximate-5.safetensors").is_file()  # kept for --resume
    from emverse.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "e" / "posterior.safetensors").tensors
    store = PatternDataset(tmp_path / "train.zarr")  # the truths and patterns are the store's first six
    assert torch.equal(saved["truth"], store.parameters[:6].double())
    assert torch.equal(saved["observation"].float(), store.patterns_at(torch.arange(6)))
    with pytest.raises(EmverseError, match="n_observations = 60, but dataset .* holds 48"):
        run_recipe(evaluate, tmp_path / "e60", overrides=["options.n_observations=60"])


def test_a_prior_ema_decay_the_train_task_would_ignore_is_refused(tmp_path):
    """cdi.transformer has its own ema_decay (cdi.pipeline's); in a core train recipe the loop's
    options.ema_decay is what averages, so another value chosen in [prior] is refused at
    validation; the same value, none, or the prior's default (a stored resolved recipe, which
    `--resume` reads) is accepted."""
    from emverse.errors import RecipeError
    from emverse.recipe import load_recipe

    text = ('schema_version = 1\nname = "t"\nseed = 1\ntask = "train"\n[options]\nsteps = 3\nbatch_size = 16\n'
            'ema_decay = 0.999\n[dataset]\ntype = "cdi.patterns"\npath = "train.zarr"\n'
            '[objective]\ntype = "cdi.augmented"\n' + _TOY_PRIOR.format(checkpoint=""))
    with pytest.raises(RecipeError, match=r"\$\.prior\.ema_decay.*options\.ema_decay = 0\.999"):
        load_recipe(_write(tmp_path / "bad.toml", text + "ema_decay = 0.995\n"), check_files=False)
    load_recipe(_write(tmp_path / "same.toml", text + "ema_decay = 0.999\n"), check_files=False)
    load_recipe(_write(tmp_path / "none.toml", text), check_files=False)
    # the prior's own default, as a run directory's resolved recipe writes it, is not a choice
    load_recipe(_write(tmp_path / "resolved.toml", text + "ema_decay = 0.9999\n"), check_files=False)
