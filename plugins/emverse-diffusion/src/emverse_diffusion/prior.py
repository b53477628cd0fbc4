"""A diffusion prior made of any denoising network plus a noise schedule.

The network is any ``nn.Module`` called as ``network(x_t, time, condition)``:

* ``x_t``: (batch, *event_shape) noisy sample;
* ``time``: (batch,) float — ``t ∈ [0, 1]`` (``time_input="t"``), the logSNR λ
  (``"logsnr"``) or the DDPM step ``t·T`` (``"step"``, discrete schedules only);
* ``condition``: (batch, ...) tensor or ``None`` for an unconditional prior.

It returns a tensor shaped like ``x_t`` holding an ε-, x₀- or v-prediction
(``prediction``). :meth:`NetworkDiffusionPrior.denoise` always returns the
x₀ estimate; :meth:`NetworkDiffusionPrior.loss` is the training loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from emverse.errors import EmverseError
from emverse.interfaces import DiffusionPrior
from torch import nn

from .objectives import (
    DiffusionObjective,
    _check_prediction,
    eps_from,
    expand_like,
    prediction_target,
    x0_from,
)
from .schedules import NoiseSchedule

TIME_INPUTS = ("t", "logsnr", "step")


@attrs.define
class LossTerms:
    """One training loss evaluation.

    ``loss`` is the scalar to back-propagate (mean over the batch);
    ``per_sample`` the unweighted ‖output − target‖ per sample, ``logsnr``
    the λ of each sample and ``weighted`` = w(λ)·per_sample (detached) — what
    the adaptive time sampler learns from.
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    logsnr: torch.Tensor
    weighted: torch.Tensor
    t: torch.Tensor


