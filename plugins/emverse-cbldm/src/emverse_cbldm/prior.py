"""The trained CbLDM as an emverse :class:`DiffusionPrior` over matrix latents.

The diffusion runs on standardised latents x = (z − shift) / scale, where z is the
matrix-VAE latent and shift/scale are the mean and standard deviation of the
training posteriors' means. The schedule is emverse-diffusion's cosine schedule
(offset 5e-4, the CbLDM choice), with continuous time t ∈ [0, 1]. The condition
passed to :meth:`denoise` is the max-normalised PDF (B, 3000); the PDF-VAE turns it
into the 250-d embedding the UNet sees.
"""

from __future__ import annotations

import json

import torch
from emverse.checkpoint import load_checkpoint, load_state_dict_strict
from emverse.errors import EmverseError
from emverse.interfaces import DiffusionPrior
from torch import nn

from .models import BASELINES, MATRIX_DECODERS, LatentUNet, MatrixVAE, PdfVAE

#: clean-latent estimates are clipped to ±X0_CLIP standard deviations (the t → 1 end
#: divides by a tiny α)
X0_CLIP = 8.0


def cosine_schedule(offset: float):
    from emverse_diffusion.schedules import CosineSchedule

    return CosineSchedule(offset=offset)


class CbLDMPrior(DiffusionPrior):
    """Container of the PDF-VAE, the matrix-VAE (with its conditional prior), the latent
    UNet and (optionally) the baselines; a diffusion prior over (1, L, L) latents."""

    def __init__(
        self,
        block: int = 128,
        latent_size: int = 16,
        pdf_channels: int = 16,
        matrix_channels: int = 16,
        unet_channels: int = 32,
        schedule_offset: float = 5e-4,
        baselines: tuple[str, ...] = (),
        matrix_decoder: str = "conv",
    ):
        super().__init__()
        self.config = {
            "block": block,
            "latent_size": latent_size,
            "pdf_channels": pdf_channels,
            "matrix_channels": matrix_channels,
            "unet_channels": unet_channels,
            "schedule_offset": schedule_offset,
            "baselines": list(baselines),
            "matrix_decoder": matrix_decoder,
        }
        self.event_shape = (1, latent_size, latent_size)
        self.pdf_vae = PdfVAE(pdf_channels)
        self.matrix_vae = MatrixVAE(block, latent_size, matrix_channels, matrix_decoder)
        self.unet = LatentUNet(unet_channels)
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise EmverseError(
                f"baselines {unknown} are unknown; use some of {', '.join(BASELINES)}"
            )
        self.baselines = nn.ModuleDict(
            {
                name: BASELINES[name](block, latent_size, matrix_channels, matrix_decoder)
                for name in baselines
            }
        )
        self.register_buffer("latent_shift", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))
        self.schedule = cosine_schedule(schedule_offset)

    # -- the DiffusionPrior interface -------------------------------------------------
    def embed(self, pdf: torch.Tensor) -> torch.Tensor:
        return self.pdf_vae.embed(pdf)

    def predict_noise(self, x_t, t, condition, embedding=None):
        if condition is None and embedding is None:
            raise EmverseError("CbLDM is conditional: pass the normalised PDF as condition")
        emb = self.embed(condition) if embedding is None else embedding
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self.unet(x_t, t, emb)

    def denoise(self, x_t, t, condition=None):
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        eps = self.predict_noise(x_t, t, condition)
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha, sigma = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        return ((x_t - sigma * eps) / alpha).clamp(-X0_CLIP, X0_CLIP)

    # -- latents ↔ matrices -------------------------------------------------------------
    def to_standard(self, z):
        return (z - self.latent_shift) / self.latent_scale

    def from_standard(self, x):
        return x * self.latent_scale + self.latent_shift

    def conditional_prior_sample(self, pdf, generator=None):
        """z_c ~ p(z | PDF), in standardised latent units, shape (B, 1, L, L)."""
        mu_p, logvar_p = self.matrix_vae.prior(pdf)
        eps = torch.randn(mu_p.shape, generator=generator, dtype=mu_p.dtype, device=mu_p.device)
        return self.to_standard(mu_p + (0.5 * logvar_p).exp() * eps)

    def decode(self, x):
        """Standardised latents (B, 1, L, L) → W blocks (B, 4, b, b) in [0, 1]."""
        return self.matrix_vae.decode(self.from_standard(x))

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def checkpoint_metadata(self) -> dict:
        return {"cbldm_config": json.dumps(self.config)}

    @classmethod
    def from_checkpoint(cls, path, device="cpu", matrix_decoder: str | None = None) -> CbLDMPrior:
        """Load a ``cbldm.train`` checkpoint; with ``matrix_decoder`` given, refuse a checkpoint
        whose matrix decoder is another one."""
        ckpt = load_checkpoint(path, device=device)
        config = checkpoint_config(ckpt.metadata, path, matrix_decoder)
        model = cls(**config)
        load_state_dict_strict(model, ckpt.tensors, str(path))
        return model.to(device).eval()


def checkpoint_config(metadata: dict, path, matrix_decoder: str | None = None) -> dict:
    """The architecture stored in a checkpoint's metadata (``cbldm_config``), checked.

    Checkpoints written before the decoder option have no ``matrix_decoder``: they hold the
    convolutional decoder. With ``matrix_decoder`` given, a checkpoint of another decoder is
    refused (its weights cannot be loaded into that architecture).
    """
    text = metadata.get("cbldm_config")
    if not text:
        raise EmverseError(
            f"checkpoint {str(path)!r} has no 'cbldm_config' metadata; it was not written by "
            "cbldm.train — give a CbLDM checkpoint"
        )
    config = json.loads(text)
    config["baselines"] = tuple(config.get("baselines", ()))
    config.setdefault("matrix_decoder", "conv")
    stored = config["matrix_decoder"]
    if stored not in MATRIX_DECODERS:
        raise EmverseError(
            f"checkpoint {str(path)!r} has matrix_decoder {stored!r}, which this version does not "
            f"know (known: {', '.join(MATRIX_DECODERS)}); update emverse-cbldm"
        )
    if matrix_decoder is not None and matrix_decoder != stored:
        raise EmverseError(
            f"checkpoint {str(path)!r} was trained with matrix_decoder = {stored!r}, but "
            f"matrix_decoder = {matrix_decoder!r} was asked for; set matrix_decoder = {stored!r} "
            "or give a checkpoint trained with the decoder you want"
        )
    return config


def shipped_checkpoint():
    """Path of the small model shipped with the plugin."""
    from importlib import resources

    return resources.files("emverse_cbldm") / "data" / "cbldm-small.safetensors"


def _from_params(cls, params, ctx=None):
    path = (
        ctx.resolve_path(params.checkpoint)
        if (params.checkpoint and ctx)
        else (params.checkpoint or shipped_checkpoint())
    )
    return cls.from_checkpoint(path)


CbLDMPrior.from_params = classmethod(_from_params)


def export_without_baselines(source, target) -> None:
    """Copy a ``cbldm.train`` checkpoint without the baseline networks (for shipping)."""
    from emverse.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    model = CbLDMPrior.from_checkpoint(source)
    model.baselines = nn.ModuleDict()
    model.config["baselines"] = []
    metadata = dict(ckpt.metadata)
    metadata.update(model.checkpoint_metadata())
    save_checkpoint(target, model.checkpoint_tensors(), recipe=ckpt.recipe, metadata=metadata)
