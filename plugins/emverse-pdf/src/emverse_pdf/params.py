"""Parameters of the emverse-pdf components (attrs only; never imports torch).

Names follow the PDF community (diffpy, PDFgetX, DebyeCalculator): they are
what a user reads in a ``.gr`` header. Units:

* ``qmin``, ``qmax``, ``qstep``: Å⁻¹ (Q = 4 pi sin(theta)/lambda)
* ``qdamp``, ``qbroad``: Å⁻¹ (G(r) envelope exp(-(qdamp r)^2/2); peak broadening sqrt(1 + (qbroad r)^2))
* ``delta1``: Å, ``delta2``: Å² (correlated-motion sharpening, 1 - delta1/r - delta2/r^2)
* ``biso``: Å² (isotropic B = 8 pi^2 U)
* ``rmin``, ``rmax``, ``rstep``: Å (grid r = rmin + k rstep, rmax excluded)
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import non_negative, path_field, positive


def _optional_positive(instance, attribute, value):
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or omitted, got {value!r}")


def _check_rstep(instance, attribute, value):
    if value is None or not value > 0:
        raise ValueError(f"rstep must be > 0 Å, got {value!r}; use e.g. rstep = 0.01")


@attrs.frozen
class DebyeParams:
    """Settings of the Debye PDF calculator (``pdf.debye``).

    The defaults are the CbLDM / DeepStruc simulation settings: qmin 0.7,
    qmax 25 Å⁻¹, qdamp 0.04 Å⁻¹, delta2 2.0 Å², B 0.3 Å², r 0-30 Å step 0.01 Å.
    ``qstep`` None chooses pi / (rmax + rstep) (Nyquist for the r range).
    ``elements``: one symbol for every atom (e.g. "Au"), or one per atom separated
    by spaces ("Au Au Pt ..."); in Python also a sequence of symbols.
    ``output``: which function ``forward`` returns: "gr" G(r) (Å⁻²), "fq" F(Q)
    (Å⁻¹), "sq" S(Q), "iq" I(Q) (electrons², whole particle).
    ``noise_sigma``: standard deviation of Gaussian noise on the output (its units), 0 = none.
    ``max_chunk_elements``: pairs x Q-points x batch evaluated at once (memory bound).
    """

    elements: str = "Au"
    qmin: float = attrs.field(default=0.7, validator=non_negative)
    qmax: float = attrs.field(default=25.0, validator=positive)
    qstep: float | None = attrs.field(default=None, validator=_optional_positive)
    qdamp: float = attrs.field(default=0.04, validator=non_negative)
    qbroad: float = attrs.field(default=0.0, validator=non_negative)
    delta1: float = attrs.field(default=0.0, validator=non_negative)
    delta2: float = attrs.field(default=2.0, validator=non_negative)
    biso: float = attrs.field(default=0.3, validator=non_negative)
    rmin: float = attrs.field(default=0.0, validator=non_negative)
    rmax: float = attrs.field(default=30.0, validator=positive)
    rstep: float = attrs.field(default=0.01, validator=_check_rstep)
    output: str = attrs.field(
        default="gr", validator=attrs.validators.in_(("gr", "fq", "sq", "iq"))
    )
    noise_sigma: float = attrs.field(default=0.0, validator=non_negative)
    max_chunk_elements: int = attrs.field(default=2**22, validator=positive)

    def __attrs_post_init__(self):
        if not self.qmax > self.qmin:
            raise ValueError(
                f"qmax must be > qmin, got qmax={self.qmax!r} Å⁻¹ and qmin={self.qmin!r} Å⁻¹; "
                "raise qmax or lower qmin"
            )
        if not self.rmax > self.rmin:
            raise ValueError(
                f"rmax must be > rmin, got rmax={self.rmax!r} Å and rmin={self.rmin!r} Å; raise rmax"
            )


#: The PDF settings of the CbLDM / DeepStruc simulated data (qmin 0.7, qmax 25 Å⁻¹,
#: qdamp 0.04 Å⁻¹, delta2 2.0 Å², B 0.3 Å², r 0-30 Å step 0.01 Å).
CBLDM_SETTINGS = DebyeParams()


#: Settings that reproduce the DeepStruc simulated .gr files (data/PDFs_simulated) best,
#: found by fitting: the stated CbLDM settings give Rw 0.08-0.17 on them, these give
#: Rw <= 0.0025 (after a scale fit; values taken at r = 0, 0.01, ..., 29.99 Å although the
#: files label them with np.linspace(0, 30, 3000)). See docs/emverse-pdf.md.
DEEPSTRUC_FILE_SETTINGS = DebyeParams(qmin=0.79, qdamp=0.0, delta2=0.0)


@attrs.frozen
class RwpParams:
    """``pdf.rwp``: Rwp after a least-squares scale (and optionally offset) fit.

    ``fit_rmin``/``fit_rmax`` (Å) restrict the comparison to an r range
    (None = whole grid); ``fit_scale``/``fit_offset`` switch the linear fit.
    """

    fit_rmin: float | None = None
    fit_rmax: float | None = None
    fit_scale: bool = True
    fit_offset: bool = False


@attrs.frozen
class FitParams:
    """``pdf.fit``: gradient-descent refinement of a structure against a G(r).

    ``optimizer``: "adam" (``steps`` iterations) or "lbfgs" (``steps`` L-BFGS
    iterations with strong-Wolfe line search). Adam uses ``lr_positions_angstrom`` (Å per step scale) for
    positions and ``lr_nuisance`` for log-scale / log-qdamp / log-B.
    ``refine_*`` switch which quantities move. ``fit_rmin``/``fit_rmax``: r range (Å).
    ``tolerance``: stop when the relative loss change over 20 steps is below it.
    """

    optimizer: str = attrs.field(default="adam", validator=attrs.validators.in_(("adam", "lbfgs")))
    steps: int = attrs.field(default=300, validator=positive)
    lr_positions_angstrom: float = attrs.field(default=0.01, validator=positive)
    lr_nuisance: float = attrs.field(default=0.02, validator=positive)
    refine_positions: bool = True
    refine_scale: bool = True
    refine_qdamp: bool = False
    refine_biso: bool = False
    fit_rmin: float | None = None
    fit_rmax: float | None = None
    tolerance: float = attrs.field(default=1e-7, validator=non_negative)


@attrs.frozen
class FitStructureParams:
    """Task ``pdf.fit_structure``: refine a starting structure against a G(r).

    ``observation``: a .gr file (path relative to the recipe, or ``shared:...``),
    or "" to simulate it from ``truth_structure`` with the forward model (synthetic test).
    ``structure``/``truth_structure``: a .xyz file, ``file.cif@<radius_angstrom>``,
    ``icosahedron:<element>:<shells>:<nn_distance_angstrom>`` or
    ``fcc:<element>:<lattice_constant_angstrom>:<radius_angstrom>``.
    ``write_gr``: write the fitted G(r) as fitted.gr and the structure as refined.xyz.
    ``perturb_angstrom``: Gaussian displacement (per Cartesian component, Å) applied to the start.
    """

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "refiner")
    structure: str = "icosahedron:Au:2:2.88"
    observation: str = path_field("file", default="", reader="emverse_pdf.gr_io:read_gr")
    truth_structure: str = "icosahedron:Au:2:2.88"
    perturb_angstrom: float = attrs.field(default=0.0, validator=non_negative)
    write_gr: bool = True
