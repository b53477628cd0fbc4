"""Training objectives: what the network predicts, how losses are weighted, where t is drawn.

Prediction types (all with ``x_t = α x_0 + σ ε``, α² + σ² = 1; see :mod:`.schedules`):

* ``"eps"``: the network predicts the noise ε (DDPM);
* ``"x0"``:  the network predicts the clean sample x_0;
* ``"v"``:   the network predicts ``v = α ε − σ x_0`` (Salimans & Ho 2022), so
  ``x_0 = α x_t − σ v`` and ``ε = σ x_t + α v``.

The loss of one sample is ``w(λ) · importance · ‖output − target‖`` (mean over
the sample's elements, squared for ``norm="l2"``, absolute for ``"l1"``), where
the target is of the network's own prediction type, ``w`` a weighting in
logSNR λ (uniform, sigmoid, Gaussian at λ₀) and ``importance`` the correction
of the time sampler (1 for uniform t). With the adaptive λ sampler the loss
is an unbiased estimate of ``∫ w(λ) ℓ(λ) dλ / (λ_max − λ_min)``: λ is drawn
from bins whose probabilities follow an EMA of ``w(λ)·ℓ(λ)`` (Kingma & Gao
2023, "Understanding diffusion objectives", adaptive noise schedule) and each
sample is divided by its density.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError

from .schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")
NORMS = ("l2", "l1")
WEIGHTINGS = ("uniform", "sigmoid", "gaussian")


def _check_prediction(kind: str) -> str:
    if kind not in PREDICTIONS:
        raise EmverseError(
            f"prediction = {kind!r} is unknown; use one of {', '.join(map(repr, PREDICTIONS))}"
        )
    return kind


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values (batch,) to broadcast against ``x`` (batch, ...)."""
    values = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1)))


# -------------------------------------------------------------------------------- conversions
def x0_from(output, prediction, x_t, alpha, sigma):
    """Clean-sample estimate from a network output of type ``prediction``."""
    _check_prediction(prediction)
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    if prediction == "x0":
        return output
    if prediction == "eps":
        return (x_t - s * output) / a
    return a * x_t - s * output


def eps_from(output, prediction, x_t, alpha, sigma):
    """Noise estimate from a network output of type ``prediction``."""
    _check_prediction(prediction)
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    if prediction == "eps":
        return output
    if prediction == "x0":
        return (x_t - a * output) / s
    return s * x_t + a * output


def v_from(output, prediction, x_t, alpha, sigma):
    """v estimate from a network output of type ``prediction``."""
    _check_prediction(prediction)
    if prediction == "v":
        return output
    a, s = expand_like(alpha, x_t), expand_like(sigma, x_t)
    x0 = x0_from(output, prediction, x_t, alpha, sigma)
    eps = eps_from(output, prediction, x_t, alpha, sigma)
    return a * eps - s * x0


def convert(output, source: str, target: str, x_t, alpha, sigma):
    """Convert a prediction of type ``source`` into one of type ``target``."""
    converters = {"x0": x0_from, "eps": eps_from, "v": v_from}
    _check_prediction(target)
    return converters[target](output, source, x_t, alpha, sigma)


