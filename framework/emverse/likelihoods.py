"""The data-fidelity terms (``[likelihood]`` tables) that guidance and refiners share.

Each is a :class:`emverse.interfaces.Likelihood`: ``negative_log_likelihood(y_pred, y)``
returns ℓ per batch element (shape (batch,), constants that do not depend on the
prediction dropped), and calling the likelihood gives the mean over the batch, the
scalar a refiner minimises. ``y`` is a tensor, or an :class:`Observation` when the data
carry per-element standard uncertainties (3D-ED intensities with σ(I)) or a mask.

``expects`` says what the prediction must be, so that a recipe pairing a likelihood
with a forward model whose output is something else is refused at validation
(``emverse.compatibility``):

* ``"any"``: any real-valued prediction (Gaussian, Rw);
* ``"intensity"``: non-negative intensities or probabilities per pixel (Poisson counts,
  amplitudes taken as √intensity, weighted intensities, cross-correlation of images).

Equations (sums over every element of one observation):

* ``gaussian``:   ℓ = Σ (y − ŷ)² / (2σ²)
* ``poisson``:    ℓ = Σ (D ŷ − D y · log(D ŷ)), D = ``dose`` electrons per unit of y
* ``amplitude``:  ℓ = Σ (√ŷ − √y)² / (2σ_a²); σ_a = ``sigma`` or, for counts at ``dose``,
  the variance-stabilised 1/(2√D) (Var √N ≈ 1/4 for Poisson N)
* ``weighted_intensity``: ℓ = ½ Σ ((y − ŷ)/σ)², σ the observation's σ(I)
  (χ²/2: the weighted least squares of crystallographic refinement)
* ``rw``:         ℓ = Σ (y − ŷ)² / Σ y² = Rw² (PDF agreement factor, squared)
* ``ncc``:        ℓ = 1 − NCC(ŷ, y), the zero-normalised cross-correlation of each image
  (LACBED discs: insensitive to scale and background offset)
"""

from __future__ import annotations

import math

import attrs
import torch

from emverse.errors import EmverseError
from emverse.interfaces import Likelihood
from emverse.noise import GaussianNoise, PoissonNoise, sum_but_batch


