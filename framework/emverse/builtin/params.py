from __future__ import annotations

from typing import ClassVar

import attrs

from emverse.params import in_range, positive


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


@attrs.frozen
class LBFGSParams:
    steps: int = attrs.field(default=50, validator=positive)
    lr: float = attrs.field(default=1.0, validator=positive)
    history_size: int = attrs.field(default=20, validator=positive)
