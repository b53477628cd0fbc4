"""The unknowns of a CBED pattern: which ADPs, structure factors, tilts and thickness are free.

A :class:`CbedTable` maps the parameter vector x (physical units) to what the Bloch
simulation needs: each site's U_cif (Å²), the values of the free structure factors (Å),
the crystal tilt (deg) and the thickness (Å). Two ways to build one:

* ``"paper"`` — the 13-vector of the CBED paper for MgB2 [010] (Zhu et al.,
  arXiv 2411.10431, table 2): per site (U11, U33, U12) in pm² with U22 = U11 and
  U13 = U23 = 0, F(001), F(100), F(101), F(002) in Å, tilt_x, tilt_y in deg, thickness in Å.
  Note that at [010] only h0l beams are excited, for which hᵀUh has no U12 term: the two
  U12 parameters do not change the pattern (zero Fisher information), their posterior is
  their prior.
* ``"symmetry"`` — built from any crystal (a CIF), for a recipe's zone axis: per site of
  the asymmetric unit either U_iso (``adp = "isotropic"``) or the independent U_ij allowed
  by the site symmetry (``adp = "anisotropic"``; e.g. U11 and U33 on a 6/mmm site, with
  U22 = U11 and U12 = U11/2 implied), the structure factors named in
  ``free_reflections`` (real ones only: centrosymmetric, origin on the inversion centre;
  centred on their independent-atom value at the centre ADPs), tilt_x, tilt_y, thickness.

Every site's U_cif is ``u6 = M_s c_s`` (Voigt order U11, U22, U33, U12, U13, U23) with
c_s the site's free components in pm² (1 pm² = 1e-4 Å²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from emverse.crystal import isotropic_u_cif
from emverse.errors import EmverseError
from emverse.parameter_space import Parameter, ParameterSpace

from emverse_bloch.crystal import Crystal
from emverse_bloch.structure_factors import StructureParameters, structure_factors

VOIGT = ("11", "22", "33", "12", "13", "23")
_VOIGT_INDEX = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))

#: the CBED paper's MgB2 [010] reflections with free F, in the order of the vector
PAPER_REFLECTIONS = ((0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 0, 2))


@dataclass
class CbedTable:
    """Layout of the parameter vector; see the module docstring."""

    space: ParameterSpace
    site_maps: list[np.ndarray]  # per site (6, d_s): u6 (pm²) = M_s c_s
    site_slices: list[slice]
    reflections: tuple[tuple[int, int, int], ...]
    reflection_slice: slice
    tilt_slice: slice
    thickness_index: int
    kind: str = "symmetry"
    #: unit phase of each free structure factor: F = value × phase
    phases: tuple[complex, ...] = ()

    def __len__(self) -> int:
        return len(self.space)

    def u_cif(self, x: torch.Tensor) -> torch.Tensor:
        """(..., S, 3, 3) U_cif in Å² from the ADP parameters (pm²)."""
        return _u_cif(x, self.site_maps, self.site_slices)

    def structure_factor_values(self, x: torch.Tensor) -> torch.Tensor:
        """The free F (Å), complex where a phase is not 0 or 180°."""
        values = x[..., self.reflection_slice]
        if all(p == 1 for p in self.phases):
            return values
        phases = torch.tensor(self.phases, dtype=torch.complex128 if x.dtype == torch.float64
                              else torch.complex64, device=x.device)
        return values * phases

    def tilt_deg(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.tilt_slice]

    def thickness(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.thickness_index]


def _u_cif(x: torch.Tensor, site_maps, site_slices) -> torch.Tensor:
    """(..., S, 3, 3) U_cif in Å²: site s takes u6 = M_s x[..., slice_s] (pm² -> Å²)."""
    tensors = []
    for site_map, sl in zip(site_maps, site_slices, strict=True):
        m = torch.as_tensor(site_map, dtype=x.dtype, device=x.device)
        u6 = x[..., sl] @ m.T * 1e-4
        rows = [[None] * 3 for _ in range(3)]
        for k, (i, j) in enumerate(_VOIGT_INDEX):
            rows[i][j] = rows[j][i] = u6[..., k]
        tensors.append(torch.stack([torch.stack(r, -1) for r in rows], -2))
    return torch.stack(tensors, -3)


def paper_space() -> ParameterSpace:
    """The CBED paper's table 2: means ± half-ranges of the 13 MgB2 [010] parameters."""
    c = Parameter.centred
    return ParameterSpace([
        c("Mg_U11", "pm^2", 48.0, 25.0, "Mg U11 (= U22)"),
        c("Mg_U33", "pm^2", 56.0, 25.0, "Mg U33"),
        c("Mg_U12", "pm^2", 20.0, 10.0, "Mg U12"),
        c("B_U11", "pm^2", 47.0, 25.0, "B U11 (= U22)"),
        c("B_U33", "pm^2", 51.0, 25.0, "B U33"),
        c("B_U12", "pm^2", 20.0, 10.0, "B U12"),
        c("F_001", "Å", -0.91, 1.0, "structure factor F(001)"),
        c("F_100", "Å", 0.63, 0.6, "structure factor F(100)"),
        c("F_101", "Å", 2.69, 0.4, "structure factor F(101)"),
        c("F_002", "Å", 2.94, 0.3, "structure factor F(002)"),
        c("tilt_x", "deg", -0.03, 0.2, "crystal tilt towards +x"),
        c("tilt_y", "deg", 0.15, 0.2, "crystal tilt towards +y"),
        c("thickness", "Å", 2800.0, 1000.0, "specimen thickness"),
    ])


