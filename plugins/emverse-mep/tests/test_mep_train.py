"""The training loop (v-objective with emverse-diffusion's weighting and adaptive λ sampler): a short fit."""

import zlib
from types import SimpleNamespace

import pytest
import torch
from emverse_mep.train import train_prior
from emverse_mep.unet3d import UNet3DPrior


class _Ctx:
    device = torch.device("cpu")
    dtype = torch.float32

    def generator(self, name="default"):
        return torch.Generator().manual_seed(zlib.crc32(name.encode()))

    def progress(self, it, **kwargs):
        return it

    class log:  # noqa: N801 - a stand-in logger
        @staticmethod
        def info(*args):
            pass


@pytest.mark.slow
def test_short_training_beats_the_zero_denoiser():
    """Known answer: volumes that are ±1 blocks (the sign is the only unknown).
    After a short fit the x̂₀ error at λ = +2 must be well below the trivial
    x̂₀ = 0 (MSE 1) and the (EMA-smoothed) loss must fall to under half its start."""
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64, 1, 1, 1), generator=gen).float() * 2 - 1
    volumes = signs.expand(64, 4, 16, 16).clone()
    prior = UNet3DPrior((4, 16, 16), channels=(8, 8, 8, 8), blocks_per_stage=1, attention_from_stage=3,
                        attention_heads=2, groups=4, logsnr_min=-10, logsnr_max=10)
    opts = SimpleNamespace(learning_rate=3e-3, weight_decay=0.0, adaptive_bins=20, steps=200, batch_size=8,
                           flip_augment=True, weight_mean=0.0, weight_std=4.0, grad_clip=1.0, ema_decay=0.9,
                           log_every=20)
    out = train_prior(prior, volumes, opts, _Ctx())
    assert out["history"]["loss"][-1] < 0.5 * out["history"]["loss"][0]
    assert out["x0_mse_logsnr+2"] < 0.2 * out["zero_mse_logsnr+2"]
