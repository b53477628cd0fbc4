"""Network shapes, the KL term, and checkpoint round trips."""

import pytest
import torch
from emverse.errors import EmverseError
from emverse_cbldm.models import (
    CNNBaseline,
    MatrixDecoder,
    MatrixVAE,
    MLPBaseline,
    PdfVAE,
    gaussian_kl,
)
from emverse_cbldm.prior import CbLDMPrior


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (
        torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(4)
    )
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), ref)
    torch.testing.assert_close(
        gaussian_kl(mu_q, lv_q),
        torch.distributions.kl_divergence(
            q, torch.distributions.Normal(torch.zeros_like(mu_q), torch.ones_like(mu_q))
        )
        .flatten(1)
        .sum(1),
    )


@pytest.mark.parametrize("block", [32, 64])
def test_shapes(block):
    pdf = torch.rand(2, 3000)
    blocks = torch.rand(2, 4, block, block)
    vae = PdfVAE(4)
    mu, logvar = vae.encode(pdf)
    assert mu.shape == (2, 2, 125) and vae.decode(mu).shape == (2, 3000)
    assert vae.embed(pdf).shape == (2, 250)
    mvae = MatrixVAE(block, 8, 4)
    mu, logvar, mu_p, logvar_p = mvae.encode(blocks, pdf)
    assert mu.shape == mu_p.shape == (2, 1, 8, 8)
    out = mvae.decode(mu)
    assert (
        out.shape == blocks.shape
        and float(out.detach().min()) >= 0
        and float(out.detach().max()) <= 1
    )
    assert MLPBaseline(block, 8, 4)(pdf).shape == blocks.shape
    assert CNNBaseline(block, 8, 4)(pdf).shape == blocks.shape
    with pytest.raises(EmverseError, match="power of two"):
        MatrixDecoder(block, 12, 4)


@pytest.mark.parametrize("decoder", ["conv", "coordinates"])
def test_conditional_prior_learns_from_the_kl_only(decoder):
    # the encoder sees μ_p as an input channel; the reconstruction must not train the prior
    # through it, or μ_p stops being a prior (the accelerated sampler draws from it)
    torch.manual_seed(0)
    mvae = MatrixVAE(32, 8, 4, decoder)
    pdf, blocks = torch.rand(3, 3000), torch.rand(3, 4, 32, 32)
    mvae.loss(blocks, pdf, kl_weight=0.0)[0].backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in mvae.prior.parameters())
    assert float(mvae.encoder.net[0].weight.grad.abs().max()) > 0.0
    mvae.zero_grad()
    mvae.loss(blocks, pdf, kl_weight=1.0)[0].backward()
    assert float(mvae.prior.net[0].weight.grad.abs().max()) > 0.0


def test_checkpoint_round_trip(tmp_path):
    from emverse.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = CbLDMPrior(
        block=32,
        latent_size=8,
        pdf_channels=4,
        matrix_channels=4,
        unet_channels=8,
        baselines=("mlp",),
    )
    model.latent_scale.fill_(2.5)
    path = save_checkpoint(
        tmp_path / "m.safetensors", model.checkpoint_tensors(), metadata=model.checkpoint_metadata()
    )
    loaded = CbLDMPrior.from_checkpoint(path)
    assert float(loaded.latent_scale) == 2.5
    pdf = torch.rand(2, 3000)
    x = torch.randn(2, 1, 8, 8)
    t = torch.full((2,), 0.5)
    torch.testing.assert_close(loaded.denoise(x, t, pdf), model.eval().denoise(x, t, pdf))
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, {"w": torch.zeros(1)})
    with pytest.raises(EmverseError, match="cbldm_config"):
        CbLDMPrior.from_checkpoint(bad)
