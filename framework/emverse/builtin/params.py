from __future__ import annotations

from typing import ClassVar

import attrs

from emverse.params import ComponentSpec, in_range, nested, positive


@attrs.frozen
class SimulateParams:
    """Options of the ``simulate`` task."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model",)
    n: int = attrs.field(default=4, validator=positive)


@attrs.frozen
class InferParams:
    """Options of the ``infer`` task: posterior samples for simulated observations."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "prior")
    n_observations: int = attrs.field(default=4, validator=positive)
    n_samples: int = attrs.field(default=200, validator=positive)


@attrs.frozen
class RefineParams:
    requires: ClassVar[tuple[str, ...]] = ("forward_model", "refiner")
    #: start = truth + start_offset × half-range × N(0, 1) (normalised units)
    start_offset: float = attrs.field(default=0.3, validator=in_range(0.0, 2.0))


@attrs.frozen
class AdamParams:
    steps: int = attrs.field(default=500, validator=positive)
    lr: float = attrs.field(default=1e-2, validator=positive)
    #: stop when the loss changed by less than this (relative) over ``patience`` steps; 0: never
    tolerance: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    patience: int = attrs.field(default=20, validator=positive)


@attrs.frozen
class LBFGSParams:
    steps: int = attrs.field(default=50, validator=positive)
    lr: float = attrs.field(default=1.0, validator=positive)
    history_size: int = attrs.field(default=20, validator=positive)
    #: L-BFGS stops when a step changes the loss or the parameters by less than this
    tolerance: float = attrs.field(default=1e-14, validator=in_range(0.0, 1.0))


# ----------------------------------------------------------------- likelihoods
@attrs.frozen
class GaussianLikelihoodParams:
    expects: ClassVar[str] = "any"
    #: standard deviation of the additive noise, in observation units
    sigma: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class PoissonLikelihoodParams:
    expects: ClassVar[str] = "intensity"
    #: electrons per unit of the observation (observation = counts / dose)
    dose: float = attrs.field(default=1000.0, validator=positive)


@attrs.frozen
class AmplitudeLikelihoodParams:
    expects: ClassVar[str] = "intensity"
    #: σ of the amplitudes √I; unset: 1/(2√dose) for counts, else 1
    sigma: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    dose: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))


@attrs.frozen
class IntensityLikelihoodParams:
    """Likelihoods with no parameters that score intensities (weighted_intensity, ncc)."""

    expects: ClassVar[str] = "intensity"


@attrs.frozen
class AnyLikelihoodParams:
    """Likelihoods with no parameters that score any prediction (rw)."""

    expects: ClassVar[str] = "any"


# ------------------------------------------------------------- parametrizations
@attrs.frozen
class ParameterVectorParams:
    """The forward model's parameter vector, optimised in normalised units ([-1, 1] over its bounds)."""

    takes: ClassVar[str] = "parameter_vector"
    #: names of the free parameters (default: all); the others stay at the start value
    free: tuple[str, ...] = attrs.field(default=(), converter=tuple)


# ------------------------------------------------------------------ evaluation
def _optional(kind: str):
    return attrs.field(default=None, metadata={"emverse_kind": kind})


@attrs.frozen
class RefineMethodParams:
    """``core.refine`` in ``[[compare]]``: a refiner (+ parametrization, likelihood) from the shared start."""

    label: str = "refine"
    refiner: ComponentSpec = nested("refiner", "core.adam")
    parametrization: ComponentSpec | None = _optional("parametrization")
    likelihood: ComponentSpec | None = _optional("likelihood")


@attrs.frozen
class InferMethodParams:
    """``core.infer`` in ``[[compare]]``: posterior draws; the estimate is their mean."""

    prior: ComponentSpec = nested("prior", required=True)
    label: str = "infer"
    sampler: ComponentSpec | None = _optional("sampler")
    guidance: ComponentSpec | None = _optional("guidance")
    n_samples: int = attrs.field(default=100, validator=positive)


@attrs.frozen
class EvaluateParams:
    """Options of the ``evaluate`` task: every ``[[compare]]`` method on the same test set."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "compare")
    n_observations: int = attrs.field(default=10, validator=positive)
    #: refine methods start at truth + start_offset × half-range × N(0, 1) (the same start for all)
    start_offset: float = attrs.field(default=0.3, validator=in_range(0.0, 2.0))
    n_boot: int = attrs.field(default=2000, validator=positive)
    confidence: float = attrs.field(default=0.95, validator=in_range(0.5, 0.999))
