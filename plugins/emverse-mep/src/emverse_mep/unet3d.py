"""``mep.unet3d``: a 3D UNet diffusion prior over (depth, H, W) phase volumes.

Architecture (MEP-Diffusion, appendix D): the voxels are anisotropic
(1.6 Å deep, 0.2 Å lateral), so the first stages downsample only H and W
(stride (1, 2, 2)) until the lateral sampling equals the depth sampling
(0.2 → 1.6 Å: three lateral stages), then the deeper stages downsample all
three axes (stride 2); self-attention in the deep stages and the bottleneck
(ResBlock, Attention, ResBlock); the way up mirrors this (3D upsampling first,
lateral-only last). Each down stage hands its activations to the matching up
stage (skip connections).

Diffusion: variance preserving in continuous logSNR λ (α² = sigmoid(λ),
σ² = sigmoid(−λ)); the network predicts v = α ε − σ x₀ from (x_λ, λ), so
x̂₀ = α x_λ − σ v̂ (Salimans & Ho 2022; Kingma & Gao 2023). The schedule
object is emverse-diffusion's :class:`LogSNRSchedule` (linear in t from
λ_max to λ_min), so any emverse sampler integrates this prior.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from emverse.errors import EmverseError
from emverse.interfaces import DiffusionPrior
from torch import nn


def lateral_stages(sampling_angstrom) -> int:
    """Number of ×2 lateral downsamplings that make the lateral sampling
    reach the depth sampling (1.6 / 0.2 = 8 → 3)."""
    dz, dx, dy = sampling_angstrom
    if not math.isclose(dx, dy):
        raise EmverseError(f"sampling_angstrom {tuple(sampling_angstrom)}: H and W sampling must be equal")
    ratio = dz / dx
    n = int(round(math.log2(ratio))) if ratio >= 1 else 0
    return max(n, 0)


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class LogSNREmbedding(nn.Module):
    """Fourier features of λ/λ_scale followed by an MLP."""

    def __init__(self, dim: int, n_freq: int = 16, scale: float = 20.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), n_freq)) * math.pi)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq + 1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, logsnr: torch.Tensor) -> torch.Tensor:
        u = (logsnr / self.scale).unsqueeze(-1)
        angles = u * self.freqs
        return self.mlp(torch.cat([u, angles.sin(), angles.cos()], dim=-1))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over all voxels of a (deep, small) feature map."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        heads = max(1, min(heads, channels))
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.out = nn.Conv3d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, emb=None):
        b, c, d, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, d * h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(out.transpose(-1, -2).reshape(b, c, d, h, w))


class UNet3D(nn.Module):
    """v̂(x_λ, λ) for volumes of shape (B, D, H, W) (one channel)."""

    def __init__(
        self,
        event_shape=(8, 64, 64),
        sampling_angstrom=(1.6, 0.2, 0.2),
        channels=(16, 32, 64, 128, 256),
        blocks_per_stage: int = 2,
        attention_from_stage: int = 3,
        attention_heads: int = 4,
        groups: int = 8,
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        channels = tuple(int(c) for c in channels)
        n_stages = len(channels)
        n_lat = min(lateral_stages(sampling_angstrom), n_stages - 1)
        #: stride of the downsampling after stage i (i = 0 … n_stages−2)
        self.strides = [(1, 2, 2) if i < n_lat else (2, 2, 2) for i in range(n_stages - 1)]
        depth_factor = 2 ** sum(s[0] == 2 for s in self.strides)
        self.lateral_factor = 2 ** len(self.strides)
        if self.event_shape[0] % depth_factor:
            raise EmverseError(
                f"event_shape {self.event_shape}: depth {self.event_shape[0]} must be divisible by "
                f"{depth_factor} (2 per 3D stage); use fewer channels stages or a deeper volume"
            )
        emb_dim = 4 * channels[0]
        self.embed = LogSNREmbedding(emb_dim)
        self.stem = nn.Conv3d(1, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = []
        for i, c in enumerate(channels):
            c_prev = channels[max(i - 1, 0)]
            stage = nn.ModuleList()
            for b in range(blocks_per_stage):
                stage.append(ResBlock(c_prev if b == 0 else c, c, emb_dim, groups))
                if i >= attention_from_stage:
                    stage.append(Attention(c, attention_heads, groups))
                skip_channels.append(c)
            self.down.append(stage)
            if i < n_stages - 1:
                self.downsample.append(nn.Conv3d(c, c, 3, stride=self.strides[i], padding=1))
        c_mid = channels[-1]
        self.mid = nn.ModuleList([
            ResBlock(c_mid, c_mid, emb_dim, groups),
            Attention(c_mid, attention_heads, groups),
            ResBlock(c_mid, c_mid, emb_dim, groups),
        ])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        c_cur = c_mid
        for i in reversed(range(n_stages)):
            c = channels[i]
            stage = nn.ModuleList()
            for _b in range(blocks_per_stage):
                stage.append(ResBlock(c_cur + skip_channels.pop(), c, emb_dim, groups))
                c_cur = c
                if i >= attention_from_stage:
                    stage.append(Attention(c, attention_heads, groups))
            self.up.append(stage)
            if i > 0:
                self.upsample.append(nn.Conv3d(c, channels[i - 1], 3, padding=1))
                c_cur = channels[i - 1]
        self.head_norm = nn.GroupNorm(_groups(channels[0], groups), channels[0])
        self.head = nn.Conv3d(channels[0], 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise EmverseError(
                f"UNet3D input has shape {tuple(x.shape)}; expected (batch, *{self.event_shape})"
            )
        b, d, h, w = x.shape
        f = self.lateral_factor
        pad_h, pad_w = (-h) % f, (-w) % f
        # circular padding: crystal volumes are (nearly) periodic laterally
        z = F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x
        emb = self.embed(logsnr.to(x.dtype).reshape(b))
        z = self.stem(z.unsqueeze(1))
        skips = []
        for i, stage in enumerate(self.down):
            for layer in stage:
                z = layer(z, emb)
                if isinstance(layer, ResBlock):
                    skips.append(z)
            if i < len(self.downsample):
                z = self.downsample[i](z)
        for layer in self.mid:
            z = layer(z, emb)
        for j, stage in enumerate(self.up):
            for layer in stage:
                if isinstance(layer, ResBlock):
                    z = layer(torch.cat([z, skips.pop()], dim=1), emb)
                else:
                    z = layer(z, emb)
            if j < len(self.upsample):
                stride = self.strides[len(self.strides) - 1 - j]
                z = self.upsample[j](F.interpolate(z, scale_factor=stride, mode="nearest"))
        out = self.head(F.silu(self.head_norm(z))).squeeze(1)
        return out[:, :, :h, :w]


class UNet3DPrior(DiffusionPrior):
    """Unconditional diffusion prior over rescaled phase volumes (std ≈ 1).

    ``denoise(x_t, t)`` returns x̂₀ = α x_t − σ v̂ with λ = schedule.logsnr(t).
    ``phase_scale`` (1/rad, from the training data) converts a draw back to
    phase: φ = x / phase_scale.
    """

    def __init__(
        self,
        event_shape=(8, 64, 64),
        sampling_angstrom=(1.6, 0.2, 0.2),
        channels=(16, 32, 64, 128, 256),
        blocks_per_stage: int = 2,
        attention_from_stage: int = 3,
        attention_heads: int = 4,
        groups: int = 8,
        checkpoint: str = "",
        logsnr_min: float = -20.0,
        logsnr_max: float = 20.0,
    ):
        super().__init__()
        from emverse_diffusion.schedules import LogSNRSchedule

        self.event_shape = tuple(int(s) for s in event_shape)
        self.config = {
            "event_shape": list(self.event_shape),
            "sampling_angstrom": [float(s) for s in sampling_angstrom],
            "channels": [int(c) for c in channels],
            "blocks_per_stage": int(blocks_per_stage),
            "attention_from_stage": int(attention_from_stage),
            "attention_heads": int(attention_heads),
            "groups": int(groups),
            "logsnr_min": float(logsnr_min),
            "logsnr_max": float(logsnr_max),
        }
        self.network = UNet3D(
            event_shape, sampling_angstrom, channels, blocks_per_stage,
            attention_from_stage, attention_heads, groups,
        )
        self.schedule = LogSNRSchedule(logsnr_min, logsnr_max, shape="linear")
        self.phase_scale = 1.0
        self.checkpoint_path = checkpoint

    @classmethod
    def from_params(cls, params, ctx=None):
        import attrs

        kwargs = attrs.asdict(params, recurse=False)
        path = kwargs.pop("checkpoint")
        prior = cls(**kwargs)
        if path:
            resolved = ctx.resolve_path(path) if ctx is not None else path
            prior.load(resolved)
        return prior

    # -- diffusion ---------------------------------------------------------------
    def predict_v(self, x_t: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        return self.network(x_t, logsnr)

    def denoise(self, x_t, t, condition=None):
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        logsnr = self.schedule.logsnr(t).to(x_t.dtype)
        alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
        sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
        v = self.predict_v(x_t, logsnr)
        return alpha * x_t - sigma * v

    # -- weights -------------------------------------------------------------------
    def load(self, path) -> None:
        """Load weights written by the ``train`` task (``mep-cpu-train.toml``); the checkpoint's volume shape
        and architecture must match this prior's."""
        import json
        from pathlib import Path

        from emverse.checkpoint import load_checkpoint, load_state_dict_strict

        path = Path(path)
        if not path.is_file():
            raise EmverseError(
                f"prior checkpoint {str(path)!r} does not exist; train one with recipes/mep-cpu-train.toml "
                "or leave [prior] checkpoint empty"
            )
        ckpt = load_checkpoint(path)
        meta = ckpt.metadata or {}
        config = meta.get("mep_config")
        if isinstance(config, str):
            config = json.loads(config)
        if not config:
            raise EmverseError(f"prior checkpoint {str(path)!r} has no mep_config metadata; it was not written by training a mep.unet3d prior")
        if list(config["event_shape"]) != list(self.event_shape):
            raise EmverseError(
                f"prior checkpoint {str(path)!r} was trained on volumes of shape {tuple(config['event_shape'])}, "
                f"but [prior] event_shape is {self.event_shape}; set event_shape = {list(config['event_shape'])} "
                "or train a prior for this shape"
            )
        for key in ("channels", "blocks_per_stage", "attention_from_stage", "sampling_angstrom"):
            if config.get(key) != self.config[key]:
                raise EmverseError(
                    f"prior checkpoint {str(path)!r} has {key} = {config.get(key)!r}, the recipe "
                    f"{self.config[key]!r}; make [prior] {key} match the checkpoint"
                )
        load_state_dict_strict(self.network, ckpt.tensors, str(path))
        self.phase_scale = float(meta.get("phase_scale", 1.0))

    def checkpoint_metadata(self) -> dict:
        import json

        return {"mep_config": json.dumps(self.config), "phase_scale": float(self.phase_scale)}

    def save(self, path, recipe: dict | None = None):
        """Write the network's weights with the metadata :meth:`load` checks."""
        from emverse.checkpoint import save_checkpoint

        state = {k: v.detach().cpu().float() for k, v in self.network.state_dict().items()}
        return save_checkpoint(path, state, recipe=recipe, metadata=self.checkpoint_metadata())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
