"""The two posterior models of the CBED paper, as emverse priors.

* :class:`CdiTransformerPrior` (``cdi.transformer``): a conditional DDPM in
  the normalised 13-parameter space. Its network predicts the noise ε; the
  prior exposes ``denoise`` (the x₀ estimate) and a linear-β schedule from
  emverse-diffusion, so any emverse sampler draws from it.
* :class:`RegressionPrior` (``cdi.regression``): the regression baseline, a
  ResNet trained with MSE, seen as a point-mass posterior (every sample is
  the prediction) so the same evaluation code scores both.

Both take raw patterns ``(B, H, W)`` as the condition of :meth:`sample` and
:meth:`predict`; they divide by the training set's mean pixel intensity,
centre-crop to ``crop_size`` and resize to ``input_size`` (appendix B.1).
Parameters are normalised to [-1, 1] with the table means and half ranges.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from emverse.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint
from emverse.errors import EmverseError
from emverse.interfaces import DiffusionPrior, Prior
from emverse.parameter_space import ParameterSpace
from torch import nn

from . import transforms
from .network import CdiDenoiser, RegressionNet
from .parameter_table import (
    check_same_space,
    mgb2_parameter_space,
    space_from_metadata,
    space_to_metadata,
)

BUILTIN = "builtin:"


def resolve_checkpoint(path: str, ctx=None) -> Path:
    """``builtin:NAME`` -> the file shipped in ``emverse_cdi/data``; else a recipe path."""
    if path.startswith(BUILTIN):
        name = path[len(BUILTIN):]
        resource = importlib.resources.files("emverse_cdi") / "data" / name
        if not resource.is_file():
            shipped = sorted(p.name for p in (importlib.resources.files("emverse_cdi") / "data").iterdir()
                             if p.name.endswith(".safetensors"))
            raise EmverseError(
                f"checkpoint {path!r}: no shipped model named {name!r}; shipped: {shipped}"
            )
        return Path(str(resource))
    return ctx.resolve_path(path) if ctx is not None else Path(path)


class PatternConditioned(nn.Module):
    """Shared preprocessing, input checks and checkpoint I/O of the CDI models."""

    component_name = ""
    #: fields of the params class that fix the architecture (stored in checkpoints)
    architecture_fields: tuple[str, ...] = ()

    def _init_common(self, crop_size: int, input_size: int, parameter_space: ParameterSpace | None):
        if input_size > crop_size:
            raise EmverseError(
                f"input_size {input_size} px exceeds crop_size {crop_size} px; the encoder input "
                "is a (resized) centre crop, so give input_size <= crop_size"
            )
        self.crop_size = int(crop_size)
        self.input_size = int(input_size)
        self.parameter_space = parameter_space or mgb2_parameter_space()
        self.event_shape = (len(self.parameter_space),)
        #: (H, W) of the simulated patterns the model was trained on; set by training
        self.pattern_shape: tuple[int, int] | None = None
        # mean pixel intensity of the training patterns: the input scale
        self.register_buffer("intensity_scale", torch.ones((), dtype=torch.float32))

    #: sample() takes the pattern as its condition
    conditional = True

    def physical(self, draws: torch.Tensor) -> torch.Tensor:
        """Draws are normalised ([-1, 1] over the parameter box); the forward model takes physical units."""
        return self.parameter_space.denormalise(draws.double())

    # -- preprocessing ------------------------------------------------------------------
    def check_patterns(self, patterns: torch.Tensor) -> torch.Tensor:
        patterns = transforms.as_batch(patterns)
        shape = tuple(patterns.shape[-2:])
        if self.pattern_shape is not None and shape != tuple(self.pattern_shape):
            raise EmverseError(
                f"patterns are {shape[0]}×{shape[1]} px but {self.component_name} was trained on "
                f"{self.pattern_shape[0]}×{self.pattern_shape[1]} px patterns; simulate with the "
                "same detector size or retrain"
            )
        if min(shape) < self.crop_size:
            raise EmverseError(
                f"patterns are {shape[0]}×{shape[1]} px, smaller than crop_size {self.crop_size} px; "
                "use larger patterns or a smaller crop_size"
            )
        return patterns

    def scale(self, patterns: torch.Tensor) -> torch.Tensor:
        return patterns / self.intensity_scale.to(patterns.dtype)

    def prepare(self, patterns: torch.Tensor) -> torch.Tensor:
        """Raw (B, H, W) patterns -> encoder input (B, 1, input_size, input_size), evaluation mode."""
        patterns = self.check_patterns(patterns)
        images = transforms.eval_transform(
            self.scale(patterns), crop_size=self.crop_size, input_size=self.input_size
        )
        return images.to(self.intensity_scale.device, torch.float32)

    def prepare_train(self, patterns, generator, rotation_degrees, resized_crop_scale):
        patterns = self.check_patterns(patterns)
        images = transforms.train_transform(
            self.scale(patterns),
            crop_size=self.crop_size,
            input_size=self.input_size,
            rotation_degrees=rotation_degrees,
            resized_crop_scale=resized_crop_scale,
            generator=generator,
        )
        return images.to(self.intensity_scale.device, torch.float32)

    # -- checkpoints ---------------------------------------------------------------------
    def architecture(self) -> dict:
        return {name: self._arch[name] for name in self.architecture_fields}

    def weights_for_checkpoint(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def checkpoint_metadata(self) -> dict:
        return {
            "component": self.component_name,
            "architecture": self.architecture(),
            "parameter_space": space_to_metadata(self.parameter_space),
            "pattern_shape": list(self.pattern_shape) if self.pattern_shape else None,
        }

    def save(self, path, recipe: dict | None = None, extra: dict | None = None) -> Path:
        metadata = self.checkpoint_metadata() | (extra or {})
        return save_checkpoint(path, self.weights_for_checkpoint(), recipe=recipe, metadata=metadata)

    @classmethod
    def from_params(cls, params, ctx=None):
        """Build from recipe parameters; ``checkpoint`` resolves relative to the recipe
        (or ``builtin:NAME`` for a shipped model) before loading."""
        kwargs = attrs.asdict(params, recurse=False)
        path = kwargs.pop("checkpoint")
        prior = cls(**kwargs)
        if path:
            prior.load(resolve_checkpoint(path, ctx), source=path)
        return prior

    def load(self, path: Path, source: str | None = None) -> None:
        source = source or str(path)
        ckpt = load_checkpoint(path)
        meta = ckpt.metadata
        if meta.get("component") != self.component_name:
            raise EmverseError(
                f"checkpoint {source!r} holds a {meta.get('component')!r} model, not "
                f"{self.component_name!r}; point the [{self.component_name}] checkpoint at a "
                "model of that kind"
            )
        check_same_space(self.parameter_space, space_from_metadata(meta["parameter_space"]),
                         f"checkpoint {source!r}")
        arch = meta.get("architecture", {})
        for name, value in self.architecture().items():
            stored = arch.get(name)
            if isinstance(stored, list):
                stored = tuple(stored)
            if stored != value:
                raise EmverseError(
                    f"checkpoint {source!r} was trained with {name} = {stored!r}, but the recipe "
                    f"gives {name} = {value!r}; set {name} = {stored!r} in the recipe"
                )
        load_state_dict_strict(self, {k: v.to(torch.float32) for k, v in ckpt.tensors.items()},
                               source)
        shape = meta.get("pattern_shape")
        self.pattern_shape = tuple(shape) if shape else None


class CdiTransformerPrior(PatternConditioned, DiffusionPrior):
    """Image-conditioned DDPM over the normalised CBED parameters (``cdi.transformer``).

    Time convention: emverse-diffusion's ``t ∈ [0, 1]`` with the discrete
    linear-β schedule on the grid ``t = k/T``; the network receives the
    integer step ``k = round(t·T)`` (the paper feeds the raw integer step
    to its sinusoidal time token). ``denoise`` returns
    ``x̂₀ = (x_t − σ ε̂)/α``, clipped to the prior box [-1, 1] (the
    parameters were drawn there).

    ``condition`` of :meth:`denoise` is the encoder input (B, 1, s, s)
    from :meth:`prepare`; :meth:`sample` takes raw patterns and prepares them.
    The vision tokens of the last condition are cached while no gradient
    is needed, so a sampler's T steps encode each pattern once.
    """

    component_name = "cdi.transformer"
    architecture_fields = (
        "encoder_depth", "encoder_width", "encoder_stem", "token_dim", "n_layers", "n_heads",
        "ffn_dim", "crop_size", "input_size", "steps", "beta_start", "beta_end",
    )

    def __init__(
        self,
        checkpoint: str = "",
        encoder_depth: int = 34,
        encoder_width: int = 64,
        encoder_stem: str = "imagenet",
        token_dim: int = 256,
        n_layers: int = 8,
        n_heads: int = 8,
        ffn_dim: int = 1024,
        crop_size: int = 320,
        input_size: int = 320,
        steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        ema_decay: float = 0.9999,
        parameter_space: ParameterSpace | None = None,
    ):
        super().__init__()
        from emverse_diffusion.schedules import LinearBetaSchedule

        self._init_common(crop_size, input_size, parameter_space)
        self._arch = dict(
            encoder_depth=encoder_depth, encoder_width=encoder_width, encoder_stem=encoder_stem,
            token_dim=token_dim, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim,
            crop_size=crop_size, input_size=input_size, steps=steps, beta_start=beta_start,
            beta_end=beta_end,
        )
        self.network = CdiDenoiser(
            n_parameters=len(self.parameter_space), encoder_depth=encoder_depth,
            encoder_width=encoder_width, encoder_stem=encoder_stem, token_dim=token_dim,
            n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim,
        )
        self.schedule = LinearBetaSchedule(beta_start, beta_end, steps)
        self.steps = int(steps)
        self.ema_decay = float(ema_decay)
        self._cache: tuple | None = None
        if checkpoint:
            self.load(Path(checkpoint))

    # -- the denoiser ------------------------------------------------------------------------
    def integer_step(self, t: torch.Tensor) -> torch.Tensor:
        return (t.double() * self.steps).round().clamp(1, self.steps).to(torch.long)

    def vision_tokens(self, condition: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.training:
            return self.network.encode(condition)
        cache = self._cache
        if cache is not None and cache[0] is condition and cache[1] == condition._version:
            return cache[2]
        with torch.no_grad():
            tokens = self.network.encode(condition)
        self._cache = (condition, condition._version, tokens)
        return tokens

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor):
        if condition is None:
            raise EmverseError(
                "cdi.transformer is a conditional prior: give the CBED pattern as the condition"
            )
        tokens = self.vision_tokens(condition)
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.network.denoise_tokens(x_t.float(), self.integer_step(t), tokens).to(x_t.dtype)

    def denoise(self, x_t, t, condition=None):
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        eps = self.predict_noise(x_t, t, condition)
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        alpha = alpha.to(x_t.dtype)[:, None]
        sigma = sigma.to(x_t.dtype)[:, None]
        return ((x_t - sigma * eps) / alpha).clamp(-1.0, 1.0)

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, condition=None, sampler=None, guidance=None, generator=None):
        """``n`` posterior draws per pattern, (B, n, P), in normalised units [-1, 1]."""
        if condition is None:
            raise EmverseError("cdi.transformer needs CBED patterns as the condition of sample()")
        if sampler is None:
            raise EmverseError("cdi.transformer.sample needs a sampler; add a [sampler] table "
                               "(e.g. type = \"diffusion.ddpm\") to the recipe")
        images = self.prepare(condition)
        batch = images.shape[0]
        repeated = images.repeat_interleave(n, dim=0)
        # encode each pattern once, not once per posterior draw
        with torch.no_grad():
            tokens = self.network.encode(images).repeat_interleave(n, dim=0)
        self._cache = (repeated, repeated._version, tokens)
        try:
            draws = sampler.sample(self, (batch * n, *self.event_shape), repeated, guidance,
                                   generator)
        finally:
            self._cache = None
        return draws.reshape(batch, n, *self.event_shape)

    @torch.no_grad()
    def sample_physical(self, patterns, n, sampler, generator=None, batch_size: int = 16):
        """Posterior draws in physical units, (B, n, P); patterns are processed ``batch_size`` at a time."""
        out = []
        for start in range(0, patterns.shape[0], batch_size):
            z = self.sample(n, patterns[start:start + batch_size], sampler, None, generator)
            out.append(self.parameter_space.denormalise(z.double()))
        return torch.cat(out)

    # -- training ----------------------------------------------------------------------------
    def training_loss(self, images, z, generator=None, repeats: int = 1):
        """ε-MSE (paper eq. 4) at integer steps k ~ U{1..T}: ``‖ε − ε_θ(√ᾱ_k z + √(1−ᾱ_k) ε, k, y)‖²``.

        ``repeats`` > 1 draws that many (k, ε) pairs per pattern and encodes the pattern
        once: more diffusion targets per encoder pass, which is what a CPU budget lacks.
        """
        tokens = self.network.encode(images)
        if repeats > 1:
            tokens = tokens.repeat_interleave(repeats, dim=0)
            z = z.repeat_interleave(repeats, dim=0)
        b = z.shape[0]
        t = self.schedule.sample_training_times(b, generator=generator, dtype=torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(t)
        eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device)
        x_t = alpha.float().to(z.device)[:, None] * z + sigma.float().to(z.device)[:, None] * eps
        pred = self.network.denoise_tokens(x_t, self.integer_step(t).to(z.device), tokens)
        return F.mse_loss(pred, eps)


class RegressionPrior(PatternConditioned, Prior):
    """Regression baseline (``cdi.regression``): a point-mass posterior at the ResNet prediction."""

    component_name = "cdi.regression"
    architecture_fields = ("depth", "width", "stem", "crop_size", "input_size")

    def __init__(
        self,
        checkpoint: str = "",
        depth: int = 50,
        width: int = 64,
        stem: str = "imagenet",
        crop_size: int = 320,
        input_size: int = 320,
        parameter_space: ParameterSpace | None = None,
    ):
        super().__init__()
        self._init_common(crop_size, input_size, parameter_space)
        self._arch = dict(depth=depth, width=width, stem=stem, crop_size=crop_size,
                          input_size=input_size)
        self.network = RegressionNet(len(self.parameter_space), depth, width, stem)
        if checkpoint:
            self.load(Path(checkpoint))

    @torch.no_grad()
    def predict(self, patterns: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Normalised predictions (B, P) for raw patterns (B, H, W)."""
        was_training = self.training
        self.eval()
        try:
            out = [self.network(self.prepare(patterns[s:s + batch_size]))
                   for s in range(0, patterns.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def predict_physical(self, patterns, batch_size: int = 64):
        return self.parameter_space.denormalise(self.predict(patterns, batch_size).double())

    def sample(self, n, condition=None, sampler=None, guidance=None, generator=None):
        """A point mass: the prediction repeated ``n`` times, (B, n, P), normalised units."""
        if condition is None:
            raise EmverseError("cdi.regression needs CBED patterns as the condition of sample()")
        return self.predict(condition).unsqueeze(1).expand(-1, n, -1).clone()

    def training_loss(self, images, z, generator=None, repeats: int = 1):
        """MSE on the normalised parameters (``repeats`` has no meaning for a point estimate)."""
        return F.mse_loss(self.network(images), z)


__all__ = ["CdiTransformerPrior", "RegressionPrior", "resolve_checkpoint"]
