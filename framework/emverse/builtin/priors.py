"""``core.uniform``: the uniform prior over a forward model's parameter box.

The prior every amortized CBED model of emverse is trained on, and the physics-only
starting point of a posterior correction when no network exists for a crystal: its draws
are spread over the box, and ``[correction]`` finds the modes of the exact posterior.
The ``infer`` task hands it the forward model's parameter space (``use_parameter_space``).
"""

from __future__ import annotations

import torch

from emverse.errors import EmverseError
from emverse.interfaces import Prior


class UniformPrior(Prior):
    def __init__(self):
        super().__init__()
        self.parameter_space = None

    @classmethod
    def from_params(cls, params=None, ctx=None):
        return cls()

    def use_parameter_space(self, space) -> None:
        if space is None:
            raise EmverseError("core.uniform needs a [forward_model] with a parameter_space")
        self.parameter_space = space
        self.event_shape = (len(space),)

    def sample(self, n, condition=None, sampler=None, guidance=None, generator=None):
        if self.parameter_space is None:
            raise EmverseError("core.uniform has no parameter space yet; the infer task gives it the "
                               "forward model's (use_parameter_space)")
        draws = self.parameter_space.sample_uniform(n, generator=generator, dtype=torch.float64)
        return draws if condition is None else draws[None]

    def log_prob(self, x):
        inside = self.parameter_space.contains(x)
        low, high = self.parameter_space.bounds(x.dtype)
        log_volume = torch.log(high - low).sum()
        return torch.where(inside, -log_volume, torch.full_like(log_volume, -float("inf")).expand_as(inside))
