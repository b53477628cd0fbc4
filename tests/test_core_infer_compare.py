"""[[compare]] in the core infer task: other methods estimate the same observations and are
reported beside the posterior (known answer: least squares for a refiner on a linear model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from emverse.checkpoint import load_checkpoint
from emverse.run import run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "example-linear-gaussian.toml"
COMPARE = ('compare=[{type = "core.refine", label = "lsq", refiner = {type = "core.lbfgs", steps = 200}, '
           'likelihood = {type = "core.gaussian", sigma = 0.3}}]')


def test_a_refiner_compared_in_infer_lands_on_least_squares(tmp_path):
    """A Gaussian likelihood refined by L-BFGS from the posterior mean ends at the least-squares
    solution (AᵀA)⁻¹Aᵀy of each observation (computed here), where that lies inside the box;
    its NRMSE is reported beside the posterior's and its points kept in the checkpoint."""
    run = run_recipe(RECIPE, tmp_path / "run", overrides=[COMPARE, "options.n_observations=6",
                                                          "options.n_samples=50"], progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    saved = load_checkpoint(run / "posterior.safetensors").tensors
    from emverse_example.linear import LinearGaussian

    a = LinearGaussian(dim_x=4, dim_y=6, noise_sigma=0.3).matrix
    lsq = torch.linalg.lstsq(a, saved["observation"].T).solution.T  # (6, 4)
    inside = (lsq.abs() < 2.0).all(dim=1)
    assert int(inside.sum()) >= 3
    torch.testing.assert_close(saved["compare/lsq"][inside], lsq[inside], rtol=0, atol=1e-5)
    assert "compare/lsq/nrmse/x0" in metrics and "posterior/nrmse/x0" in metrics
    # the posterior mean (Gaussian prior) shrinks towards 0: it is not the least-squares point
    assert float((saved["samples"].mean(1) - lsq).abs().max()) > 1e-2
