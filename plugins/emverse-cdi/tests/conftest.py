import pytest
import torch


@pytest.fixture
def tiny_prior_kwargs():
    return dict(encoder_depth=10, encoder_width=4, encoder_stem="small", token_dim=16, n_layers=1,
                n_heads=2, ffn_dim=32, crop_size=16, input_size=16, steps=50, beta_start=1e-3,
                beta_end=0.2, ema_decay=0.99)


@pytest.fixture
def tiny_regression_kwargs():
    return dict(depth=10, width=4, stem="small", crop_size=16, input_size=16)


@pytest.fixture
def patterns():
    return torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
