"""The infer task's multi-observation summary: the whole set always, and the observations whose
posterior-mean prediction the data explain (reduced χ² < CHI2_WARNING) beside it."""

from __future__ import annotations

import pytest
import torch
from emverse import statistics as st
from emverse.builtin.tasks import CHI2_WARNING, _posterior_summary
from emverse.parameter_space import Parameter, ParameterSpace


class _Ctx:
    def __init__(self):
        self.tables = {}

    def add_table(self, name, header, rows):
        self.tables[name] = (header, rows)


def _draws(n_obs=6, n_samples=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    space = ParameterSpace([Parameter("a", "Å", 0.0, 10.0), Parameter("b", "deg", -1.0, 1.0)])
    truth = space.sample_uniform(n_obs, generator=gen, dtype=torch.float64)
    draws = truth[:, None, :] + 0.05 * torch.randn(n_obs, n_samples, 2, generator=gen, dtype=torch.float64)
    draws[:2] += torch.tensor([3.0, 0.5], dtype=torch.float64)  # two observations on a wrong mode
    return space, truth, draws


def test_explained_observations_are_scored_beside_the_whole_set():
    space, truth, draws = _draws()
    explained = torch.tensor([False, False, True, True, True, True])
    ctx = _Ctx()
    out = _posterior_summary(ctx, space, draws, draws, truth, False, explained)
    low, high = space.bounds(torch.float64)
    assert out["explained_fraction"] == pytest.approx(4 / 6)
    whole = st.nrmse(draws, truth, low, high)
    subset = st.nrmse(draws[2:], truth[2:], low, high)
    assert out["posterior/nrmse/a"] == pytest.approx(float(whole[0]))
    assert out["explained/nrmse/a"] == pytest.approx(float(subset[0]))
    assert out["explained/nrmse/a"] < 0.1 * out["posterior/nrmse/a"]  # the wrong modes dominate the whole
    assert out["explained/coverage90_mean"] > out["posterior/coverage90_mean"]
    rows = next(iter(ctx.tables.values()))[1]
    assert {r[0] for r in rows} == {"posterior", "explained"}
    assert f"{CHI2_WARNING:g}" in next(iter(ctx.tables))


def test_no_explained_block_when_all_or_fewer_than_two_are_explained():
    space, truth, draws = _draws()
    for mask in (torch.ones(6, dtype=torch.bool), torch.tensor([True, False, False, False, False, False])):
        out = _posterior_summary(_Ctx(), space, draws, draws, truth, True, mask)
        assert not any(k.startswith("explained/") for k in out)
        assert out["explained_fraction"] == pytest.approx(float(mask.double().mean()))
        assert "approximate/nrmse/a" in out
    assert "explained_fraction" not in _posterior_summary(_Ctx(), space, draws, draws, truth, False, None)
