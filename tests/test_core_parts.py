"""ParameterSpace, noise models, and the Dask-to-Zarr campaign map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from emverse.noise import GaussianNoise, PoissonNoise
from emverse.parameter_space import Parameter, ParameterSpace


def space():
    return ParameterSpace([Parameter.centred("t", "Å", 2800.0, 1000.0), Parameter("b", "pm²", 23.0, 73.0)])


def test_normalise_round_trip_and_bounds():
    s = space()
    x = torch.tensor([[1800.0, 23.0], [3800.0, 73.0], [2800.0, 48.0]], dtype=torch.float64)
    z = s.normalise(x)
    torch.testing.assert_close(z, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(s.denormalise(z), x)
    torch.testing.assert_close(s.denormalise(s.normalise(x, "[0,1]"), "[0,1]"), x)
    with pytest.raises(ValueError, match="'\\[0,2\\]' is unknown"):
        s.normalise(x, "[0,2]")


def test_uniform_sampling_is_seeded_and_in_the_box():
    s = space()
    a = s.sample_uniform(2000, generator=torch.Generator().manual_seed(1))
    b = s.sample_uniform(2000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert s.contains(a).all()
    # a uniform on [1800, 3800] has mean 2800 and std 1000/sqrt(3)
    assert abs(float(a[:, 0].mean()) - 2800.0) < 3 * 577.35 / math.sqrt(2000)
    assert abs(float(a[:, 0].std()) - 1000.0 / math.sqrt(3)) < 20.0


def test_parameter_errors():
    with pytest.raises(ValueError, match="must exceed low"):
        Parameter("x", "1", 1.0, 1.0)
    with pytest.raises(ValueError, match="unique"):
        ParameterSpace([Parameter("x", "1", 0, 1), Parameter("x", "1", 0, 1)])
    with pytest.raises(KeyError, match="known: t, b"):
        space().index("q")


def test_poisson_noise_statistics_and_likelihood():
    dose = 50.0
    y = torch.full((4000, 1), 0.2, dtype=torch.float64)
    noisy = PoissonNoise(dose).sample(y, torch.Generator().manual_seed(0))
    counts = noisy * dose
    assert torch.allclose(counts, counts.round(), atol=1e-9)
    assert abs(float(counts.mean()) - 10.0) < 4 * math.sqrt(10.0 / 4000)
    assert abs(float(counts.var()) - 10.0) < 1.0
    # log-likelihood of k counts at rate 10: k log 10 - 10 - log k!
    ll = PoissonNoise(dose).log_likelihood(y[:1], torch.tensor([[0.24]], dtype=torch.float64))
    assert float(ll) == pytest.approx(12 * math.log(10.0) - 10.0 - math.lgamma(13), rel=1e-9)
    with pytest.raises(ValueError, match="dose must be > 0"):
        PoissonNoise(0.0)


def test_gaussian_noise_likelihood_matches_formula():
    noise = GaussianNoise(0.5)
    pred = torch.zeros(1, 3, dtype=torch.float64)
    obs = torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)
    expected = -(0.25 + 1.0) / (2 * 0.25) - 3 * math.log(0.5 * math.sqrt(2 * math.pi))
    assert float(noise.log_likelihood(pred, obs)) == pytest.approx(expected, rel=1e-12)


def _read(store):
    import zarr

    g = zarr.open_group(str(store), mode="r")
    return g["index"][:], g["value"][:]


def test_map_to_zarr_embedded_vs_process_cluster(tmp_path):
    from dask.distributed import LocalCluster
    from emverse.parallel import map_to_zarr
    from emverse.testing import demo_chunk

    map_to_zarr(demo_chunk, 23, tmp_path / "a.zarr", chunk_size=5, seed=3)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        map_to_zarr(demo_chunk, 23, tmp_path / "b.zarr", chunk_size=5, seed=3, scheduler=cluster.scheduler_address)
    ia, va = _read(tmp_path / "a.zarr")
    ib, vb = _read(tmp_path / "b.zarr")
    np.testing.assert_array_equal(ia, np.arange(23))
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(va, vb)
    map_to_zarr(demo_chunk, 23, tmp_path / "c.zarr", chunk_size=5, seed=4)
    assert not np.array_equal(_read(tmp_path / "c.zarr")[1], va)


def test_map_to_zarr_resumes_without_recomputing(tmp_path, monkeypatch):
    from emverse.errors import EmverseError
    from emverse.parallel import is_complete, map_to_zarr
    from emverse.testing import demo_chunk

    log = tmp_path / "log.txt"
    monkeypatch.setenv("EMVERSE_DEMO_LOG", str(log))
    monkeypatch.setenv("EMVERSE_DEMO_FAIL_AT", "10")
    store = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="demo failure"):
        map_to_zarr(demo_chunk, 20, store, chunk_size=5, seed=1)
    assert not is_complete(store)
    import zarr

    done_after_failure = zarr.open_group(str(store))["_done"][:]
    assert list(done_after_failure) == [True, True, False, True]  # the finished chunks were kept
    monkeypatch.delenv("EMVERSE_DEMO_FAIL_AT")
    log.write_text("")
    map_to_zarr(demo_chunk, 20, store, chunk_size=5, seed=1)
    assert sorted(int(x) for x in log.read_text().split()) == [10]  # only the missing chunk ran
    assert is_complete(store)
    # the resumed store equals an uninterrupted one
    map_to_zarr(demo_chunk, 20, tmp_path / "fresh.zarr", chunk_size=5, seed=1)
    np.testing.assert_array_equal(_read(store)[1], _read(tmp_path / "fresh.zarr")[1])
    with pytest.raises(EmverseError, match="use a new store path"):
        map_to_zarr(demo_chunk, 20, store, chunk_size=4, seed=1)


def test_options_task_keeps_its_options_record():
    """A task with many options keeps the validated record itself (the same object the
    runner hands out as ``ctx.options``) rather than unpacking it into keyword arguments."""
    from emverse.interfaces import OptionsTask

    class Echo(OptionsTask):
        def run(self, ctx):
            return self.options

    record = object()
    task = Echo.from_params(record)
    assert task.options is record and task.run(None) is record
    assert Echo().options is None
