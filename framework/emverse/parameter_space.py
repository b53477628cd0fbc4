"""Named, bounded parameter vectors with units (the unknown of many inverse problems)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch

from emverse.errors import EmverseError


@attrs.frozen
class Parameter:
    """One scalar unknown: its name, unit and the box it lives in.

    ``low``/``high`` bound the prior range (uniform sampling, normalisation).
    ``mean``/``half_range`` default to the box centre and half-width and are
    what :meth:`ParameterSpace.normalise` uses, so a table given as
    "mean ± range" maps exactly onto [-1, 1].
    """

    name: str
    unit: str
    low: float
    high: float
    description: str = ""

    def __attrs_post_init__(self):
        if not self.high > self.low:
            raise ValueError(
                f"parameter {self.name!r}: high ({self.high}) must exceed low ({self.low})"
            )

    @classmethod
    def centred(cls, name: str, unit: str, mean: float, half_range: float, description: str = ""):
        return cls(name, unit, mean - half_range, mean + half_range, description)

    @property
    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def half_range(self) -> float:
        return 0.5 * (self.high - self.low)


@attrs.frozen
class ParameterSpace:
    """An ordered set of :class:`Parameter`; tensors carry them in the last axis."""

    parameters: tuple[Parameter, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")

    def __len__(self) -> int:
        return len(self.parameters)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(p.unit for p in self.parameters)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter {name!r}; known: {', '.join(self.names)}") from None

    def bounds(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.tensor([p.low for p in self.parameters], dtype=dtype, device=device)
        high = torch.tensor([p.high for p in self.parameters], dtype=dtype, device=device)
        return low, high

    def normalise(self, x: torch.Tensor, target: str = "[-1,1]") -> torch.Tensor:
        """Physical units -> [-1, 1] (default) or [0, 1]; the last axis holds the parameters."""
        low, high = self.bounds(x.dtype, x.device)
        unit = (x - low) / (high - low)
        return _from_unit(unit, target)

    def denormalise(self, z: torch.Tensor, target: str = "[-1,1]") -> torch.Tensor:
        low, high = self.bounds(z.dtype, z.device)
        unit = _to_unit(z, target)
        return low + unit * (high - low)

    def sample_uniform(
        self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """``n`` draws uniform in the box, shape (n, len(self)), in physical units."""
        u = torch.rand(n, len(self), generator=generator, dtype=dtype, device=device)
        low, high = self.bounds(dtype, device)
        return low + u * (high - low)

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds(x.dtype, x.device)
        return ((x >= low) & (x <= high)).all(dim=-1)

    def subset(self, names: Sequence[str]) -> ParameterSpace:
        return ParameterSpace(tuple(self.parameters[self.index(n)] for n in names))


def _from_unit(unit: torch.Tensor, target: str) -> torch.Tensor:
    if target == "[-1,1]":
        return 2.0 * unit - 1.0
    if target == "[0,1]":
        return unit
    raise ValueError(f"normalisation target {target!r} is unknown; use '[-1,1]' or '[0,1]'")


def _to_unit(z: torch.Tensor, target: str) -> torch.Tensor:
    if target == "[-1,1]":
        return 0.5 * (z + 1.0)
    if target == "[0,1]":
        return z
    raise ValueError(f"normalisation target {target!r} is unknown; use '[-1,1]' or '[0,1]'")


def check_same_space(expected: ParameterSpace, found: ParameterSpace, source: str) -> None:
    """Raise when a checkpoint/dataset was made for another parameter space."""
    if expected.names != found.names:
        raise EmverseError(
            f"{source} was made for parameters {list(found.names)}, but this model infers "
            f"{list(expected.names)}; use a checkpoint/dataset of the same parameter space or retrain"
        )
    for a, b in zip(expected.parameters, found.parameters, strict=True):
        if not (math.isclose(a.low, b.low, rel_tol=1e-6, abs_tol=1e-9)
                and math.isclose(a.high, b.high, rel_tol=1e-6, abs_tol=1e-9)):
            raise EmverseError(
                f"{source}: parameter {a.name!r} has range [{b.low}, {b.high}] there but "
                f"[{a.low}, {a.high}] here; normalisation would be wrong — retrain for this range"
            )


def space_to_metadata(space: ParameterSpace) -> dict:
    """A parameter space as JSON-able metadata (names, units, bounds) for a store or checkpoint."""
    return {
        "names": list(space.names),
        "units": list(space.units),
        "low": [p.low for p in space.parameters],
        "high": [p.high for p in space.parameters],
    }


def space_from_metadata(meta: dict) -> ParameterSpace:
    return ParameterSpace(tuple(
        Parameter(n, u, lo, hi)
        for n, u, lo, hi in zip(meta["names"], meta["units"], meta["low"], meta["high"], strict=True)
    ))
