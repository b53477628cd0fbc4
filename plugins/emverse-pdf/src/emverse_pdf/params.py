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
from emverse.params import non_negative, optional_positive, path_field, positive


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
    ``pair_sum``: how the sum over atom pairs is done: "direct" (sinc(Q r) of every pair,
    exact), "grid" (pair-distance histogram on a fine grid, then one kernel value per grid
    node; Rw against the exact sum ~4e-10 in float64, float32 rounding ~5e-6 in float32,
    at qmax 30 Å⁻¹; one B for all atoms) or "auto" (the grid once the real pairs outnumber
    1/16 of the grid nodes, from about 20 atoms). Both are differentiable in positions.
    See docs/emverse-pdf.md.
    """

    #: what the model predicts and takes (checked against [likelihood] / [parametrization])
    output: ClassVar[str] = "pdf"
    takes: ClassVar[str] = "structure"

    elements: str = "Au"
    qmin: float = attrs.field(default=0.7, validator=non_negative)
    qmax: float = attrs.field(default=25.0, validator=positive)
    qstep: float | None = attrs.field(default=None, validator=optional_positive)
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
    pair_sum: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "direct", "grid")))

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


# ---------------------------------------------------------------- periodic crystals
_PHASE_REFINABLE = ("scale", "lattice", "xyz", "adp", "occupancy", "delta1", "delta2", "diameter")
_DATASET_REFINABLE = ("qdamp", "qbroad")


def _names_in(allowed: tuple[str, ...]):
    def check(instance, attribute, value):
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise ValueError(f"{attribute.name} {unknown} unknown; choose from {', '.join(allowed)}")

    return check


@attrs.frozen
class CrystalPhaseOptions:
    """One crystalline phase of ``pdf.fit_crystal``.

    ``structure``: a CIF (relative to the recipe, or ``shared:...``), read by
    ``emverse.crystal.Crystal.from_cif``. ``name``: label in metrics (default: the
    CIF's file stem). ``scale``: start scale (phase fraction × data scale).
    ``delta1`` (Å), ``delta2`` (Å²): correlated-motion sharpening. ``adp``:
    "isotropic" or "anisotropic". ``uiso``: start U_iso (Å²) for all sites
    (None keeps the CIF's). ``envelope``: "none", "sphere" (``diameter`` Å, as
    PDFfit2's spdiameter) or "spheroid" (``diameter`` equatorial, ``polar_diameter`` Å).
    ``refine``: which of scale, lattice, xyz, adp, occupancy, delta1, delta2, diameter move.
    """

    structure: str
    name: str = ""
    scale: float = 1.0
    delta1: float = 0.0
    delta2: float = 0.0
    adp: str = attrs.field(default="isotropic", validator=attrs.validators.in_(("isotropic", "anisotropic")))
    uiso: float | None = attrs.field(default=None, validator=optional_positive)
    envelope: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "sphere", "spheroid")))
    diameter: float | None = attrs.field(default=None, validator=optional_positive)
    polar_diameter: float | None = attrs.field(default=None, validator=optional_positive)
    refine: tuple[str, ...] = attrs.field(default=("scale", "lattice", "adp", "delta2"),
                                          validator=_names_in(_PHASE_REFINABLE))

    def __attrs_post_init__(self):
        if self.envelope != "none" and self.diameter is None:
            raise ValueError(f"envelope {self.envelope!r} needs diameter (Å), e.g. diameter = 40.0")
        if self.envelope == "spheroid" and self.polar_diameter is None:
            raise ValueError("envelope 'spheroid' needs polar_diameter (Å) beside diameter (equatorial)")
        if "diameter" in self.refine and self.envelope == "none":
            raise ValueError("refine lists 'diameter' but envelope = 'none'; set envelope = 'sphere'")


@attrs.frozen
class CrystalDatasetOptions:
    """One measured G(r) and the phases that make it (``pdf.fit_crystal``).

    ``observation``: a ``.gr`` file (relative to the recipe or ``shared:...``) on a
    uniform r grid. ``name``: label in metrics (default: the file stem).
    ``radiation``: "xray" (pair weights Z) or "neutron" (b_c, Sears 1992).
    ``qmax`` (Å⁻¹): termination; None reads ``qmax`` from the file header (an
    error if it has none); 0 switches the termination ripples off.
    ``qmin`` (Å⁻¹): only for the small-angle check of particle envelopes (None: header).
    ``qdamp``, ``qbroad`` (Å⁻¹): start values. ``fit_rmin``/``fit_rmax`` (Å): fit
    range, inside the data (None: the data's last point). ``refine``: qdamp, qbroad.
    ``start_scale_from_data``: multiply the phases' start scales by the least-squares factor
    between the start model and the data (G is linear in them) before refining.
    """

    observation: str
    phases: tuple[CrystalPhaseOptions, ...]
    name: str = ""
    radiation: str = attrs.field(default="xray", validator=attrs.validators.in_(("xray", "neutron")))
    qmax: float | None = None
    qmin: float | None = None
    qdamp: float = attrs.field(default=0.0, validator=non_negative)
    qbroad: float = attrs.field(default=0.0, validator=non_negative)
    fit_rmin: float = attrs.field(default=1.5, validator=non_negative)
    fit_rmax: float | None = attrs.field(default=None, validator=optional_positive)
    refine: tuple[str, ...] = attrs.field(default=("qdamp",), validator=_names_in(_DATASET_REFINABLE))
    start_scale_from_data: bool = True

    def __attrs_post_init__(self):
        if not self.phases:
            raise ValueError(f"dataset {self.observation!r} has no phases; add [[...phases]] with a structure")
        if self.qmax is not None and self.qmax < 0:
            raise ValueError(f"qmax = {self.qmax} Å⁻¹ is negative; give the data's Qmax or 0 for no termination")
        if self.fit_rmax is not None and not self.fit_rmax > self.fit_rmin:
            raise ValueError(f"fit_rmax {self.fit_rmax} Å must be above fit_rmin {self.fit_rmin} Å")


@attrs.frozen
class FitCrystalParams:
    """Task ``pdf.fit_crystal``: refine periodic crystals (and particles) against measured G(r).

    ``calibrant`` (optional): a dataset of a standard (Ni, Si, Ag, bulk CdSe...)
    fitted first; the instrument parameters named in ``carry`` (qdamp, qbroad)
    are then fixed at its refined values in every sample (not refined there).
    ``samples``: the datasets fitted next, each on its own. The [refiner]
    (``core.lbfgs`` or ``core.adam``) fits each dataset in turn.
    ``write_gr``: write each fitted G(r) as ``<name>.fitted.gr``.

    The files are checked when the recipe is validated (before a run directory
    exists): a readable ``.gr`` with a uniform grid, a Qmax (recipe or header),
    a fit range inside the data, CIFs whose atoms do not overlap under their
    symmetry (see :meth:`validate_files`).
    """

    requires: ClassVar[tuple[str, ...]] = ("refiner",)
    samples: tuple[CrystalDatasetOptions, ...] = ()
    calibrant: CrystalDatasetOptions | None = None
    carry: tuple[str, ...] = attrs.field(default=("qdamp", "qbroad"), validator=_names_in(_DATASET_REFINABLE))
    write_gr: bool = True

    def __attrs_post_init__(self):
        if not self.samples and self.calibrant is None:
            raise ValueError("give at least one dataset: [[options.samples]] (and optionally [options.calibrant])")

    def validate_files(self, resolve) -> None:
        """Check every observation and CIF (``resolve`` maps a recipe path to a file)."""
        from emverse_pdf.crystal_data import check_dataset

        if self.calibrant is not None:
            check_dataset(self.calibrant, resolve, "options.calibrant")
        for k, dataset in enumerate(self.samples):
            check_dataset(dataset, resolve, f"options.samples[{k}]")
