"""Electron structure factors F_g (Å) and potential coefficients U_g (Å⁻²), in torch.

Conventions (the crystallographic ones, as in abTEM and py4DSTEM):

* F(h) = Σ_atoms occ_j f_e,j(|g|) exp(-2π² hᵀ Σ_j h) exp(+2πi h·x_j), with
  x_j fractional, h Miller indices, |g|² = hᵀ G* h (Å⁻², no 2π) and
  Σ_j = D U_j D the fractional displacement covariance (D = diag(a*, b*, c*),
  U_j the CIF-convention tensor in Å²). For an isotropic U this is
  exp(-2π² U |g|²) = exp(-B s²) with B = 8π² U and s = |g|/2.
* U(h) = γ F(h) / (π Ω) in Å⁻² (Ω: cell volume in Å³); V(h) = 47.878 F(h)/Ω V.
* The structure matrix couples beams i, j through U(h_j − h_i) (see
  :mod:`emverse_bloch.structure_matrix`).

Everything is differentiable w.r.t. the asymmetric-unit positions, U tensors
and occupancies held in :class:`StructureParameters` (leading batch axes allowed).

Structure-factor overrides (IAM-SF refinement): :class:`Overrides` names
low-order reflections whose F (Å, thermal damping included) are free values;
each value is copied to all symmetry-equivalent reflections with the phase
exp(-2πi h·t) of the operation and to the Friedel mates as the complex
conjugate. The rest keep their independent-atom values. Use
:func:`f_from_u`/:func:`u_from_f` to convert between F (Å) and U (Å⁻²).

Absorption (optional, proportional model): U'(h) = κ U(h), so the structure
matrix carries U + iU' = (1 + iκ) U; see :mod:`emverse_bloch.structure_matrix`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from emverse.electron import potential_prefactor
from emverse.errors import EmverseError

from emverse_bloch.crystal import Crystal
from emverse_bloch.scattering_factors import scattering_factor


@dataclass
class StructureParameters:
    """The refinable description of the asymmetric unit, as tensors.

    positions: (..., S, 3) fractional; u_cif: (..., S, 3, 3) Å² (CIF convention);
    occupancy: (..., S). Leading axes are batch axes (parameter sets) and broadcast.
    """

    positions: torch.Tensor
    u_cif: torch.Tensor
    occupancy: torch.Tensor

    @classmethod
    def from_crystal(
        cls, crystal: Crystal, dtype=torch.float64, device=None
    ) -> StructureParameters:
        return cls(
            torch.tensor(np.array([s.position for s in crystal.sites]), dtype=dtype, device=device),
            torch.tensor(np.array([s.u_cif for s in crystal.sites]), dtype=dtype, device=device),
            torch.tensor([s.occupancy for s in crystal.sites], dtype=dtype, device=device),
        )

    @staticmethod
    def isotropic_u(crystal: Crystal, u_iso: torch.Tensor) -> torch.Tensor:
        """U_cif tensors (..., S, 3, 3) from isotropic U (..., S) in Å²."""
        metric = torch.as_tensor(crystal.reciprocal_metric, dtype=u_iso.dtype, device=u_iso.device)
        lengths = torch.sqrt(torch.diagonal(metric))
        shape = metric / (lengths[:, None] * lengths[None, :])
        return u_iso[..., None, None] * shape


def structure_factors(
    crystal: Crystal,
    hkl,
    structure: StructureParameters | None = None,
    parametrization: str = "lobato",
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """F(h) in Å for Miller indices ``hkl`` (M, 3); complex tensor (..., M)."""
    if structure is None:
        structure = StructureParameters.from_crystal(crystal, dtype=dtype, device=device)
    real = structure.positions.dtype
    device = structure.positions.device
    h = torch.as_tensor(np.asarray(hkl, dtype=float), dtype=real, device=device)
    if h.ndim != 2 or h.shape[-1] != 3:
        raise EmverseError(f"hkl has shape {tuple(h.shape)}; give an (M, 3) array of Miller indices")
    metric = torch.as_tensor(crystal.reciprocal_metric, dtype=real, device=device)
    g2 = torch.einsum("mi,ij,mj->m", h, metric, h)

    rot = torch.as_tensor(crystal.atom_rotation, dtype=real, device=device)  # (A,3,3)
    trans = torch.as_tensor(crystal.atom_translation, dtype=real, device=device)  # (A,3)
    site = torch.as_tensor(crystal.atom_site, device=device)
    d = torch.as_tensor(
        np.diag(np.linalg.norm(crystal.reciprocal_lattice, axis=1)), dtype=real, device=device
    )

    x_site = structure.positions[..., site, :]  # (...,A,3)
    x_atom = torch.einsum("aij,...aj->...ai", rot, x_site) + trans
    sigma_site = d @ structure.u_cif @ d  # (...,S,3,3)
    sigma_atom = rot @ sigma_site[..., site, :, :] @ rot.transpose(-1, -2)  # (...,A,3,3)
    occ = structure.occupancy[..., site]  # (...,A)

    quad = torch.einsum("mi,...aij,mj->...am", h, sigma_atom, h)
    phase = 2 * math.pi * torch.einsum("mi,...ai->...am", h, x_atom)
    f_by_element = {e: scattering_factor(e, g2, parametrization) for e in crystal.elements}
    f_atom = torch.stack([f_by_element[e] for e in crystal.atom_elements])  # (A,M)
    amplitude = occ[..., None] * f_atom * torch.exp(-2 * math.pi**2 * quad)
    return torch.complex(
        (amplitude * torch.cos(phase)).sum(-2), (amplitude * torch.sin(phase)).sum(-2)
    )


#: |Im F| / max|F| below which structure factors count as real (float64 rounding is ~1e-16)
REAL_TOLERANCE = 1e-10


def is_real_potential(crystal: Crystal, f: torch.Tensor) -> bool:
    """True when the structure factors ``f`` (complex, any shape) are real for every value
    of the refinable parameters: the crystal is centrosymmetric and ``f`` (computed at one
    generic parameter set) has no imaginary part, i.e. the origin is on an inversion centre.

    Atoms are expanded from the asymmetric unit with the space-group operations, so
    inversion-related atoms keep related positions and U tensors under refinement and F
    stays real; then the structure matrix is real symmetric and the real ``eigh`` is exact.
    """
    if not torch.is_complex(f):
        return True
    if not crystal.is_centrosymmetric or f.numel() == 0:
        return False
    f = f.detach()
    return float(f.imag.abs().max()) <= REAL_TOLERANCE * float(f.abs().max())


def u_from_f(f: torch.Tensor, crystal: Crystal, voltage_kv: float) -> torch.Tensor:
    """U_g (Å⁻²) = γ F_g / (π Ω) from F_g (Å)."""
    return f * (potential_prefactor(voltage_kv) / crystal.volume)


def f_from_u(u: torch.Tensor, crystal: Crystal, voltage_kv: float) -> torch.Tensor:
    """F_g (Å) = π Ω U_g / γ from U_g (Å⁻²)."""
    return u * (crystal.volume / potential_prefactor(voltage_kv))


def forbidden(crystal: Crystal, hkl) -> np.ndarray:
    """True where a reflection is systematically absent (zero for every element's
    sublattice, whatever the scattering factors)."""
    hkl = np.atleast_2d(np.asarray(hkl, dtype=float))
    positions = crystal.atom_positions
    out = np.ones(len(hkl), dtype=bool)
    for element in crystal.elements:
        mask = np.array([e == element for e in crystal.atom_elements])
        s = np.exp(2j * np.pi * hkl @ positions[mask].T).sum(axis=1)
        out &= np.abs(s) < 1e-6 * mask.sum()
    return out


@dataclass
class Overrides:
    """Named reflections whose structure factors are free values (IAM-SF).

    ``hkl``: the named reflections, e.g. ``[(0, 0, 1), (1, 0, 0)]``. Values are
    passed at call time as F in Å, a real or complex tensor (..., len(hkl)).
    """

    hkl: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        self.hkl = tuple(tuple(int(v) for v in h) for h in self.hkl)
        for h in self.hkl:
            if len(h) != 3 or h == (0, 0, 0):
                raise EmverseError(
                    f"structure-factor override {h} is not a reflection; give three Miller "
                    "indices, not all zero"
                )

    def plan(self, crystal: Crystal, table_hkl: np.ndarray) -> OverridePlan:
        """Where each override goes in a table of reflections (M, 3)."""
        table = {tuple(int(v) for v in h): i for i, h in enumerate(np.asarray(table_hkl))}
        absent = forbidden(crystal, np.asarray(self.hkl))
        index, source, phase, conj = [], [], [], []
        for k, h in enumerate(self.hkl):
            if absent[k]:
                raise EmverseError(
                    f"structure-factor override {h} names a systematically forbidden reflection "
                    f"of {crystal.name} (F = 0 by symmetry); override an allowed reflection instead"
                )
            hits = 0
            for h_eq, p in crystal.equivalent_reflections(h):
                if h_eq not in table:
                    continue
                hits += 1
                if p is None:  # Friedel mate of an equivalent
                    p_mate = next(
                        (q for hh, q in crystal.equivalent_reflections(h)
                         if hh == tuple(-v for v in h_eq) and q is not None),
                        1.0,
                    )
                    index.append(table[h_eq])
                    source.append(k)
                    phase.append(np.conj(p_mate))
                    conj.append(True)
                else:
                    index.append(table[h_eq])
                    source.append(k)
                    phase.append(p)
                    conj.append(False)
            if hits == 0:
                raise EmverseError(
                    f"structure-factor override {h} couples no pair of beams in the beam set "
                    "(neither it nor an equivalent is a beam difference); raise g_max or "
                    "sg_max, or drop the override"
                )
        return OverridePlan(
            np.asarray(index, dtype=np.int64),
            np.asarray(source, dtype=np.int64),
            np.asarray(phase, dtype=complex),
            np.asarray(conj, dtype=bool),
        )


@dataclass
class OverridePlan:
    index: np.ndarray  # position in the reflection table
    source: np.ndarray  # which override value
    phase: np.ndarray  # complex factor
    conj: np.ndarray  # take the complex conjugate of the value first

    def apply(self, table: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Replace entries of ``table`` (..., M) complex by override ``values`` (..., K)."""
        if not torch.is_complex(values):
            values = torch.complex(values, torch.zeros_like(values))
        v = values[..., torch.as_tensor(self.source, device=values.device)]
        conj = torch.as_tensor(self.conj, device=values.device)
        v = torch.where(conj, v.conj(), v)
        phase = torch.as_tensor(self.phase, dtype=v.dtype, device=v.device)
        v = v * phase
        batch = torch.broadcast_shapes(table.shape[:-1], v.shape[:-1])
        out = table.expand(*batch, table.shape[-1]).clone()
        out[..., torch.as_tensor(self.index, device=out.device)] = v.expand(*batch, v.shape[-1])
        return out


def override_values_from_iam(
    crystal: Crystal, hkl: Sequence[Sequence[int]], parametrization: str = "lobato"
) -> torch.Tensor:
    """Independent-atom F (Å) of the named reflections (a starting point for IAM-SF)."""
    return structure_factors(crystal, np.asarray(hkl), parametrization=parametrization)
