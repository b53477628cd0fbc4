"""The core's parametrization: a forward model's parameter vector."""

from __future__ import annotations

import torch
from torch import nn

from emverse.errors import EmverseError
from emverse.interfaces import Parametrization


class ParameterVector(Parametrization):
    """The unknown of a forward model with a ``parameter_space``, optimised in normalised units.

    The free parameters live in [-1, 1] over their bounds (so one learning rate suits
    thicknesses in Å and tilts in mrad alike); the others stay at the start value.
    ``forward()`` returns the physical vector, shape (1, n_parameters).
    """

    def __init__(self, free: tuple[str, ...] = ()):
        super().__init__()
        self.free = tuple(free)
        self.space = None
        self.z = None

    def check(self, forward_model) -> None:
        space = getattr(forward_model, "parameter_space", None)
        if space is None:
            raise EmverseError(
                f"[parametrization] core.parameter_vector needs a forward model with a parameter_space; "
                f"[forward_model] {type(forward_model).__name__} has none: use a parametrization of its own"
            )
        unknown = [name for name in self.free if name not in space.names]
        if unknown:
            raise EmverseError(
                f"[parametrization] free = {unknown} are not parameters of [forward_model] "
                f"{type(forward_model).__name__}; choose from {list(space.names)}"
            )

    def start_at(self, forward_model, start: torch.Tensor) -> ParameterVector:
        """Begin at ``start`` (physical units, shape (1, n) or (n,))."""
        self.check(forward_model)
        self.space = forward_model.parameter_space
        z = self.space.normalise(start.reshape(1, -1))
        mask = torch.ones(z.shape[-1], dtype=torch.bool)
        if self.free:
            mask = torch.tensor([name in self.free for name in self.space.names])
        self.register_buffer("fixed_z", z.detach().clone())
        self.register_buffer("free_mask", mask)
        self.z = nn.Parameter(z.detach().clone())
        return self

    def forward(self) -> torch.Tensor:
        if self.z is None:
            raise EmverseError("core.parameter_vector has no start; call start_at(forward_model, start)")
        z = torch.where(self.free_mask, self.z, self.fixed_z)
        return self.space.denormalise(z)

    def constrain(self) -> None:
        self.z.clamp_(-1.0, 1.0)

    def values(self) -> dict[str, torch.Tensor]:
        x = self().detach()[0]
        return {name: x[i] for i, name in enumerate(self.space.names)}
