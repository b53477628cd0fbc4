"""Training loop: exact resume, Zarr data, bad input, and DDP (2 CPU processes) vs one process."""

import textwrap

import numpy as np
import pytest
import torch
from emverse.checkpoint import load_checkpoint
from emverse.errors import EmverseError
from emverse_diffusion.components import MLPDiffusionPrior
from emverse_diffusion.objectives import AdaptiveLogSNRSampler, DiffusionObjective, LossWeighting
from emverse_diffusion.schedules import CosineSchedule
from emverse_diffusion.training import TensorData, TrainConfig, ZarrData, train


def _data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorData(x, x @ torch.ones(3, 2) + 0.1 * torch.randn(n, 2, generator=g))


def _prior(seed=0, adaptive=False):
    torch.manual_seed(seed)
    prior = MLPDiffusionPrior(dim=3, condition_dim=2, hidden=16, depth=1, time_features=8, schedule=CosineSchedule())
    if adaptive:
        prior.objective = DiffusionObjective("v", LossWeighting("sigmoid", bias=2.0), AdaptiveLogSNRSampler(bins=10))
    return prior


def _config(**kw):
    base = dict(steps=30, batch_size=64, learning_rate=3e-3, ema_decay=0.9, checkpoint_every=10, seed=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("adaptive", [False, True], ids=["uniform-t", "adaptive-logsnr"])
def test_interrupted_and_resumed_training_gives_identical_weights(tmp_path, adaptive):
    data = _data()
    straight = _prior(adaptive=adaptive)
    full = train(straight, data, _config(), out_dir=tmp_path / "a", progress=False)

    resumed = _prior(adaptive=adaptive)
    crashed = train(resumed, data, _config(), out_dir=tmp_path / "b", stop_after=23, progress=False)
    assert crashed.interrupted and crashed.step == 23
    # a fresh process would rebuild the model from scratch: new (different) initial weights
    resumed = _prior(seed=99, adaptive=adaptive)
    again = train(resumed, data, _config(), out_dir=tmp_path / "b", progress=False)
    assert again.resumed_from == 20  # the last checkpoint before the crash
    for (name, a), (_, b) in zip(straight.network.state_dict().items(), resumed.network.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for name in full.ema:
        assert torch.equal(full.ema[name], again.ema[name]), name
    assert full.history["loss"] == again.history["loss"]
    ckpt = load_checkpoint(tmp_path / "b" / "model.safetensors")
    assert ckpt.metadata["step"] == 30 and any(k.startswith("ema.") for k in ckpt.tensors)


def test_resume_refuses_changed_settings(tmp_path):
    data = _data()
    train(_prior(), data, _config(steps=10), out_dir=tmp_path, stop_after=None, progress=False)
    with pytest.raises(EmverseError, match="settings changed.*batch_size: checkpoint 64, now 32"):
        train(_prior(), data, _config(steps=20, batch_size=32), out_dir=tmp_path, progress=False)


def test_zarr_training_data(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    y = -np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
    g.create_array("parameters", data=x, chunks=(7, 3))
    g.create_array("observations", data=y, chunks=(7, 2))
    data = ZarrData(tmp_path / "d.zarr")
    idx = np.array([33, 2, 17, 5])
    xb, yb = data.get(idx)
    torch.testing.assert_close(xb, torch.from_numpy(x[idx]))
    torch.testing.assert_close(yb, torch.from_numpy(y[idx]))
    result = train(_prior(), data, _config(steps=5, batch_size=16, checkpoint_every=0), progress=False)
    assert len(result.history["loss"]) == 5
    with pytest.raises(EmverseError, match="has no array 'images'"):
        ZarrData(tmp_path / "d.zarr", x_key="images")


def test_bad_training_input():
    with pytest.raises(EmverseError, match="fewer than batch_size = 1024"):
        train(_prior(), _data(100), _config(batch_size=1024), progress=False)
    with pytest.raises(EmverseError, match="ema_decay = 1.5"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(EmverseError, match="steps = 0"):
        TrainConfig(steps=0)
    with pytest.raises(EmverseError, match="x has 3 samples but condition has 2"):
        TensorData(torch.zeros(3, 1), torch.zeros(2, 1))


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from emverse_diffusion.components import MLPDiffusionPrior
    from emverse_diffusion.schedules import CosineSchedule
    from emverse_diffusion.training import TensorData, TrainConfig, train
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    data = TensorData(x, x @ torch.ones(3, 2))
    torch.manual_seed(0)
    prior = MLPDiffusionPrior(dim=3, condition_dim=2, hidden=16, depth=1, time_features=8, schedule=CosineSchedule())
    config = TrainConfig(steps=20, batch_size=64, learning_rate=3e-3, ema_decay=0.9, seed=5)
    train(prior, data, config, out_dir=sys.argv[1], progress=False)
    """
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_one_process(tmp_path):
    from emverse.testing.distributed import two_processes_and_one

    two_processes_and_one(DDP_SCRIPT, tmp_path)
    ddp = load_checkpoint(tmp_path / "ddp" / "model.safetensors")
    single = load_checkpoint(tmp_path / "single" / "model.safetensors")
    assert ddp.metadata["world_size"] == 2 and single.metadata["world_size"] == 1
    for name, value in single.tensors.items():
        torch.testing.assert_close(ddp.tensors[name], value, rtol=1e-5, atol=1e-6, msg=name)