class NetworkDiffusionPrior(DiffusionPrior):
    """:class:`~emverse.interfaces.DiffusionPrior` around a network (module docstring).

    Parameters
    ----------
    network: the denoiser ``network(x_t, time, condition)``.
    schedule: a :class:`~emverse_diffusion.schedules.NoiseSchedule` (t ∈ [0, 1]).
    prediction: ``"eps"``, ``"x0"`` or ``"v"``.
    event_shape: shape of one clean sample, e.g. ``(13,)`` or ``(1, 32, 32, 32)``.
    time_input: what the network is fed as time (``"t"``, ``"logsnr"``, ``"step"``).
    objective: the training objective (default: uniform weighting, uniform t, L2).
    clip_x0: clamp the x₀ estimate to ±``clip_x0`` when given (data in [−1, 1]).
    """

    def __init__(
        self,
        network: nn.Module,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        event_shape: tuple[int, ...] = (),
        time_input: str = "t",
        objective: DiffusionObjective | None = None,
        clip_x0: float | None = None,
    ):
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.prediction = _check_prediction(prediction)
        self.event_shape = tuple(int(n) for n in event_shape)
        if time_input not in TIME_INPUTS:
            raise EmverseError(
                f"time_input = {time_input!r} is unknown; use one of {', '.join(map(repr, TIME_INPUTS))}"
            )
        if time_input == "step" and not schedule.discrete_steps:
            raise EmverseError(
                "time_input = 'step' needs a discrete schedule (diffusion.linear_beta); "
                "use 't' or 'logsnr' with a continuous one"
            )
        self.time_input = time_input
        self.objective = objective if objective is not None else DiffusionObjective(prediction)
        if self.objective.prediction != self.prediction:
            raise EmverseError(
                f"objective prediction {self.objective.prediction!r} differs from the prior's "
                f"{self.prediction!r}; build the objective with prediction={self.prediction!r}"
            )
        self.clip_x0 = clip_x0

    # ------------------------------------------------------------------ helpers
    def _times(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise EmverseError(
                f"time has shape {tuple(t.shape)}; give one time per batch element, shape ({x.shape[0]},)"
            )
        return t

    def time_features(self, t: torch.Tensor, dtype) -> torch.Tensor:
        """What the network sees as time (see ``time_input``)."""
        if self.time_input == "t":
            return t.to(dtype)
        if self.time_input == "step":
            return (t.double() * self.schedule.discrete_steps).to(dtype)
        return self.schedule.logsnr(t.double().clamp_min(max(self.schedule.t_min, 1e-6))).to(dtype)

    def _check_event(self, x: torch.Tensor, what: str):
        if self.event_shape and tuple(x.shape[1:]) != self.event_shape:
            raise EmverseError(
                f"{what} has shape {tuple(x.shape)}; this prior expects (batch, "
                f"{', '.join(map(str, self.event_shape))})"
            )

    # ------------------------------------------------------------------ inference
    def network_output(
        self, x_t: torch.Tensor, t, condition: torch.Tensor | None = None, network: Callable | None = None
    ) -> torch.Tensor:
        """The raw network prediction (of type ``self.prediction``)."""
        t = self._times(t, x_t)
        net = network if network is not None else self.network
        return net(x_t, self.time_features(t, x_t.dtype), condition)

    def denoise(self, x_t: torch.Tensor, t, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x₀ estimate (batch, *event_shape) from ``x_t`` at times ``t`` (scalar or (batch,))."""
        self._check_event(x_t, "x_t")
        t = self._times(t, x_t)
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        output = self.network_output(x_t, t, condition)
        x0 = x0_from(output, self.prediction, x_t, alpha, sigma)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0

    def predict_eps(self, x_t, t, condition=None) -> torch.Tensor:
        t = self._times(t, x_t)
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return eps_from(self.network_output(x_t, t, condition), self.prediction, x_t, alpha, sigma)

    # ------------------------------------------------------------------ training
    def loss_terms(
        self,
        x0: torch.Tensor,
        condition: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
        network: Callable | None = None,
    ) -> LossTerms:
        """Loss of a batch of clean samples (module docstring of :mod:`.objectives`).

        ``t``, ``noise`` and ``importance`` may be given (the training loop draws
        them for the global batch so distributed training equals single-process
        training); otherwise they are drawn from ``generator``.
        """
        self._check_event(x0, "x0")
        batch = x0.shape[0]
        if t is None:
            t, importance = self.objective.time_sampler.sample(
                batch, self.schedule, generator=generator, device=x0.device, dtype=torch.float64
            )
        if importance is None:
            importance = torch.ones(batch, dtype=x0.dtype, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        t = self._times(t, x0)
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        alpha, sigma = alpha.to(x0.dtype), sigma.to(x0.dtype)
        x_t = expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * noise
        output = self.network_output(x_t, t, condition, network=network)
        target = prediction_target(self.prediction, x0, noise, alpha, sigma)
        per_sample = self.objective.elementwise(output.float(), target.float())
        logsnr = self.schedule.logsnr(t.to(torch.float64))
        weight = self.objective.weighting(logsnr).to(per_sample.dtype)
        weighted = weight * per_sample
        loss = (weighted * importance.to(per_sample.dtype)).mean()
        return LossTerms(loss, per_sample.detach(), logsnr.detach(), weighted.detach(), t.detach())

    def loss(self, x0, condition=None, generator=None) -> torch.Tensor:
        """Scalar training loss of a batch of clean samples (draws t and ε from ``generator``)."""
        return self.loss_terms(x0, condition, generator).loss

    def save(self, path, recipe: dict | None = None):
        """Write the network's current weights (as both ``model.`` and ``ema.``: what the core
        ``train`` task keeps) with ``recipe``, whose ``[prior]`` table ``load`` checks."""
        from emverse.checkpoint import save_checkpoint

        state = self.network.state_dict()
        tensors = {f"model.{k}": v for k, v in state.items()} | {f"ema.{k}": v.clone() for k, v in state.items()}
        return save_checkpoint(path, tensors, recipe=recipe)


# ------------------------------------------------------------------ checkpoint checks
def check_recipe_match(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    fields: tuple[str, ...],
    checkpoint: str,
) -> None:
    """Raise when the parameters a checkpoint was trained with differ from the recipe's.

    ``saved`` is the component table stored in the checkpoint's recipe (e.g. its
    ``[prior]``), ``current`` the one of this run; only ``fields`` (the ones that
    fix the architecture) are compared. Every difference is listed.
    """
    if saved is None:
        return
    problems = []
    for name in fields:
        if name not in saved or name not in current:
            continue
        old, new = _normalise(saved[name]), _normalise(current[name])
        if old != new:
            problems.append(f"{name}: checkpoint {old!r}, recipe {new!r}")
    if problems:
        raise EmverseError(
            f"checkpoint {checkpoint} was trained with different model parameters ("
            + "; ".join(problems)
            + "); set these in the recipe to the checkpoint's values or train a new checkpoint"
        )


def _normalise(value):
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str, checkpoint: str):
    """Load ``prefix``-ed tensors into ``module`` strictly, with errors that name the checkpoint."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise EmverseError(
            f"checkpoint {checkpoint} holds no tensors under {prefix!r}; "
            "was it written by the train task (checkpoint_name.safetensors)?"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            ([f"missing {missing[:5]}"] if missing else [])
            + ([f"unexpected {unexpected[:5]}"] if unexpected else [])
            + wrong[:5]
        )
        raise EmverseError(
            f"checkpoint {checkpoint} does not fit this network ({detail}); "
            "use the architecture parameters it was trained with"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
