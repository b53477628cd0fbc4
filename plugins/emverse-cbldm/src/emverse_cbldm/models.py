"""The three CbLDM networks, their container, and the two direct-regression baselines.

Shapes (B = batch):

* PDF G(r): (B, 3000), divided by its maximum, r = 0, 0.01, …, 29.99 Å.
* Weight matrix: (B, 4, b, b) blocks of the padded (2b × 2b) W (b = 128 in the paper).
* Matrix latent z: (B, 1, L, L) (L = 16 in the paper).
* PDF latent: (B, 2, 125); its mean, flattened (250 values), is the condition embedding.

Stage 1 (:class:`PdfVAE`) compresses the PDF; stage 2 (:class:`MatrixVAE`) encodes W
with the encoder seeing the conditional prior's mean μ_p(PDF) as an extra channel and the
KL term taken against the learned conditional prior p(z | PDF)
(:class:`ConditionalPrior`), the decoder being unconditional; stage 3
(:class:`LatentUNet`) is an ε-prediction denoiser on the (standardised) latents,
conditioned on the PDF embedding through FiLM and cross-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from emverse.errors import EmverseError
from torch import nn

from .clusters import WEIGHT_T_ANGSTROM2 as WEIGHT_T
from .clusters import to_blocks

N_POINTS = 3000
PDF_LATENT = (2, 125)


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None):
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) summed over all but the batch axis."""
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
        logvar_p = torch.zeros_like(logvar_q)
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1)


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class PdfVAE(nn.Module):
    """1D-convolutional VAE of the normalised PDF (3000 points) with a (2, 125) latent."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        lc = PDF_LATENT[0]
        self.encoder = nn.Sequential(
            nn.Conv1d(1, c, 7, stride=2, padding=3),
            nn.GELU(),  # 1500
            nn.Conv1d(c, 2 * c, 5, stride=2, padding=2),
            nn.GELU(),  # 750
            nn.Conv1d(2 * c, 2 * c, 5, stride=2, padding=2),
            nn.GELU(),  # 375
            nn.Conv1d(2 * c, 2 * lc, 3, stride=3),  # 125
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(lc, 2 * c, 3, stride=3),
            nn.GELU(),  # 375
            nn.ConvTranspose1d(2 * c, 2 * c, 4, stride=2, padding=1),
            nn.GELU(),  # 750
            nn.ConvTranspose1d(2 * c, c, 4, stride=2, padding=1),
            nn.GELU(),  # 1500
            nn.ConvTranspose1d(c, 1, 4, stride=2, padding=1),  # 3000
        )

    def encode(self, pdf):
        h = self.encoder(pdf[:, None, :])
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)

    def embed(self, pdf):
        """The condition embedding: the posterior mean, flattened (B, 250)."""
        return self.encode(pdf)[0].flatten(1)

    def decode(self, z):
        return self.decoder(z)[:, 0]

    def loss(self, pdf, generator=None, kl_weight=1e-3):
        mu, logvar = self.encode(pdf)
        eps = _normal_like(mu, generator)
        rec = self.decode(mu + (0.5 * logvar).exp() * eps)
        # the paper's L1(100·) + 0.1·MSE(100·) + β·KL
        recon = (100 * (rec - pdf)).abs().mean(1) + 0.1 * ((100 * (rec - pdf)) ** 2).mean(1)
        return (recon + kl_weight * gaussian_kl(mu, logvar)).mean()


class ConditionalPrior(nn.Module):
    """p(z | PDF) = N(μ_p, diag σ_p²): an MLP 3000 → 128 → 256 → 2·L² (the paper's widths for L = 16)."""

    def __init__(self, latent_size: int = 16):
        super().__init__()
        self.latent_size = latent_size
        self.net = nn.Sequential(
            nn.Linear(N_POINTS, 128),
            nn.GELU(),
            nn.Linear(128, 256),
            nn.GELU(),
            nn.Linear(256, 2 * latent_size**2),
        )

    def forward(self, pdf):
        h = self.net(pdf).view(-1, 2, self.latent_size, self.latent_size)
        return h[:, :1], h[:, 1:].clamp(-12, 6)


class MatrixDecoder(nn.Module):
    """(B, 1, L, L) → (B, 4, b, b) blocks with entries in [0, 1]."""

    def __init__(self, block: int, latent_size: int, channels: int, in_features: int | None = None):
        super().__init__()
        n_up = int(round(math.log2(block / latent_size)))
        if latent_size * 2**n_up != block:
            raise EmverseError(
                f"block side {block} is not latent_size {latent_size} × a power of two; "
                "choose latent_size so that block / latent_size is 2, 4, 8 …"
            )
        widths = [channels * min(2 ** (n_up - i), 8) for i in range(n_up + 1)]
        layers = [
            nn.Conv2d(1, widths[0], 3, padding=1),
            nn.GroupNorm(_groups(widths[0]), widths[0]),
            nn.GELU(),
        ]
        for i in range(n_up):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i], widths[i + 1], 3, padding=1),
                nn.GroupNorm(_groups(widths[i + 1]), widths[i + 1]),
                nn.GELU(),
            ]
        layers += [nn.Conv2d(widths[-1], 4, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class CoordinateDecoder(nn.Module):
    """(B, 1, L, L) → (B, 4, b, b): a realisable weight matrix built from coordinates.

    An MLP (L² → h → h → 4·2b, h = 32·``channels``, GELU) gives, for each of the 2b matrix
    rows, a position x_i (Å) and an occupancy logit; with m_i = sigmoid(logit),

        W_ij = m_i m_j exp(−‖x_i − x_j‖²/t)  (i ≠ j),   W_ii = m_i,

    which is what the dataset holds for m ∈ {0, 1} (atoms first, zero padding). Every output
    is the weight matrix of a point set, so distance geometry recovers the decoder's own
    coordinates. The last layer starts near a template: row i on a golden spiral at the
    radius of a close-packed ball of i atoms (the canonical order sorts atoms by distance
    from the centroid), so training starts from a compact cluster, not from one point.
    """

    #: Å per unit of network output (coordinates of the order of ±10 Å)
    COORD_SCALE = 4.0

    def __init__(self, block: int, latent_size: int, channels: int, t: float = WEIGHT_T):
        super().__init__()
        self.n, self.t = 2 * block, float(t)
        hidden = 32 * channels
        self.net = nn.Sequential(
            nn.Linear(latent_size**2, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 4 * self.n),
        )
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            i = torch.arange(self.n, dtype=torch.float32)
            radius = 1.35 * (i / 0.74).pow(1.0 / 3.0)  # Å, ~ nearest-neighbour 2.7 Å packing
            cos_theta = 1.0 - 2.0 * (i + 0.5) / self.n
            phi = i * math.pi * (3.0 - math.sqrt(5.0))
            sin_theta = (1.0 - cos_theta**2).sqrt()
            template = (
                torch.stack([sin_theta * phi.cos(), sin_theta * phi.sin(), cos_theta], 1)
                * radius[:, None]
            )
            bias = torch.cat([template / self.COORD_SCALE, torch.zeros(self.n, 1)], 1)
            last.bias.copy_(bias.flatten())

    def coordinates(self, z):
        """Positions (B, 2b, 3) in Å and occupancy logits (B, 2b)."""
        h = self.net(z.flatten(1)).view(-1, self.n, 4)
        return self.COORD_SCALE * h[..., :3], h[..., 3]

    def matrix(self, x, logits):
        """The full (B, 2b, 2b) weight matrix of positions ``x`` (Å) and occupancy logits."""
        m = torch.sigmoid(logits)
        d2 = (x[:, :, None, :] - x[:, None, :, :]).pow(2).sum(-1)
        w = m[:, :, None] * m[:, None, :] * torch.exp(-d2 / self.t)
        eye = torch.eye(self.n, dtype=torch.bool, device=x.device)
        return torch.where(eye, torch.diag_embed(m), w)

    def forward(self, z):
        return to_blocks(self.matrix(*self.coordinates(z)))


MATRIX_DECODERS = {"conv": MatrixDecoder, "coordinates": CoordinateDecoder}


def make_decoder(kind: str, block: int, latent_size: int, channels: int) -> nn.Module:
    """The matrix decoder named by ``matrix_decoder`` ("conv" or "coordinates")."""
    if kind not in MATRIX_DECODERS:
        raise EmverseError(
            f"matrix_decoder {kind!r} is unknown; use one of {', '.join(map(repr, MATRIX_DECODERS))}"
        )
    return MATRIX_DECODERS[kind](block, latent_size, channels)


class MatrixEncoder(nn.Module):
    """(B, 4 + 1, b, b) (blocks + upsampled μ_p) → μ, log σ² of shape (B, 1, L, L)."""

    def __init__(self, block: int, latent_size: int, channels: int):
        super().__init__()
        n_down = int(round(math.log2(block / latent_size)))
        widths = [channels * min(2**i, 8) for i in range(n_down + 1)]
        layers = [nn.Conv2d(5, widths[0], 3, padding=1), nn.GELU()]
        for i in range(n_down):
            layers += [
                nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                nn.GroupNorm(_groups(widths[i + 1]), widths[i + 1]),
                nn.GELU(),
            ]
        layers += [nn.Conv2d(widths[-1], 2, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)


class MatrixVAE(nn.Module):
    """Encoder q(z | W, PDF), conditional prior p(z | PDF), unconditional decoder p(W | z)
    (``decoder``: "conv", :class:`MatrixDecoder`, or "coordinates", :class:`CoordinateDecoder`)."""

    def __init__(
        self, block: int = 128, latent_size: int = 16, channels: int = 16, decoder: str = "conv"
    ):
        super().__init__()
        self.block = block
        self.latent_size = latent_size
        self.encoder = MatrixEncoder(block, latent_size, channels)
        self.decoder = make_decoder(decoder, block, latent_size, channels)
        self.prior = ConditionalPrior(latent_size)

    def encode(self, blocks, pdf):
        mu_p, logvar_p = self.prior(pdf)
        # The encoder sees μ_p as a hint but does not train it: with the gradient of the
        # reconstruction flowing back through this channel, μ_p became a feature for the
        # encoder instead of a prior (val atom count from the decoded μ_p off by a median 27 %;
        # 5.6 % once the prior is fitted to the posteriors alone). The prior learns from the KL only.
        up = F.interpolate(mu_p.detach(), size=(self.block, self.block), mode="nearest")
        mu, logvar = self.encoder(torch.cat([blocks, up], dim=1))
        return mu, logvar, mu_p, logvar_p

    def decode(self, z):
        return self.decoder(z)

    def loss(self, blocks, pdf, generator=None, kl_weight=1e-3):
        mu, logvar, mu_p, logvar_p = self.encode(blocks, pdf)
        eps = _normal_like(mu, generator)
        rec = self.decode(mu + (0.5 * logvar).exp() * eps)
        # mean squared error of W in units of 1e-3 (the paper scales W by 1000)
        mse = ((1000.0 * (rec - blocks)) ** 2).flatten(1).mean(1) * 1e-3
        kl = gaussian_kl(mu, logvar, mu_p, logvar_p)
        return (mse + kl_weight * kl).mean(), float(((rec.detach() - blocks) ** 2).mean())


def _normal_like(mu: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal draws shaped like ``mu``, drawn on the generator's device (a CPU generator
    gives the same numbers whatever device the model is on), then moved to ``mu``'s."""
    device = generator.device if generator is not None else mu.device
    return torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=device).to(mu.device)


def timestep_embedding(t, dim: int):
    """Sinusoidal embedding of 1000·t (t ∈ [0, 1])."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class CrossAttention(nn.Module):
    """Feature-map queries attend to condition tokens."""

    def __init__(self, channels: int, token_dim: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(
            channels, heads, kdim=token_dim, vdim=token_dim, batch_first=True
        )

    def forward(self, x, tokens):
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(q, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class LatentUNet(nn.Module):
    """ε-prediction UNet on (B, 1, L, L) latents: two resolutions down, FiLM on (time + condition),
    cross-attention to 10 condition tokens at the two coarser resolutions."""

    def __init__(
        self, channels: int = 32, cond_dim: int = 250, n_tokens: int = 10, token_dim: int = 32
    ):
        super().__init__()
        c = channels
        emb = 4 * c
        self.n_tokens, self.token_dim = n_tokens, token_dim
        self.time_mlp = nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.tokens = nn.Linear(cond_dim, n_tokens * token_dim)
        self.inp = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = ResBlock(c, c, emb)
        self.pool1 = nn.Conv2d(c, c, 4, stride=2, padding=1)
        self.down2 = ResBlock(c, 2 * c, emb)
        self.attn2 = CrossAttention(2 * c, token_dim)
        self.pool2 = nn.Conv2d(2 * c, 2 * c, 4, stride=2, padding=1)
        self.mid1 = ResBlock(2 * c, 2 * c, emb)
        self.mid_attn = CrossAttention(2 * c, token_dim)
        self.mid2 = ResBlock(2 * c, 2 * c, emb)
        self.up2 = nn.ConvTranspose2d(2 * c, 2 * c, 4, stride=2, padding=1)
        self.dec2 = ResBlock(4 * c, 2 * c, emb)
        self.dec2_attn = CrossAttention(2 * c, token_dim)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
        self.dec1 = ResBlock(2 * c, c, emb)
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1)
        )
        self.c = c

    def forward(self, x, t, cond):
        emb = self.time_mlp(timestep_embedding(t, self.c).to(x.dtype)) + self.cond_mlp(cond)
        tokens = self.tokens(cond).view(-1, self.n_tokens, self.token_dim)
        h1 = self.down1(self.inp(x), emb)
        h2 = self.attn2(self.down2(self.pool1(h1), emb), tokens)
        h = self.mid2(self.mid_attn(self.mid1(self.pool2(h2), emb), tokens), emb)
        h = self.dec2_attn(self.dec2(torch.cat([self.up2(h), h2], 1), emb), tokens)
        h = self.dec1(torch.cat([self.up1(h), h1], 1), emb)
        return self.out(h)


class MLPBaseline(nn.Module):
    """Direct regression PDF → W: an MLP to a (1, L, L) code, then a decoder like the matrix-VAE's
    (``decoder``: "conv" or "coordinates")."""

    def __init__(
        self, block: int = 128, latent_size: int = 16, channels: int = 16, decoder: str = "conv"
    ):
        super().__init__()
        self.latent_size = latent_size
        self.net = nn.Sequential(
            nn.Linear(N_POINTS, 512),
            nn.GELU(),
            nn.Linear(512, 512),
            nn.GELU(),
            nn.Linear(512, latent_size**2),
        )
        self.decoder = make_decoder(decoder, block, latent_size, channels)

    def forward(self, pdf):
        return self.decoder(self.net(pdf).view(-1, 1, self.latent_size, self.latent_size))


class CNNBaseline(nn.Module):
    """Direct regression PDF → W: a 1D-CNN to a (1, L, L) code, then a decoder like the matrix-VAE's
    (``decoder``: "conv" or "coordinates")."""

    def __init__(
        self, block: int = 128, latent_size: int = 16, channels: int = 16, decoder: str = "conv"
    ):
        super().__init__()
        c = channels
        self.latent_size = latent_size
        self.net = nn.Sequential(
            nn.Conv1d(1, c, 7, stride=2, padding=3),
            nn.GELU(),
            nn.Conv1d(c, 2 * c, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(2 * c, 2 * c, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(2 * c, 4, 3, stride=3),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(4 * 125, latent_size**2),
        )
        self.decoder = make_decoder(decoder, block, latent_size, channels)

    def forward(self, pdf):
        return self.decoder(self.net(pdf[:, None]).view(-1, 1, self.latent_size, self.latent_size))


BASELINES = {"mlp": MLPBaseline, "cnn": CNNBaseline}