@attrs.frozen
class Observation:
    """Measured values with what a likelihood may need besides them.

    ``sigma``: standard uncertainty of each value (same shape), ``mask``: True where a
    value counts (same shape), both optional.
    """

    values: torch.Tensor
    sigma: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def _parts(y_pred: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(y, Observation):
        values, sigma, mask = y.values, y.sigma, y.mask
    else:
        values, sigma, mask = y, None, None
    values = torch.as_tensor(values, dtype=y_pred.dtype, device=y_pred.device)
    if values.shape != y_pred.shape:
        try:
            values = values.expand_as(y_pred)
        except RuntimeError as err:
            raise EmverseError(
                f"the observation has shape {tuple(values.shape)} but the forward model predicts "
                f"{tuple(y_pred.shape)}; give an observation of the predicted shape"
            ) from err
    if sigma is not None:
        sigma = torch.as_tensor(sigma, dtype=y_pred.dtype, device=y_pred.device).expand_as(y_pred)
    if mask is not None:
        mask = torch.as_tensor(mask, device=y_pred.device).expand_as(y_pred)
    return values, sigma, mask


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise EmverseError(f"likelihood {name} = {value!r} must be a finite number > 0")
    return value


class GaussianLikelihood(Likelihood):
    """Additive white Gaussian noise of standard deviation ``sigma`` (observation units)."""

    expects = "any"

    def __init__(self, sigma: float = 1.0):
        self.sigma = _positive("sigma", sigma)

    def negative_log_likelihood(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        return sum_but_batch((values - y_pred) ** 2, mask) / (2.0 * self.sigma**2)

    def sample(self, y_pred, generator=None):
        return GaussianNoise(self.sigma).sample(y_pred, generator)

    def fisher_diagonal(self, y_pred, y):
        _, _, mask = _parts(y_pred, y)
        info = torch.full_like(y_pred, 1.0 / self.sigma**2)
        return info if mask is None else torch.where(mask, info, torch.zeros_like(info))

    def chi2(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        count = sum_but_batch(torch.ones_like(y_pred), mask)
        return sum_but_batch((values - y_pred) ** 2, mask) / self.sigma**2, count


class PoissonLikelihood(Likelihood):
    """Counting noise: ``y`` = counts / ``dose``, the prediction a probability per pixel."""

    expects = "intensity"

    def __init__(self, dose: float = 1000.0):
        self.dose = _positive("dose", dose)

    def negative_log_likelihood(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        rate = y_pred.clamp_min(1e-12) * self.dose
        return sum_but_batch(rate - values * self.dose * torch.log(rate), mask)

    def sample(self, y_pred, generator=None):
        return PoissonNoise(self.dose).sample(y_pred, generator)

    #: expected counts below which a value carries no χ² term (a pixel outside every disc)
    CHI2_MIN_COUNTS = 1e-6

    def fisher_diagonal(self, y_pred, y):
        """dose / ŷ per value (Fisher information of a Poisson mean dose·ŷ about ŷ)."""
        _, _, mask = _parts(y_pred, y)
        info = self.dose / y_pred.clamp_min(1e-12 / self.dose)
        info = torch.where(y_pred * self.dose > self.CHI2_MIN_COUNTS, info, torch.zeros_like(info))
        return info if mask is None else torch.where(mask, info, torch.zeros_like(info))

    def chi2(self, y_pred, y):
        """Pearson χ² in counts, Σ (N − dose·ŷ)² / (dose·ŷ), over values with expected counts
        above ``CHI2_MIN_COUNTS`` (an observed count where none is expected makes χ² infinite)."""
        values, _, mask = _parts(y_pred, y)
        expected = y_pred * self.dose
        counts = values * self.dose
        counting = expected > self.CHI2_MIN_COUNTS
        if mask is not None:
            counting = counting & mask.bool()
        terms = (counts - expected) ** 2 / expected.clamp_min(self.CHI2_MIN_COUNTS)
        stray = ((counts > 0) & ~counting).flatten(1).any(dim=1) if mask is None else \
            ((counts > 0) & ~counting & mask.bool()).flatten(1).any(dim=1)
        chi2 = sum_but_batch(terms, counting)
        chi2 = torch.where(stray, torch.full_like(chi2, float("inf")), chi2)
        return chi2, sum_but_batch(torch.ones_like(y_pred), counting)


class AmplitudeLikelihood(Likelihood):
    """Gaussian on amplitudes √I (ptychography's usual data term)."""

    expects = "intensity"

    def __init__(self, sigma: float | None = None, dose: float | None = None):
        self.sigma = _positive("sigma", sigma)
        self.dose = _positive("dose", dose)

    @property
    def amplitude_sigma(self) -> float:
        if self.sigma is not None:
            return self.sigma
        return 0.5 / math.sqrt(self.dose) if self.dose is not None else 1.0

    def negative_log_likelihood(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        # the 1e-12 keeps the square root differentiable where the prediction is exactly 0
        diff = torch.sqrt(y_pred.clamp_min(0) + 1e-12) - torch.sqrt(values.clamp_min(0))
        return sum_but_batch(diff**2, mask) / (2.0 * self.amplitude_sigma**2)

    def fisher_diagonal(self, y_pred, y):
        """1 / (4 ŷ σ_a²): the Gauss–Newton curvature of the amplitude residual about ŷ."""
        _, _, mask = _parts(y_pred, y)
        info = 1.0 / (4.0 * (y_pred.clamp_min(0) + 1e-12) * self.amplitude_sigma**2)
        info = torch.where(y_pred > 0, info, torch.zeros_like(info))
        return info if mask is None else torch.where(mask, info, torch.zeros_like(info))


class WeightedIntensityLikelihood(Likelihood):
    """χ²/2 with the observation's σ(I): weighted least squares on intensities."""

    expects = "intensity"

    def negative_log_likelihood(self, y_pred, y):
        values, sigma, mask = _parts(y_pred, y)
        if sigma is None:
            raise EmverseError(
                "likelihood 'core.weighted_intensity' needs σ(I): pass an emverse.likelihoods.Observation "
                "with sigma, or use 'core.gaussian'"
            )
        return 0.5 * sum_but_batch(((values - y_pred) / sigma) ** 2, mask)


class RwLikelihood(Likelihood):
    """Rw² = Σ (y − ŷ)² / Σ y² (PDF G(r) agreement; ``sqrt`` of ℓ is the usual Rw)."""

    expects = "any"

    def negative_log_likelihood(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        return sum_but_batch((values - y_pred) ** 2, mask) / sum_but_batch(values**2, mask).clamp_min(1e-300)


class NCCLikelihood(Likelihood):
    """1 − zero-normalised cross-correlation over each observation's elements."""

    expects = "intensity"

    def negative_log_likelihood(self, y_pred, y):
        values, _, mask = _parts(y_pred, y)
        batch = y_pred.shape[0] if y_pred.dim() else 1
        a = y_pred.reshape(batch, -1)
        b = values.reshape(batch, -1)
        w = mask.reshape(batch, -1).to(a.dtype) if mask is not None else torch.ones_like(a)
        n = w.sum(dim=1, keepdim=True).clamp_min(1.0)
        a = a - (w * a).sum(dim=1, keepdim=True) / n
        b = b - (w * b).sum(dim=1, keepdim=True) / n
        num = (w * a * b).sum(dim=1)
        den = torch.sqrt((w * a * a).sum(dim=1) * (w * b * b).sum(dim=1)).clamp_min(1e-300)
        return 1.0 - num / den


class ModelLikelihood(Likelihood):
    """The forward model's own noise model: ℓ = −``forward_model.log_likelihood(ŷ, y)``.

    What a refinement uses when the recipe has no ``[likelihood]`` table.
    """

    expects = "any"

    def __init__(self, forward_model=None):
        self.forward_model = forward_model

    def negative_log_likelihood(self, y_pred, y):
        if self.forward_model is None:
            raise EmverseError("likelihood 'core.model' is not bound to a forward model")
        values = y.values if isinstance(y, Observation) else y
        return -self.forward_model.log_likelihood(y_pred, values)
