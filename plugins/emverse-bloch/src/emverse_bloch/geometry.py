"""Diffraction geometry: orientations, incident directions, excitation errors, beam sets.

Frames and signs (the same as abTEM's Bloch-wave code, so results compare 1:1):

* crystal Cartesian frame: ``Crystal.lattice`` rows (ASE convention); g = h @ reciprocal
  (Å⁻¹, no 2π);
* lab frame: the electron beam travels along **+z**; an *orientation matrix* R
  (3, 3) maps crystal Cartesian vectors to the lab frame: g_lab = R g;
* incident wave vector K k̂ (K in Å⁻¹; k̂ = (0, 0, 1) for the untilted beam), so the
  excitation error of beam g is the exact
  S_g = (K² − |K k̂ + g|²) / (2K) = −k̂·g − |g|²/(2K)   (Å⁻¹),
  which for k̂ = ẑ and K = 1/λ is abTEM's ``(−2 g_z − λ|g|²)/2``;
* the crystal surface normal n̂ (unit, lab frame, pointing along the beam) defines
  the thickness direction and the metric M_g = 1/√(1 + g·n̂/K).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError

from emverse_bloch.crystal import Crystal


def check_zone_axis(zone_axis) -> tuple[int, int, int]:
    try:
        uvw = tuple(int(v) for v in zone_axis)
    except (TypeError, ValueError):
        uvw = ()
    if len(uvw) != 3 or uvw == (0, 0, 0) or any(
        float(a) != float(b) for a, b in zip(uvw, zone_axis, strict=False)
    ):
        raise EmverseError(
            f"zone_axis {list(zone_axis) if hasattr(zone_axis, '__iter__') else zone_axis!r} "
            "is not a direction; give three integers, not all zero, e.g. [0, 1, 0]"
        )
    return uvw


def zone_axis_orientation(crystal: Crystal, zone_axis, x_reference=None) -> np.ndarray:
    """Orientation matrix (3, 3) putting real-space direction [uvw] along the beam (+z).

    The lab x axis is the first of a*, b*, c* (or ``x_reference`` hkl) that is not
    parallel to the zone axis, made perpendicular to it.
    """
    uvw = check_zone_axis(zone_axis)
    z = crystal.direction_vector(uvw)
    z = z / np.linalg.norm(z)
    candidates = [np.asarray(x_reference, dtype=float)] if x_reference is not None else list(np.eye(3))
    for h in candidates:
        g = crystal.g_vectors(h)
        x = g - (g @ z) * z
        if np.linalg.norm(x) > 1e-6 * np.linalg.norm(g):
            break
    else:
        raise EmverseError(
            f"x_reference {x_reference!r} is parallel to zone_axis {list(uvw)}; pick another reflection"
        )
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def rotation_x(angle_rad: torch.Tensor) -> torch.Tensor:
    """Rotation matrices about lab x, shape (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack(
        [torch.stack([one, zero, zero], -1), torch.stack([zero, c, -s], -1),
         torch.stack([zero, s, c], -1)], -2)


def rotation_y(angle_rad: torch.Tensor) -> torch.Tensor:
    """Rotation matrices about lab y, shape (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack(
        [torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
         torch.stack([-s, zero, c], -1)], -2)


def rotation_z(angle_rad: torch.Tensor) -> torch.Tensor:
    """Rotation matrices about lab z, shape (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack(
        [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1),
         torch.stack([zero, zero, one], -1)], -2)


def incident_direction(theta_x: torch.Tensor, theta_y: torch.Tensor) -> torch.Tensor:
    """Unit beam direction (..., 3) tilted by angles (rad) towards +x and +y:
    k̂ ∝ (tan θx, tan θy, 1)."""
    v = torch.stack([torch.tan(theta_x), torch.tan(theta_y), torch.ones_like(theta_x)], -1)
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def excitation_errors(g_lab: torch.Tensor, direction: torch.Tensor, wavenumber: float) -> torch.Tensor:
    """S_g = −k̂·g − |g|²/(2K) (Å⁻¹); g_lab (..., N, 3), direction (..., 3), K in Å⁻¹."""
    return -(g_lab * direction[..., None, :]).sum(-1) - (g_lab**2).sum(-1) / (2.0 * wavenumber)


def metric_diagonal(g_lab: torch.Tensor, normal: torch.Tensor, wavenumber: float) -> torch.Tensor:
    """M_g = 1/√(1 + g·n̂/K) (dimensionless), g_lab (..., N, 3), normal (..., 3)."""
    return torch.rsqrt(1.0 + (g_lab * normal[..., None, :]).sum(-1) / wavenumber)


def hkl_sphere(crystal: Crystal, g_max: float) -> np.ndarray:
    """All Miller indices with |g| ≤ g_max (Å⁻¹), lattice-centring absences removed."""
    if not (math.isfinite(g_max) and g_max > 0):
        raise EmverseError(f"g_max {g_max!r} Å⁻¹ must be positive, e.g. 1.5")
    n = np.ceil(g_max * np.linalg.norm(crystal.lattice, axis=1)).astype(int)
    ranges = [np.arange(-k, k + 1) for k in n]
    hkl = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
    g = crystal.g_vectors(hkl)
    hkl = hkl[np.einsum("ij,ij->i", g, g) <= g_max**2 * (1 + 1e-12)]
    hkl = hkl[~crystal.lattice_absent(hkl)]
    return hkl


def select_beams(
    crystal: Crystal,
    orientations: np.ndarray,
    wavenumber: float,
    g_max: float,
    sg_max: float,
    directions: np.ndarray | None = None,
    include=None,
) -> np.ndarray:
    """Beams (N, 3) with |g| ≤ g_max and |S_g| ≤ sg_max for at least one of the
    orientations (…, 3, 3) / incident directions (…, 3); the direct beam first.

    ``include``: reflections that must be in the set (e.g. requested hkl).
    Raises when only the direct beam is left.
    """
    if not (math.isfinite(sg_max) and sg_max > 0):
        raise EmverseError(f"sg_max {sg_max!r} Å⁻¹ must be positive, e.g. 0.05")
    hkl = hkl_sphere(crystal, g_max)
    g = crystal.g_vectors(hkl)
    rots = np.asarray(orientations, dtype=float).reshape(-1, 3, 3)
    if directions is None:
        dirs = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (len(rots), 3))
    else:
        dirs = np.asarray(directions, dtype=float).reshape(-1, 3)
        if len(rots) == 1:
            rots = np.broadcast_to(rots, (len(dirs), 3, 3))
    keep = np.zeros(len(hkl), dtype=bool)
    g2 = np.einsum("ij,ij->i", g, g)
    for r, k in zip(rots, dirs, strict=True):
        g_lab = g @ r.T
        s = -(g_lab @ k) - g2 / (2 * wavenumber)
        keep |= np.abs(s) <= sg_max
    is_direct = np.all(hkl == 0, axis=1)
    keep |= is_direct
    if include is not None and len(include):
        inc = {tuple(int(v) for v in h) for h in np.asarray(include).reshape(-1, 3)}
        keep |= np.array([tuple(h) in inc for h in hkl])
        missing = inc - {tuple(h) for h in hkl}
        if missing:
            extra = np.array(sorted(missing), dtype=int)
            hkl = np.concatenate([hkl, extra])
            keep = np.concatenate([keep, np.ones(len(extra), dtype=bool)])
            is_direct = np.all(hkl == 0, axis=1)
    beams = np.concatenate([hkl[is_direct & keep][:1], hkl[keep & ~is_direct]])
    if len(beams) < 2:
        raise EmverseError(
            f"g_max = {g_max} Å⁻¹ and sg_max = {sg_max} Å⁻¹ leave only the direct beam; "
            "raise g_max above the shortest reciprocal vector "
            f"({np.min(np.linalg.norm(crystal.reciprocal_lattice, axis=1)):.3f} Å⁻¹) or raise sg_max"
        )
    return beams.astype(np.int64)
