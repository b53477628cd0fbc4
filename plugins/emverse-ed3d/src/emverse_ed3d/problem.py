"""Assemble a refinement problem from PETS2 data and a structure."""

from __future__ import annotations

import logging

import attrs
import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.errors import EmverseError

from emverse_ed3d.model import (
    HybridEd3dModel,
    RefinableStructure,
    cell_columns,
    frame_orientations,
    reciprocal_columns,
)
from emverse_ed3d.pets import PetsData, wavelength_to_voltage_kv
from emverse_ed3d.physics import BlochPhysics
from emverse_ed3d.thickness import build_thickness_model

log = logging.getLogger(__name__)


def check_cell_matches(structure: Crystal, data_cell, *, rel_tol: float = 0.02, angle_tol: float = 1.0):
    """Raise if the structure's cell disagrees with the data's cell (lengths within
    ``rel_tol``, angles within ``angle_tol`` degrees), or its symmetry contradicts
    the data's metric (e.g. a hexagonal group on an orthorhombic cell)."""
    s = np.array([*structure.cell_lengths, *structure.cell_angles], float)
    d = np.asarray(data_cell, float)
    name = structure.spacegroup or structure.name
    bad = [n for k, n in enumerate(("a", "b", "c")) if abs(s[k] - d[k]) > rel_tol * d[k]]
    bad += [n for k, n in zip(range(3, 6), ("alpha", "beta", "gamma"), strict=True) if abs(s[k] - d[k]) > angle_tol]
    if bad:
        raise EmverseError(
            f"structure cell {tuple(round(x, 4) for x in s)} ({name}) disagrees with the "
            f"data cell {tuple(round(x, 4) for x in d)} in {', '.join(bad)}; use the structure that belongs "
            "to this data set (or transform it to the data's setting)"
        )
    # every rotation must preserve the data's metric tensor G = AᵀA
    A = cell_columns(data_cell)
    G = A.T @ A
    for op in structure.operations:
        R = op.rotation
        if not np.allclose(R.T @ G @ R, G, rtol=2e-2, atol=2e-2 * G.max()):
            raise EmverseError(
                f"space group {name} does not fit the data cell {tuple(round(x, 4) for x in d)}: "
                "one of its operations does not preserve the metric; check the space group and cell setting"
            )


def restrict_resolution(data: PetsData, g_max: float) -> PetsData:
    """Keep reflections with |g| ≤ g_max (Å⁻¹); frames left empty are dropped (counted)."""
    B = reciprocal_columns(data.cell)
    g = np.linalg.norm(data.hkl @ B.T, axis=1)
    keep = g <= g_max + 1e-9
    out = attrs.evolve(data, hkl=data.hkl[keep], intensity=data.intensity[keep], sigma=data.sigma[keep],
                       frame_index=data.frame_index[keep])
    counts = np.bincount(out.frame_index, minlength=out.n_frames)
    if (counts == 0).any():
        n_empty = int((counts == 0).sum())
        out = out.select_frames(np.flatnonzero(counts > 0))
        out = attrs.evolve(out, skipped={**out.skipped, "frames_empty_after_resolution_cut": n_empty})
    if out.n_reflections == 0:
        raise EmverseError(f"g_max = {g_max} Å⁻¹ leaves no reflections in {data.source}; raise g_max")
    return out


def filter_excitation(data: PetsData, rsg_max: float | None, semi_angle: np.ndarray) -> PetsData:
    """Keep reflections excited near the frame centre: ``|S_g| / ΔS_g < rsg_max`` with
    ``ΔS_g = |g ⊥ axis| · θ_semi`` (Klar et al. 2023; beam along −z)."""
    if rsg_max is None or rsg_max <= 0:
        return data
    orientations, axes = frame_orientations(data, data.cell)
    B = reciprocal_columns(data.cell)
    k0 = 1.0 / data.wavelength_angstrom
    g = np.einsum("nij,jk,nk->ni", orientations[data.frame_index], B, data.hkl)
    s_g = (2 * k0 * g[:, 2] - (g**2).sum(1)) / (2 * k0)
    ax = axes[data.frame_index]
    g_perp = np.linalg.norm(g - (g * ax).sum(1, keepdims=True) * ax, axis=1)
    delta = g_perp * np.radians(semi_angle[data.frame_index])
    keep = np.abs(s_g) < rsg_max * delta
    out = attrs.evolve(data, hkl=data.hkl[keep], intensity=data.intensity[keep], sigma=data.sigma[keep],
                       frame_index=data.frame_index[keep])
    out = attrs.evolve(out, skipped={**out.skipped, "rsg_filtered": int((~keep).sum())})
    counts = np.bincount(out.frame_index, minlength=out.n_frames)
    if (counts == 0).any():
        out = out.select_frames(np.flatnonzero(counts > 0))
    return out


def frame_theta(data: PetsData) -> np.ndarray:
    """Goniometer angle of each frame (rad), the ThicknessNN input."""
    return np.radians(data.frames.alpha_deg)


def semi_angle_deg(data: PetsData, override: float | None) -> np.ndarray:
    if override is not None and override > 0:
        return np.full(data.n_frames, float(override))
    return np.asarray(data.frames.precession_angle_deg, float)


def build_model(
    data: PetsData,
    structure: Crystal,
    *,
    thickness_model: str = "nn",
    t_min: float = 50.0,
    t_max: float = 2000.0,
    t_init: float = 500.0,
    quadratic_prior: bool = False,
    anisotropic: bool | None = None,
    hydrogens: str = "free",
    riding_adp: bool = True,
    absorption: float = 0.0,
    g_max: float = 1.4,
    sg_max: float = 0.01,
    n_tilts: int = 5,
    rocking_semi_angle_deg: float | None = None,
    rsg_max: float | None = None,
    method: str = "eig",
    bucket_ratio: float = 0.0,
    generator: torch.Generator | None = None,
    check_cell: bool = True,
) -> HybridEd3dModel:
    if check_cell:
        check_cell_matches(structure, data.cell)
    data = restrict_resolution(data, g_max)
    data = filter_excitation(data, rsg_max, semi_angle_deg(data, rocking_semi_angle_deg))
    st = RefinableStructure(structure, anisotropic=anisotropic, hydrogens=hydrogens, riding_adp=riding_adp)
    orientations, axes = frame_orientations(data, data.cell)
    physics = BlochPhysics(
        st, orientations, axes, wavelength_to_voltage_kv(data.wavelength_angstrom),
        semi_angle_deg(data, rocking_semi_angle_deg), data.hkl, data.frame_index, g_max=g_max, sg_max=sg_max,
        n_tilts=n_tilts, precession=data.geometry.startswith("precession"), method=method,
        bucket_ratio=bucket_ratio, absorption=absorption,
    )
    theta = frame_theta(data)
    span = float(np.ptp(theta)) / 2 if theta.size > 1 else 1.0
    thickness = build_thickness_model(
        thickness_model, t_min=t_min, t_max=t_max, t_init=t_init, quadratic_prior=quadratic_prior,
        theta_scale_rad=max(span, 1e-3), generator=generator,
    ).to(torch.float64)
    model = HybridEd3dModel(physics, thickness, theta, data.frame_index, data.intensity, data.sigma,
                            kinematical=False)
    model.data = data  # the data actually refined (after the resolution cut)
    return model
