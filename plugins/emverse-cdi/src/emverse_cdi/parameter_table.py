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

from emverse.parameter_space import (  # noqa: F401 (re-exported)
    Parameter,
    ParameterSpace,
    check_same_space,
    space_from_metadata,
    space_to_metadata,
)
from emverse.statistics import NRMSE_MEAN_PREDICTOR, NRMSE_RANDOM_PREDICTOR  # noqa: F401 (re-exported)
from emverse_bloch.cbed_table import paper_space

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

#: NRMSE of an independent uniform draw (the paper's "uniform sampler"; emverse.statistics' name)
NRMSE_UNIFORM_SAMPLER = NRMSE_RANDOM_PREDICTOR


def mgb2_parameter_space() -> ParameterSpace:
    """The paper's table 2, as bloch.cbed's "paper" parameter table defines it (one definition)."""
    return paper_space()
