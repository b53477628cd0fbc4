"""The Python API: emverse.run(recipe, **overrides) -> RunOutput."""

from __future__ import annotations

import emverse
import pytest
import torch
from emverse.api import RunOutput
from emverse.errors import EmverseError, RecipeError
from emverse.ready_recipes import find_recipe
from emverse.recipe import read_toml


def test_run_by_name_with_overrides_returns_metrics_tables_and_tensors(tmp_path):
    result = emverse.run("example-linear-gaussian", out=tmp_path / "a",
                         **{"options.n_observations": 2, "options.n_samples": 50})
    assert isinstance(result, RunOutput) and result.status["status"] == "complete"
    assert result.run_dir == tmp_path / "a"
    assert set(result.metrics) >= {"posterior_mean_rmse"} and result.metrics["posterior_mean_rmse"] > 0
    samples = result.tensors("posterior")["samples"]
    assert samples.shape == (2, 50, 4) and samples.dtype == torch.float64  # the recipe says float64
    assert result.tensors().keys() == result.tensors("posterior").keys()  # one file: that file
    assert result.recipe["options"]["n_samples"] == 50
    assert result.figures and all(p.suffix == ".png" for p in result.figures)
    assert "posterior_mean_rmse" in result._repr_html_()
    with pytest.raises(EmverseError, match="no model.safetensors; it has: posterior"):
        result.tensors("model")
    again = emverse.open_run(result.run_dir)
    assert again.metrics == result.metrics


def test_run_from_a_dict_is_reproducible_and_module_stays_callable(tmp_path):
    import emverse.run as run_module  # importing the submodule must not break emverse.run(...)

    raw = read_toml(find_recipe("example-linear-gaussian"))
    a = emverse.run(raw, {"options.n_observations": 2}, out=tmp_path / "a")
    b = run_module(raw, {"options.n_observations": 2}, out=tmp_path / "b")
    assert emverse.run is run_module

    def reproducible(metrics):  # wall times are measurements, not results
        return {k: v for k, v in metrics.items() if "seconds" not in k}

    assert reproducible(a.metrics) == reproducible(b.metrics)
    assert torch.equal(a.tensors("posterior")["samples"], b.tensors("posterior")["samples"])


def test_bad_overrides_are_reported_like_the_cli():
    with pytest.raises(RecipeError, match=r"\$\.options\.n_sample: unknown key \(did you mean 'n_samples'\?\)"):
        emverse.run("example-linear-gaussian", **{"options.n_sample": 5})
    with pytest.raises(EmverseError, match="no table 'optons'"):
        emverse.run("example-linear-gaussian", **{"optons.n_samples": 5})
