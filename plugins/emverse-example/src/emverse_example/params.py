"""Parameters of the example components (attrs only: recipes validate without torch)."""

from typing import ClassVar

import attrs
from emverse.params import positive


@attrs.frozen
class LinearGaussianParams:
    """y = A x + ε with ε ~ N(0, noise_sigma² I); A has N(0, 1/dim_x) entries drawn from matrix_seed."""

    output: ClassVar[str] = "any"
    takes: ClassVar[str] = "parameter_vector"

    dim_x: int = attrs.field(default=4, validator=positive)
    dim_y: int = attrs.field(default=6, validator=positive)
    noise_sigma: float = attrs.field(default=0.3, validator=positive)
    matrix_seed: int = 0
    #: the unknown's box for example_input / the parameter space (x_i in [-bound, bound])
    bound: float = attrs.field(default=2.0, validator=positive)


@attrs.frozen
class GaussianPriorParams:
    """x ~ N(mean, std² I) in ``dim`` dimensions."""

    dim: int = attrs.field(default=4, validator=positive)
    mean: float = 0.0
    std: float = attrs.field(default=1.0, validator=positive)
