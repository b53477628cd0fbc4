"""The 13 MgB2 [010] CBED parameters and their ranges (paper table 2).

Parameters are drawn uniformly in ``mean ± half_range`` and normalised to
[-1, 1] with the same mean and half range (appendix B.2):
``z = (x − mean) / half_range``. NRMSE is RMSE divided by the full range
``2·half_range`` (§5.1), so predicting the mean of an unconstrained
parameter gives 1/√12 ≈ 0.289 and sampling it uniformly gives 1/√6 ≈ 0.408.

The forward model (``bloch.cbed``) carries its own ``parameter_space``; the
CDI components use it when they are given one and fall back to this table
otherwise. A checkpoint stores the names and bounds it was trained with and
refuses to run on another space.
"""

from __future__ import annotations

import math

from emverse.errors import EmverseError
from emverse.parameter_space import Parameter, ParameterSpace

#: (name, unit, mean, half range) in the order of the paper's table 2; names and the
#: reading of the DW components (U11, U33, U12) follow bloch.cbed
MGB2_TABLE: tuple[tuple[str, str, float, float], ...] = (
    ("Mg_U11", "pm^2", 48.0, 25.0),
    ("Mg_U33", "pm^2", 56.0, 25.0),
    ("Mg_U12", "pm^2", 20.0, 10.0),
    ("B_U11", "pm^2", 47.0, 25.0),
    ("B_U33", "pm^2", 51.0, 25.0),
    ("B_U12", "pm^2", 20.0, 10.0),
    ("F_001", "Å", -0.91, 1.0),
    ("F_100", "Å", 0.63, 0.6),
    ("F_101", "Å", 2.69, 0.4),
    ("F_002", "Å", 2.94, 0.3),
    ("tilt_x", "deg", -0.03, 0.2),
    ("tilt_y", "deg", 0.15, 0.2),
    ("thickness", "Å", 2800.0, 1000.0),
)

#: groups used in tables and figures (paper table 1 columns)
GROUPS = {
    "Debye-Waller (Mg)": (0, 1, 2),
    "Debye-Waller (B)": (3, 4, 5),
    "structure factors": (6, 7, 8, 9),
    "tilt": (10, 11),
    "thickness": (12,),
}
DEBYE_WALLER = (0, 1, 2, 3, 4, 5)
GEOMETRY = (10, 11, 12)

NRMSE_MEAN_PREDICTOR = 1.0 / math.sqrt(12.0)
NRMSE_UNIFORM_SAMPLER = 1.0 / math.sqrt(6.0)


def mgb2_parameter_space() -> ParameterSpace:
    return ParameterSpace(
        tuple(Parameter.centred(name, unit, mean, half) for name, unit, mean, half in MGB2_TABLE)
    )


def space_to_metadata(space: ParameterSpace) -> dict:
    return {
        "names": list(space.names),
        "units": list(space.units),
        "low": [p.low for p in space.parameters],
        "high": [p.high for p in space.parameters],
    }


def space_from_metadata(meta: dict) -> ParameterSpace:
    return ParameterSpace(
        tuple(
            Parameter(n, u, lo, hi)
            for n, u, lo, hi in zip(meta["names"], meta["units"], meta["low"], meta["high"], strict=True)
        )
    )


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
