"""Recipe-built components: the MLP diffusion prior and the training data sources."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch
from emverse.checkpoint import load_checkpoint
from emverse.errors import EmverseError
from emverse.interfaces import Configurable

from .networks import MLPDenoiser
from .prior import NetworkDiffusionPrior, check_recipe_match, load_weights
from .schedules import CosineSchedule
from .training import TensorData, ZarrData

#: the [prior] fields that fix the network and its meaning; a checkpoint must agree on them
ARCHITECTURE_FIELDS = ("dim", "condition_dim", "hidden", "depth", "time_features", "prediction",
                       "time_input", "schedule")


def params_to_dict(params) -> dict[str, Any]:
    """Plain-dict form of a params object, nested specs as {"type": ..., fields...} (as in a recipe)."""
    from emverse.params import ComponentSpec

    def plain(value):
        if isinstance(value, ComponentSpec):
            out = {"type": value.type}
            if value.params is not None and attrs.has(type(value.params)):
                out.update({k: plain(v) for k, v in attrs.asdict(value.params, recurse=False).items()})
            return out
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in attrs.asdict(params, recurse=False).items()}


class MLPDiffusionPrior(NetworkDiffusionPrior):
    """``diffusion.mlp``: :class:`NetworkDiffusionPrior` with an :class:`MLPDenoiser`."""

    def __init__(self, dim: int = 4, condition_dim: int = 0, hidden: int = 128, depth: int = 3,
                 time_features: int = 32, prediction: str = "v", time_input: str = "t",
                 schedule=None, clip_x0: float | None = None):
        schedule = schedule if schedule is not None else CosineSchedule()
        time_scale = {"t": 1.0, "logsnr": 0.1, "step": 1.0 / max(schedule.discrete_steps or 1, 1)}[time_input]
        network = MLPDenoiser(dim, condition_dim, hidden, depth, time_features, time_scale)
        super().__init__(network, schedule, prediction, (dim,), time_input, clip_x0=clip_x0)
        self.config: dict[str, Any] = {}

    @classmethod
    def from_params(cls, params, ctx=None):
        schedule = ctx.build_spec(params.schedule, "noise_schedule") if ctx is not None else None
        prior = cls(params.dim, params.condition_dim, params.hidden, params.depth, params.time_features,
                    params.prediction, params.time_input, schedule, params.clip_x0)
        prior.config = params_to_dict(params)
        if params.checkpoint:
            path = ctx.resolve_path(params.checkpoint) if ctx is not None else params.checkpoint
            prior.load(path, use_ema=params.use_ema)
        return prior

    def load(self, path, *, use_ema: bool = True) -> dict:
        """Load weights written by the core ``train`` task; the checkpoint's [prior] must match."""
        ckpt = load_checkpoint(path)
        saved = (ckpt.recipe or {}).get("prior")
        if self.config:
            check_recipe_match(saved, self.config, ARCHITECTURE_FIELDS, str(path))
        load_weights(self.network, ckpt.tensors, "ema." if use_ema else "model.", str(path))
        self.network.eval()
        return ckpt.recipe or {}


class SimulatedData(Configurable):
    """``diffusion.simulated``: x from a data prior, y = forward_model.simulate(x)."""

    def __init__(self, data_prior, forward_model, n_train: int = 20000, n_validation: int = 2000,
                 conditional: bool = True):
        if conditional and forward_model is None:
            raise EmverseError("diffusion.simulated with conditional = true needs a [forward_model] table")
        self.data_prior, self.forward_model = data_prior, forward_model
        self.n_train, self.n_validation, self.conditional = n_train, n_validation, conditional

    @classmethod
    def from_params(cls, params, ctx):
        data_prior = ctx.build_spec(params.prior, "prior")
        model = ctx.build("forward_model") if ctx.has("forward_model") else None
        return cls(data_prior, model, params.n_train, params.n_validation, params.conditional)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator, dtype=torch.float32):
        """``n`` pairs: x (n, d) from the data prior and, if conditional, y = simulate(x)."""
        x = self.data_prior.sample(n, generator=generator).to(dtype)
        y = None
        if self.forward_model is not None:
            model_dtype = next(iter(self.forward_model.buffers()), x).dtype
            y = self.forward_model.simulate(x.to(model_dtype), generator=generator).to(dtype)
        return x, y

    def splits(self, generator: torch.Generator, dtype=torch.float32):
        x, y = self.draw(self.n_train + self.n_validation, generator, dtype)
        cond = y if self.conditional else None
        train = TensorData(x[: self.n_train], cond[: self.n_train] if cond is not None else None)
        val = None
        if self.n_validation:
            val = TensorData(x[self.n_train:], cond[self.n_train:] if cond is not None else None)
        return train, val


class ZarrDataset(Configurable):
    """``diffusion.zarr``: pairs stored in a Zarr group; the last rows are held out for validation."""

    def __init__(self, path, x_key="parameters", condition_key="observations", validation_fraction=0.05):
        self.data = ZarrData(path, x_key, condition_key or None)
        self.validation_fraction = validation_fraction

    @classmethod
    def from_params(cls, params, ctx):
        return cls(ctx.resolve_path(params.path), params.x_key, params.condition_key,
                   params.validation_fraction)

    def splits(self, generator=None, dtype=torch.float32):
        n = len(self.data)
        n_val = int(round(n * self.validation_fraction))
        train = _Subset(self.data, np.arange(0, n - n_val))
        val = _Subset(self.data, np.arange(n - n_val, n)) if n_val else None
        return train, val


class _Subset:
    def __init__(self, data, indices):
        self.data, self.indices = data, indices

    def __len__(self):
        return len(self.indices)

    def get(self, indices):
        return self.data.get(self.indices[np.asarray(indices)])
