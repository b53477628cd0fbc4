"""The CDI networks: shapes, strides, per-parameter tokens, configuration errors."""

import pytest
import torch
from emverse_cdi.network import CdiDenoiser, RegressionNet, ResNetEncoder, sinusoidal_embedding


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_resnet_depths_have_total_stride_64_with_imagenet_stem(depth):
    enc = ResNetEncoder(depth=depth, width=4, stem="imagenet")
    out = enc(torch.zeros(2, 1, 128, 128))
    assert enc.stride == 64
    assert out.shape == (2, enc.out_channels, 2, 2)
    # Bottleneck expands the last stage 4×; the extra stage maps it to 8·width channels
    assert enc.out_channels == 4 * 8


def test_paper_geometry_gives_25_vision_tokens():
    # appendix B.3: stride 64 and a 5×5 feature map -> 25 vision tokens
    net = CdiDenoiser(encoder_depth=10, encoder_width=4, token_dim=16, n_layers=1, n_heads=2,
                      ffn_dim=32)
    tokens = net.encode(torch.zeros(1, 1, 320, 320))
    assert tokens.shape == (1, 25, 16)


def test_block_counts_match_resnet_definitions():
    def n_blocks(depth):
        enc = ResNetEncoder(depth=depth, width=4, extra_stage=False)
        return sum(len(stage) for stage in enc.stages)

    assert [n_blocks(d) for d in (10, 18, 34, 50)] == [4, 8, 16, 16]


def test_parameter_tokens_are_independent_linear_maps():
    net = CdiDenoiser(n_parameters=5, encoder_depth=10, encoder_width=4, encoder_stem="small",
                      token_dim=8, n_layers=1, n_heads=2, ffn_dim=16)
    x = torch.randn(3, 5)
    base = net.parameter_tokens(x.unsqueeze(-1))
    x2 = x.clone()
    x2[:, 2] += 1.0
    moved = net.parameter_tokens(x2.unsqueeze(-1))
    changed = (moved - base).abs().sum(dim=(0, 2))
    assert changed[2] > 0
    assert torch.all(changed[[0, 1, 3, 4]] == 0)
    # each token is an affine function of its own scalar: token(x+1) - token(x) = W_i
    torch.testing.assert_close(moved[:, 2] - base[:, 2], net.parameter_tokens.weight[2, 0].expand(3, -1))


def test_denoiser_output_shape_and_time_dependence():
    torch.manual_seed(0)
    net = CdiDenoiser(n_parameters=13, encoder_depth=10, encoder_width=4, encoder_stem="small",
                      token_dim=16, n_layers=2, n_heads=4, ffn_dim=32)
    net.eval()
    x = torch.randn(2, 13)
    images = torch.rand(2, 1, 32, 32)
    e1 = net(x, torch.tensor([1, 1]), images)
    e2 = net(x, torch.tensor([500, 500]), images)
    assert e1.shape == (2, 13)
    assert not torch.allclose(e1, e2)
    # tokens path equals the one-shot path
    torch.testing.assert_close(net.denoise_tokens(x, torch.tensor([1, 1]), net.encode(images)), e1)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 4)
    # frequencies 1 and 1e-2 for dim 4: [sin(t), sin(t/100), cos(t), cos(t/100)]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                             [torch.sin(torch.tensor(1.0)), torch.sin(torch.tensor(0.01)),
                              torch.cos(torch.tensor(1.0)), torch.cos(torch.tensor(0.01))]])
    torch.testing.assert_close(emb, expected)


def test_regression_net_shape():
    net = RegressionNet(13, depth=18, width=4, stem="small")
    assert net(torch.zeros(2, 1, 24, 24)).shape == (2, 13)


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="depth 12"):
        ResNetEncoder(depth=12)
    with pytest.raises(ValueError, match="stem"):
        ResNetEncoder(depth=10, stem="tiny")
    with pytest.raises(ValueError, match="divisible"):
        CdiDenoiser(token_dim=30, n_heads=8, encoder_depth=10, encoder_width=4)