def paper_table(crystal: Crystal) -> CbedTable:
    """The CBED paper's 13-vector (two-site structures such as MgB2)."""
    if len(crystal.sites) != 2:
        raise EmverseError(
            f"parameter_table = \"paper\" is the 13-parameter vector of a two-site structure like "
            f"MgB2; {crystal.name} has {len(crystal.sites)} sites: use parameter_table = \"symmetry\""
        )
    # (U11, U33, U12) -> Voigt (U11, U22 = U11, U33, U12, 0, 0)
    site_map = np.zeros((6, 3))
    site_map[0, 0] = site_map[1, 0] = 1.0
    site_map[2, 1] = 1.0
    site_map[3, 2] = 1.0
    return CbedTable(paper_space(), [site_map, site_map.copy()], [slice(0, 3), slice(3, 6)],
                     PAPER_REFLECTIONS, slice(6, 10), slice(10, 12), 12, kind="paper", phases=(1.0,) * 4)


def _independent_components(basis: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Pivot Voigt components (diagonal ones first) and M with u6 = M c, c the pivots' values."""
    d = basis.shape[1]
    pivots: list[int] = []
    for k in range(6):
        trial = pivots + [k]
        if np.linalg.matrix_rank(basis[trial], tol=1e-8) == len(trial):
            pivots = trial
        if len(pivots) == d:
            break
    site_map = basis @ np.linalg.inv(basis[pivots])
    site_map[np.abs(site_map) < 1e-12] = 0.0
    return pivots, site_map


def symmetry_table(
    crystal: Crystal,
    *,
    adp: str = "isotropic",
    u_range_pm2: tuple[float, float] = (20.0, 150.0),
    free_reflections=(),
    structure_factor_half_range: float = 0.5,
    tilt_half_range_deg: float = 0.2,
    thickness_range_angstrom: tuple[float, float] = (500.0, 2500.0),
    parametrization: str = "lobato",
) -> CbedTable:
    """A table for any crystal (see the module docstring); ``parametrization`` names the
    scattering-factor table the free F are centred with."""
    if adp not in ("isotropic", "anisotropic"):
        raise EmverseError(f"adp = {adp!r} is unknown; use 'isotropic' or 'anisotropic'")
    low_u, high_u = (float(v) for v in u_range_pm2)
    if not 0.0 <= low_u < high_u:
        raise EmverseError(f"u_range_pm2 = {list(u_range_pm2)} must be [low, high] with 0 <= low < high (pm²)")
    t_low, t_high = (float(v) for v in thickness_range_angstrom)
    if not 0.0 <= t_low < t_high:
        raise EmverseError(f"thickness_range_angstrom = {list(thickness_range_angstrom)} must be "
                           "[low, high] with 0 <= low < high (Å)")
    if not tilt_half_range_deg > 0:
        raise EmverseError(f"tilt_half_range_deg = {tilt_half_range_deg} must be > 0 deg")
    params: list[Parameter] = []
    site_maps, site_slices = [], []
    iso = isotropic_u_cif(1.0, crystal.cell_lengths, crystal.cell_angles)
    iso6 = np.array([iso[i, j] for i, j in _VOIGT_INDEX])
    for s, site in enumerate(crystal.sites):
        start = len(params)
        if adp == "isotropic":
            params.append(Parameter(f"{site.label}_Uiso", "pm^2", low_u, high_u,
                                    f"{site.label} isotropic displacement U_iso"))
            site_maps.append(iso6[:, None].copy())
        else:
            pivots, site_map = _independent_components(crystal.adp_basis(s))
            for k in pivots:
                if k < 3:
                    params.append(Parameter(f"{site.label}_U{VOIGT[k]}", "pm^2", low_u, high_u,
                                            f"{site.label} U{VOIGT[k]}"))
                else:
                    half = 0.5 * (high_u - low_u)
                    params.append(Parameter(f"{site.label}_U{VOIGT[k]}", "pm^2", -half, half,
                                            f"{site.label} U{VOIGT[k]}"))
            site_maps.append(site_map)
        site_slices.append(slice(start, len(params)))
    if not (math.isfinite(structure_factor_half_range) and structure_factor_half_range > 0):
        raise EmverseError(f"structure_factor_half_range = {structure_factor_half_range} must be > 0 Å")
    reflections = tuple(tuple(int(v) for v in h) for h in free_reflections)
    first_f = len(params)
    # each free F is centred on its independent-atom value at the box-centre ADPs
    centres = []
    if reflections:
        low, high = ParameterSpace(params).bounds(torch.float64)
        centre_u = _u_cif((0.5 * (low + high))[None], site_maps, site_slices)[0]
        base = StructureParameters.from_crystal(crystal)
        centres = structure_factors(crystal, np.asarray(reflections, dtype=np.int64),
                                    StructureParameters(base.positions, centre_u, base.occupancy),
                                    parametrization).tolist()
    phases = []
    for h, f in zip(reflections, centres, strict=True):
        f = complex(f)
        # the free value is F along its independent-atom phase: real F keep their sign (phase 1);
        # a phase fixed by symmetry (a centrosymmetric crystal with the origin off the centre,
        # e.g. Si in origin choice 1) is exact, a free phase (non-centrosymmetric) is held at
        # its independent-atom value
        if abs(f.imag) <= 1e-9 * max(1.0, abs(f)):
            phase, value = 1.0 + 0.0j, f.real
        else:
            phase, value = f / abs(f), abs(f)
        phases.append(phase)
        name = "F_" + "".join(str(v) if v >= 0 else f"m{-v}" for v in h)
        params.append(Parameter.centred(name, "Å", value, structure_factor_half_range,
                                        f"structure factor F{h} (along its phase {np.angle(phase, deg=True):.0f}°)"))
    reflection_slice = slice(first_f, len(params))
    params.append(Parameter.centred("tilt_x", "deg", 0.0, tilt_half_range_deg, "crystal tilt towards +x"))
    params.append(Parameter.centred("tilt_y", "deg", 0.0, tilt_half_range_deg, "crystal tilt towards +y"))
    params.append(Parameter("thickness", "Å", t_low, t_high, "specimen thickness"))
    return CbedTable(ParameterSpace(params), site_maps, site_slices, reflections, reflection_slice,
                     slice(len(params) - 3, len(params) - 1), len(params) - 1, kind="symmetry",
                     phases=tuple(phases))