def prediction_target(prediction: str, x0, eps, alpha, sigma):
    """The regression target of a network of type ``prediction``."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return expand_like(alpha, x0) * eps - expand_like(sigma, x0) * x0


# -------------------------------------------------------------------------------- weighting
class LossWeighting:
    """``w(λ)``: the weight of the loss at logSNR λ.

    * ``uniform``: w = 1;
    * ``sigmoid``: w = sigmoid(bias − λ) (Kingma & Gao 2023; emphasises noisy λ);
    * ``gaussian``: w = exp(−(λ − center)² / (2 width²)) (peak 1 at λ₀ = ``center``).
    """

    def __init__(self, kind: str = "uniform", bias: float = 0.0, center: float = 0.0, width: float = 2.4):
        if kind not in WEIGHTINGS:
            raise EmverseError(
                f"weighting = {kind!r} is unknown; use one of {', '.join(map(repr, WEIGHTINGS))}"
            )
        if not width > 0:
            raise EmverseError(f"weighting width = {width!r} must be > 0 (in logSNR units, e.g. 2.4)")
        self.kind, self.bias, self.center, self.width = kind, float(bias), float(center), float(width)

    def __call__(self, logsnr: torch.Tensor) -> torch.Tensor:
        if self.kind == "uniform":
            return torch.ones_like(logsnr)
        if self.kind == "sigmoid":
            return torch.sigmoid(self.bias - logsnr)
        return torch.exp(-0.5 * ((logsnr - self.center) / self.width) ** 2)


# -------------------------------------------------------------------------------- time samplers
class UniformTimeSampler:
    """Training times from the schedule: ``k/T`` (discrete) or ``U(0, 1)``; importance 1."""

    adaptive = False

    def sample(self, n, schedule: NoiseSchedule, generator=None, device=None, dtype=torch.float32):
        t = schedule.sample_training_times(n, generator=generator, device=device, dtype=dtype)
        return t, torch.ones(n, device=device, dtype=dtype)

    def update(self, logsnr, values):  # nothing to learn
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state):
        return None


class AdaptiveLogSNRSampler:
    """Importance sampler over λ bins that follows the loss (Kingma & Gao 2023).

    ``bins`` equal bins on [``logsnr_min``, ``logsnr_max``] (clipped to the
    schedule's range on first use); bin probabilities ∝ an EMA (``decay``) of
    the mean ``w(λ)·ℓ(λ)`` seen in each bin, floored at ``floor`` × the mean
    so no bin is starved. λ is uniform inside a chosen bin; ``importance`` is
    ``1 / (q(λ) · (λ_max − λ_min))`` with q the normalised density.
    """

    adaptive = True

    def __init__(
        self,
        bins: int = 100,
        logsnr_min: float = -15.0,
        logsnr_max: float = 15.0,
        decay: float = 0.9,
        floor: float = 0.01,
    ):
        if int(bins) != bins or bins < 1:
            raise EmverseError(f"adaptive sampler: bins = {bins!r} must be a positive integer (e.g. 100)")
        if not logsnr_min < logsnr_max:
            raise EmverseError(
                f"adaptive sampler: logsnr_min = {logsnr_min!r} must be below logsnr_max = {logsnr_max!r}"
            )
        if not 0 <= decay < 1:
            raise EmverseError(f"adaptive sampler: decay = {decay!r} must lie in [0, 1) (e.g. 0.9)")
        self.bins = int(bins)
        self.requested_range = (float(logsnr_min), float(logsnr_max))
        self.decay = float(decay)
        self.floor = float(floor)
        self.bin_ema = torch.ones(self.bins, dtype=torch.float64)
        self.range: tuple[float, float] | None = None

    def _bind(self, schedule: NoiseSchedule):
        if self.range is None:
            lo = max(self.requested_range[0], schedule.logsnr_min)
            hi = min(self.requested_range[1], schedule.logsnr_max)
            if not lo < hi:
                raise EmverseError(
                    f"adaptive sampler: logsnr range {self.requested_range} does not overlap the "
                    f"schedule's [{schedule.logsnr_min:.3g}, {schedule.logsnr_max:.3g}]"
                )
            self.range = (lo, hi)
        return self.range

    def probabilities(self) -> torch.Tensor:
        w = self.bin_ema.clamp_min(0)
        w = torch.maximum(w, self.floor * w.mean().clamp_min(1e-12))
        return w / w.sum()

    def sample(self, n, schedule: NoiseSchedule, generator=None, device=None, dtype=torch.float32):
        lo, hi = self._bind(schedule)
        probs = self.probabilities()
        # draws on the CPU generator's device, then move: keeps resume exact across devices
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.multinomial(probs.to(gen_device), n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        width = (hi - lo) / self.bins
        lam = lo + (idx.to(torch.float64) + u) * width
        density = probs.to(gen_device)[idx] / width  # q(λ), normalised over [lo, hi]
        importance = 1.0 / (density * (hi - lo))
        t = schedule.t_from_logsnr(lam)
        return t.to(device=device, dtype=dtype), importance.to(device=device, dtype=dtype)

    def bin_of(self, logsnr: torch.Tensor) -> torch.Tensor:
        lo, hi = self.range if self.range is not None else self.requested_range
        pos = (logsnr.double().cpu() - lo) / (hi - lo) * self.bins
        return pos.floor().long().clamp(0, self.bins - 1)

    def bin_statistics(self, logsnr, values) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-bin sums and counts of ``values`` (= w(λ)·ℓ, detached): reduce across ranks before :meth:`apply`."""
        idx = self.bin_of(logsnr)
        sums = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, values.detach().double().cpu())
        counts = torch.zeros(self.bins, dtype=torch.float64).index_add_(
            0, idx, torch.ones_like(idx, dtype=torch.float64)
        )
        return sums, counts

    def apply(self, sums: torch.Tensor, counts: torch.Tensor):
        seen = counts > 0
        means = torch.where(seen, sums / counts.clamp_min(1), self.bin_ema)
        self.bin_ema = torch.where(seen, self.decay * self.bin_ema + (1 - self.decay) * means, self.bin_ema)

    def update(self, logsnr, values):
        self.apply(*self.bin_statistics(logsnr, values))

    def state_dict(self) -> dict[str, torch.Tensor]:
        lo, hi = self.range if self.range is not None else (math.nan, math.nan)
        return {"bin_ema": self.bin_ema.clone(), "range": torch.tensor([lo, hi], dtype=torch.float64)}

    def load_state_dict(self, state):
        if "bin_ema" in state:
            if state["bin_ema"].shape != self.bin_ema.shape:
                raise EmverseError(
                    f"adaptive sampler: checkpoint has {state['bin_ema'].numel()} bins, "
                    f"this objective {self.bins}; use the same 'bins' as the run that wrote it"
                )
            self.bin_ema = state["bin_ema"].double().cpu().clone()
        if "range" in state and not torch.isnan(state["range"]).any():
            self.range = (float(state["range"][0]), float(state["range"][1]))


# -------------------------------------------------------------------------------- objective
class DiffusionObjective:
    """Prediction type + weighting + time sampler + norm: everything a loss needs."""

    def __init__(
        self,
        prediction: str = "eps",
        weighting: LossWeighting | None = None,
        time_sampler: UniformTimeSampler | AdaptiveLogSNRSampler | None = None,
        norm: str = "l2",
    ):
        self.prediction = _check_prediction(prediction)
        if norm not in NORMS:
            raise EmverseError(f"norm = {norm!r} is unknown; use 'l2' (MSE) or 'l1'")
        self.norm = norm
        self.weighting = weighting if weighting is not None else LossWeighting("uniform")
        self.time_sampler = time_sampler if time_sampler is not None else UniformTimeSampler()

    def elementwise(self, output, target) -> torch.Tensor:
        diff = output - target
        per_element = diff.abs() if self.norm == "l1" else diff.square()
        return per_element.reshape(per_element.shape[0], -1).mean(dim=1)
