"""The runner: run directories, reproducibility, interruption, atomic writes, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from emverse.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from emverse.components import Component
from emverse.errors import EmverseError
from emverse.hookspecs import hookimpl
from emverse.interfaces import Task
from emverse.io import write_text
from emverse.run import INCOMPLETE, run_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "recipes" / "example-linear-gaussian.toml"


def test_run_directory_contents(tmp_path):
    out = run_recipe(EXAMPLE, tmp_path / "run")
    for name in ("recipe.toml", "environment.json", "metrics.json", "report.html", "run.log",
                 "status.json", "posterior.safetensors", "figures/posterior.png"):
        assert (out / name).exists(), name
    assert not (out / INCOMPLETE).exists()
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    env = json.loads((out / "environment.json").read_text())
    assert env["seed"] == 7 and any(p["distribution"] == "emverse-example" for p in env["plugins"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "posterior_mean_rmse" in html
    resolved = (out / "recipe.toml").read_text()
    assert "matrix_seed = 0" in resolved  # defaults filled in
    checkpoint = load_checkpoint(out / "posterior.safetensors")
    assert checkpoint.recipe["name"] == "example-linear-gaussian"
    assert checkpoint.tensors["samples"].shape == (8, 500, 4)


def test_same_seed_same_numbers_other_seed_other_samples(tmp_path):
    a = run_recipe(EXAMPLE, tmp_path / "a")
    b = run_recipe(EXAMPLE, tmp_path / "b")
    c = run_recipe(EXAMPLE, tmp_path / "c", overrides=["seed=8"])
    def results(run):  # wall times are measurements, not results
        return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if "seconds" not in k}

    assert results(a) == results(b)
    sa = load_checkpoint(a / "posterior.safetensors").tensors["samples"]
    sb = load_checkpoint(b / "posterior.safetensors").tensors["samples"]
    sc = load_checkpoint(c / "posterior.safetensors").tensors["samples"]
    assert torch.equal(sa, sb)
    assert not torch.allclose(sa, sc)


def test_conformance_kit_catches_a_wrong_gradient_and_batch_mixing():
    from emverse.testing import check_forward_model
    from emverse_example.linear import LinearGaussian

    class Detached(LinearGaussian):
        def forward(self, x):
            y = super().forward(x)
            return 0.5 * y + 0.5 * y.detach()  # right values, half the gradient

    class BatchMixing(LinearGaussian):
        def forward(self, x):
            return super().forward(x) + x.mean()  # each output depends on the whole batch

    check_forward_model(Detached(), check_grad=False)  # the values alone look fine
    with pytest.raises(AssertionError, match="finite difference"):
        check_forward_model(Detached())
    with pytest.raises(AssertionError, match="one-by-one"):
        check_forward_model(BatchMixing())


class _FailingTask(Task):
    def run(self, ctx):
        ctx.add_table("partial", ["a"], [[1]])
        raise RuntimeError("stopped midway")


class _FailingPlugin:
    @hookimpl
    def emverse_components(self):
        yield Component("task", "test.fail_midway", f"{__name__}:_FailingTask")


def test_interrupted_run_is_marked_incomplete(emverse_plugin, tmp_path):
    emverse_plugin(_FailingPlugin())
    recipe = tmp_path / "r.toml"
    recipe.write_text('schema_version = 1\nname = "f"\nseed = 1\ntask = "test.fail_midway"\n')
    with pytest.raises(RuntimeError, match="stopped midway"):
        run_recipe(recipe, tmp_path / "run")
    out = tmp_path / "run"
    assert (out / INCOMPLETE).exists()
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert "did not finish" in (out / "report.html").read_text()


def test_run_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(EmverseError, match="not empty"):
        run_recipe(EXAMPLE, tmp_path / "run")


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")

    def broken(path):
        path.write_text("half")
        raise OSError("disk full")

    from emverse.io import atomic_write

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "m.safetensors", net.state_dict(), recipe={"name": "r"},
                           metadata={"epoch": 4})
    ck = load_checkpoint(path)
    assert ck.recipe == {"name": "r"} and ck.metadata == {"epoch": 4}
    other = torch.nn.Linear(3, 2)
    load_state_dict_strict(other, ck.tensors, str(path))
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(EmverseError, match="shape of weight"):
        load_state_dict_strict(torch.nn.Linear(4, 2), ck.tensors, str(path))
    with pytest.raises(EmverseError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmverseError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_generic_refine_task_recovers_truth(tmp_path):
    recipe = tmp_path / "refine.toml"
    recipe.write_text("""
schema_version = 1
name = "refine-linear"
seed = 11
task = "refine"
dtype = "float64"
[forward_model]
type = "example.linear_gaussian"
dim_x = 3
dim_y = 12
noise_sigma = 0.01
[refiner]
type = "core.adam"
steps = 400
lr = 0.05
""")
    out = run_recipe(recipe, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refined_rmse"] < 0.02 < metrics["start_rmse"]
