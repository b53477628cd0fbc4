"""One-call Bloch-wave solves for a crystal at a zone axis (tests, benchmarks, notebooks).

:func:`zone_axis_intensities` returns the beams and |ψ_g(t)|² for a list of
thicknesses, optionally for tilted incident directions, with every convention
switch exposed (``mip_corrected``: K = √(1/λ² + U_0) or abTEM's K = 1/λ;
``use_metric``: M_g = 1/√(1 + g_z/K) or 1; ``real_symmetric``: the real ``eigh`` for a
centrosymmetric crystal, chosen automatically; ``bethe_strong_beams``: fold the weak
beams in by Bethe potentials, off by default).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.electron import potential_prefactor, wavelength_angstrom
from emverse.errors import EmverseError

from emverse_bloch.bethe import propagate_bethe
from emverse_bloch.bloch import propagate
from emverse_bloch.crystal import Crystal
from emverse_bloch.direction_symmetry import share_directions, zone_axis_operations
from emverse_bloch.geometry import (
    excitation_errors,
    incident_direction,
    metric_diagonal,
    select_beams,
    zone_axis_orientation,
)
from emverse_bloch.structure_factors import (
    StructureParameters,
    is_real_potential,
    structure_factors,
)
from emverse_bloch.structure_matrix import CouplingTable, structure_matrix


def wavenumber_for(crystal: Crystal, voltage_kv: float, mip_corrected: bool = True,
                   parametrization: str = "lobato") -> float:
    """K (Å⁻¹): 1/λ, or √(1/λ² + U_0) with the mean inner potential U_0 = γF(000)/(πΩ)."""
    lam = wavelength_angstrom(voltage_kv)
    if not mip_corrected:
        return 1.0 / lam
    f0 = structure_factors(crystal, np.zeros((1, 3)), parametrization=parametrization)
    return math.sqrt(1.0 / lam**2 + float(f0.real[0]) * potential_prefactor(voltage_kv) / crystal.volume)


def zone_axis_intensities(
    crystal: Crystal,
    zone_axis,
    thickness,
    *,
    voltage_kv: float = 200.0,
    g_max: float = 1.5,
    sg_max: float = 0.05,
    beams: np.ndarray | None = None,
    orientation: np.ndarray | None = None,
    structure: StructureParameters | None = None,
    tilt_rad=(0.0, 0.0),
    method: str = "eig",
    parametrization: str = "lobato",
    mip_corrected: bool = True,
    use_metric: bool = True,
    dtype=torch.float64,
    return_amplitudes: bool = False,
    real_symmetric: bool | None = None,
    bethe_strong_beams: int = 0,
    share_symmetric_directions: bool = True,
):
    """(beams (N, 3), I (..., T, N)) for thicknesses (T,) Å at zone axis [uvw].

    ``tilt_rad``: incident-direction angles (rad), tensors allowed (…); the
    leading axes of the result follow them. ``real_symmetric``: None picks the real
    symmetric ``eigh`` when every U_g is real (:func:`is_real_potential`; exact), True
    demands it, False keeps the complex Hermitian one. ``bethe_strong_beams``: 0 solves
    all beams exactly; n > 0 solves the n beams of smallest excitation error exactly and
    folds the rest in by Bethe potentials (:mod:`emverse_bloch.bethe`; approximate).
    ``share_symmetric_directions``: directions related by a symmetry of the zone axis
    share one solve (:mod:`emverse_bloch.direction_symmetry`; exact, used only for
    intensities without gradients and without Bethe potentials).
    """
    if orientation is None:
        orientation = zone_axis_orientation(crystal, zone_axis)
    k = wavenumber_for(crystal, voltage_kv, mip_corrected, parametrization)
    if beams is None:
        beams = select_beams(crystal, orientation, k, g_max, sg_max)
    table = CouplingTable(beams)
    if structure is None:
        structure = StructureParameters.from_crystal(crystal, dtype=dtype)
    f = structure_factors(crystal, table.hkl, structure, parametrization)
    u = f * (potential_prefactor(voltage_kv) / crystal.volume)
    real = is_real_potential(crystal, f)
    if real_symmetric and not real:
        raise EmverseError(
            f"real_symmetric=True, but {crystal.name}'s structure factors are complex (not "
            "centrosymmetric, or the origin is off the inversion centre); use real_symmetric=None"
        )
    if (real if real_symmetric is None else real_symmetric) and method == "eig":
        u = u.real
    g_lab = torch.as_tensor(crystal.g_vectors(beams) @ np.asarray(orientation).T, dtype=dtype)
    tx, ty = torch.broadcast_tensors(torch.as_tensor(tilt_rad[0], dtype=dtype),
                                     torch.as_tensor(tilt_rad[1], dtype=dtype))
    metric = None
    if use_metric:
        metric = metric_diagonal(g_lab, torch.tensor([0.0, 0.0, 1.0], dtype=dtype), k)
    couplings = table.gather(u)
    t = torch.as_tensor(thickness, dtype=dtype).reshape(-1)

    def solve(tx, ty):
        s = excitation_errors(g_lab, incident_direction(tx, ty), k)
        matrix = structure_matrix(couplings, s, k, metric)
        t_b = t.expand(*matrix.shape[:-2], -1)
        if bethe_strong_beams:
            return propagate_bethe(matrix, t_b, k, bethe_strong_beams, metric)
        return propagate(matrix, t_b, k, method, metric)

    inputs = (tx, ty, t, structure.positions, structure.u_cif, structure.occupancy)
    needs_grad = torch.is_grad_enabled() and any(v.requires_grad for v in inputs)
    if share_symmetric_directions and tx.numel() > 1 and not (return_amplitudes or needs_grad
                                                              or bethe_strong_beams):
        operations = zone_axis_operations(crystal, zone_axis, orientation, beams, table.hkl, u)
        representatives, source, gather = share_directions(
            torch.tan(tx).reshape(-1).numpy(), torch.tan(ty).reshape(-1).numpy(), operations)
        if len(representatives) < tx.numel():
            rep = torch.as_tensor(representatives)
            psi = solve(tx.reshape(-1)[rep], ty.reshape(-1)[rep])
            intensity = (psi.real**2 + psi.imag**2)[torch.as_tensor(source)]  # (P, T, N)
            index = torch.as_tensor(gather)[:, None, :].expand_as(intensity)
            return beams, intensity.gather(-1, index).reshape(*tx.shape, *intensity.shape[-2:])
    psi = solve(tx, ty)
    if return_amplitudes:
        return beams, psi
    return beams, psi.real**2 + psi.imag**2
