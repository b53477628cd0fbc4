"""The training objective: adaptive logSNR sampler, weighting, a short fit."""

import math
from types import SimpleNamespace

import pytest
import torch
from emverse_mep.train import AdaptiveLogSNRSampler, gaussian_weight, train_prior
from emverse_mep.unet3d import UNet3DPrior


def test_adaptive_sampler_is_unbiased_for_any_bin_masses():
    """E_q[f(λ)/q(λ)] = E_uniform[f(λ)] whatever the bin weights are."""
    sampler = AdaptiveLogSNRSampler(-10.0, 10.0, bins=20)
    sampler.weights = torch.rand(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 4
    lam, q, _ = sampler.sample(200_000, torch.Generator().manual_seed(1))
    f = torch.exp(-0.5 * ((lam - 2.0) / 1.5) ** 2)
    estimate = float((f / q).mean())
    exact = 1.5 * math.sqrt(2 * math.pi) / 20.0  # ∫f dλ / (λ_max − λ_min); tails beyond ±10 negligible
    assert estimate == pytest.approx(exact, rel=0.02)


def test_adaptive_sampler_follows_the_loss():
    sampler = AdaptiveLogSNRSampler(-10.0, 10.0, bins=10)
    idx = torch.arange(10)
    for _ in range(50):
        sampler.update(idx, torch.where(idx < 3, 10.0, 0.1).to(torch.float64))
    p = sampler.probabilities()
    assert float(p[:3].sum()) > 0.9


def test_gaussian_weight():
    lam = torch.tensor([-2.0, 1.0, -5.0])
    w = gaussian_weight(lam, -2.0, 3.0)
    assert float(w[0]) == 1.0
    assert float(w[1]) == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert float(w[2]) == pytest.approx(math.exp(-0.5), rel=1e-6)


class _Ctx:
    device = torch.device("cpu")
    dtype = torch.float32

    def generator(self, name="default"):
        return torch.Generator().manual_seed(abs(hash(name)) % 1000)

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
    x̂₀ = 0 (MSE 1) and the loss must fall."""
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64, 1, 1, 1), generator=gen).float() * 2 - 1
    volumes = signs.expand(64, 4, 16, 16).clone()
    prior = UNet3DPrior((4, 16, 16), channels=(8, 8, 8, 8), blocks_per_stage=1, attention_from_stage=3,
                        attention_heads=2, groups=4, logsnr_min=-10, logsnr_max=10)
    opts = SimpleNamespace(learning_rate=3e-3, weight_decay=0.0, adaptive_bins=20, steps=120, batch_size=8,
                           flip_augment=True, weight_mean=0.0, weight_std=4.0, grad_clip=1.0, ema_decay=0.9,
                           log_every=20)
    out = train_prior(prior, volumes, opts, _Ctx())
    assert out["history"]["loss"][-1] < 0.5 * out["history"]["loss"][0]
    assert out["x0_mse_logsnr+2"] < 0.2 * out["zero_mse_logsnr+2"]
