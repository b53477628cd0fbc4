"""Networks of the CBED CDI paper: a ResNet image encoder, the cross-modal
transformer denoiser and the regression baseline.

Architecture (paper §3.3 and appendix B.3):

* a ResNet (He et al. 2016; BasicBlock for depth 10/18/34, Bottleneck for 50)
  followed by one extra downsampling convolution (3×3, stride 2, padding 1)
  and one more residual block, so the total stride is 64 with the ImageNet
  stem (or 16 with the ``"small"`` stem used at CPU scale);
* the final feature map (C, h, w) is flattened into h·w vision tokens and
  projected to the token width F by one ``Linear(C, F)``;
* each of the P parameters becomes one token through its own ``Linear(1, F)``;
* the diffusion time step becomes one token through a sinusoidal embedding
  (Vaswani et al. 2017) and a ``Linear(F, F)``;
* a pre-norm ``TransformerEncoder`` runs over the P + 1 + h·w tokens;
* one ``Linear(F, 1)`` per parameter token decodes the predicted noise ε.

The paper's positional information for the vision tokens is implicit in the
convolutional features (§6); no positional embedding is added here either.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: blocks per stage for each supported depth, and whether it uses Bottleneck
RESNET_LAYOUTS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    10: ((1, 1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
}


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-10/18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 with a 4× channel expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ResNetEncoder(nn.Module):
    """ResNet-{10,18,34,50} feature extractor with the paper's extra downsampling stage.

    Input: (B, 1, H, W) patterns. Output: (B, C, H/s, W/s) features with
    ``s = 64`` for ``stem="imagenet"`` (7×7/2 conv + 3×3/2 max-pool) and
    ``s = 16`` for ``stem="small"`` (one 3×3/1 conv; for 32–64 px patterns).
    ``width`` is the channel count of the first stage (64 in the paper).
    """

    def __init__(
        self,
        depth: int = 34,
        width: int = 64,
        stem: str = "imagenet",
        extra_stage: bool = True,
        in_channels: int = 1,
    ):
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(
                f"encoder depth {depth!r} is not supported; use one of {sorted(RESNET_LAYOUTS)}"
            )
        if stem not in ("imagenet", "small"):
            raise ValueError(f"encoder stem {stem!r} is unknown; use 'imagenet' or 'small'")
        blocks, bottleneck = RESNET_LAYOUTS[depth]
        block = Bottleneck if bottleneck else BasicBlock
        self.depth = depth
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            stem_stride = 4
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            stem_stride = 1
        stages = []
        channels_in = width
        for i, n_blocks in enumerate(blocks):
            channels = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n_blocks):
                layers.append(block(channels_in, channels, stride if j == 0 else 1))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        stride_total = stem_stride * 8
        if extra_stage:
            # Appendix B.3: a 3×3/2 convolution (512 features at paper scale) and one more block.
            extra_channels = width * 8
            self.extra = nn.Sequential(
                nn.Conv2d(channels_in, extra_channels, 3, 2, 1, bias=False),
                nn.BatchNorm2d(extra_channels),
                nn.ReLU(inplace=True),
                BasicBlock(extra_channels, extra_channels),
            )
            channels_in = extra_channels
            stride_total *= 2
        else:
            self.extra = nn.Identity()
        self.out_channels = channels_in
        self.stride = stride_total

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extra(self.stages(self.stem(images)))


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of (B,) time steps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PerParameterLinear(nn.Module):
    """P independent ``Linear(in, out)`` maps, one per parameter, applied in one einsum."""

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, in) -> (B, n, out)
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class CdiDenoiser(nn.Module):
    """ε-prediction network ε_θ(x_t, t, pattern) of the CBED CDI paper.

    ``forward(x_t, t, images)``: x_t (B, P) normalised noisy parameters,
    t (B,) integer diffusion steps, images (B, 1, H, W) -> ε̂ (B, P).
    :meth:`encode` and :meth:`denoise_tokens` split the work so a sampler can
    encode each pattern once and reuse its vision tokens at every step.
    """

    def __init__(
        self,
        n_parameters: int = 13,
        encoder_depth: int = 34,
        encoder_width: int = 64,
        encoder_stem: str = "imagenet",
        token_dim: int = 256,
        n_layers: int = 8,
        n_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
    ):
        super().__init__()
        if token_dim % n_heads:
            raise ValueError(
                f"token_dim {token_dim} is not divisible by n_heads {n_heads}; pick a multiple"
            )
        self.n_parameters = n_parameters
        self.token_dim = token_dim
        self.encoder = ResNetEncoder(encoder_depth, encoder_width, encoder_stem)
        self.vision_projection = nn.Linear(self.encoder.out_channels, token_dim)
        self.parameter_tokens = PerParameterLinear(n_parameters, 1, token_dim)
        self.time_projection = nn.Linear(token_dim, token_dim)
        layer = nn.TransformerEncoderLayer(
            token_dim,
            n_heads,
            ffn_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(token_dim)
        self.decoders = PerParameterLinear(n_parameters, token_dim, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, h·w, F) vision tokens."""
        features = self.encoder(images)
        return self.vision_projection(features.flatten(2).transpose(1, 2))

    def denoise_tokens(
        self, x_t: torch.Tensor, t: torch.Tensor, vision_tokens: torch.Tensor
    ) -> torch.Tensor:
        parameter_tokens = self.parameter_tokens(x_t.unsqueeze(-1))
        time_token = self.time_projection(sinusoidal_embedding(t, self.token_dim)).unsqueeze(1)
        tokens = torch.cat([parameter_tokens, time_token.to(x_t.dtype), vision_tokens], dim=1)
        hidden = self.final_norm(self.transformer(tokens))
        return self.decoders(hidden[:, : self.n_parameters]).squeeze(-1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.denoise_tokens(x_t, t, self.encode(images))


class RegressionNet(nn.Module):
    """Regression baseline: ResNet encoder, global average pool, ``Linear(C, P)``.

    The extra downsampling stage of the CDI encoder is not used (a plain
    ResNet, as the baselines of the paper's Table 1).
    """

    def __init__(
        self,
        n_parameters: int = 13,
        depth: int = 34,
        width: int = 64,
        stem: str = "imagenet",
    ):
        super().__init__()
        self.encoder = ResNetEncoder(depth, width, stem, extra_stage=False)
        self.head = nn.Linear(self.encoder.out_channels, n_parameters)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images).mean(dim=(2, 3)))
