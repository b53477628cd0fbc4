"""The anisotropic 3D UNet and the prior around it."""

import pytest
import torch
from emverse.errors import EmverseError
from emverse_mep.unet3d import UNet3D, UNet3DPrior, count_parameters, lateral_stages

TINY = dict(channels=(4, 8, 8, 8), blocks_per_stage=1, attention_from_stage=3, attention_heads=2, groups=4)


def test_lateral_stages_reach_isotropic_sampling():
    assert lateral_stages((1.6, 0.2, 0.2)) == 3  # 0.2 → 0.4 → 0.8 → 1.6 Å
    assert lateral_stages((0.8, 0.2, 0.2)) == 2
    assert lateral_stages((0.2, 0.2, 0.2)) == 0


def test_resampling_is_lateral_first_then_uniform():
    net = UNet3D((4, 32, 32), (1.6, 0.2, 0.2), channels=(4, 8, 8, 8, 8), blocks_per_stage=1,
                 attention_from_stage=3, attention_heads=2, groups=4)
    assert net.strides == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
             for m in net.downsample]
    out = net(torch.randn(2, 4, 32, 32), torch.zeros(2))
    for h in hooks:
        h.remove()
    assert shapes == [(4, 16, 16), (4, 8, 8), (4, 4, 4), (2, 2, 2)]  # isotropic voxels after stage 3
    assert out.shape == (2, 4, 32, 32)
    attention = [type(m).__name__ for m in net.down[3]]
    assert "Attention" in attention and "Attention" not in [type(m).__name__ for m in net.down[0]]


def test_unet_handles_sizes_not_divisible_and_rejects_bad_input():
    net = UNet3D((4, 20, 20), (1.6, 0.2, 0.2), **TINY)
    assert net(torch.randn(1, 4, 20, 20), torch.zeros(1)).shape == (1, 4, 20, 20)
    with pytest.raises(EmverseError, match="expected"):
        net(torch.randn(1, 4, 16, 16), torch.zeros(1))
    with pytest.raises(EmverseError, match="divisible"):
        UNet3D((3, 32, 32), (1.6, 0.2, 0.2), channels=(4, 8, 8, 8, 8), blocks_per_stage=1, groups=4)


def test_prior_denoise_is_v_parameterised():
    prior = UNet3DPrior((4, 16, 16), **TINY)
    x = torch.randn(3, 4, 16, 16)
    t = torch.tensor([0.2, 0.5, 0.9])
    lam = prior.schedule.logsnr(t)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    v = prior.predict_v(x, lam)
    expected = alpha.view(-1, 1, 1, 1) * x - sigma.view(-1, 1, 1, 1) * v
    torch.testing.assert_close(prior.denoise(x, t), expected)
    # λ(t) linear from logsnr_max (t = 0) to logsnr_min (t = 1)
    assert float(prior.schedule.logsnr(torch.tensor(0.0))) == pytest.approx(20.0)
    assert float(prior.schedule.logsnr(torch.tensor(1.0))) == pytest.approx(-20.0)


def test_checkpoint_round_trip_and_shape_mismatch(tmp_path):
    prior = UNet3DPrior((4, 16, 16), **TINY)
    prior.phase_scale = 12.5
    for p in prior.network.parameters():
        torch.nn.init.normal_(p, std=0.01)
    path = tmp_path / "prior.safetensors"
    prior.save(path)
    again = UNet3DPrior((4, 16, 16), **TINY)
    again.load(path)
    assert again.phase_scale == 12.5
    x, lam = torch.randn(1, 4, 16, 16), torch.zeros(1)
    torch.testing.assert_close(again.predict_v(x, lam), prior.predict_v(x, lam))
    other = UNet3DPrior((8, 16, 16), **TINY)
    with pytest.raises(EmverseError, match="trained on volumes of shape"):
        other.load(path)
    with pytest.raises(EmverseError, match="does not exist"):
        other.load(tmp_path / "missing.safetensors")


def test_paper_scale_unet_has_about_100m_parameters():
    with torch.device("meta"):
        net = UNet3D((16, 100, 100), (1.6, 0.2, 0.2), channels=(28, 56, 112, 224, 448), blocks_per_stage=2,
                     attention_from_stage=3, attention_heads=8, groups=8)
    n = count_parameters(net)
    assert 80e6 < n < 130e6
