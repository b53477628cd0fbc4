"""Assemble a refinement problem from PETS2 data and a structure."""

from __future__ import annotations

import logging
from contextlib import contextmanager

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
from emverse_ed3d.rocking import (
    STEP_THICKNESS_TARGET,
    perpendicular_g,
    perpendicular_g_max,
    sub_orientations_for,
)
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
    out = data.keep_reflections(g <= g_max + 1e-9)
    if out.n_reflections == 0:
        raise EmverseError(f"g_max = {g_max} Å⁻¹ leaves no reflections in {data.source}; raise g_max")
    return out


def filter_excitation(data: PetsData, rsg_max: float | None, semi_angle: np.ndarray,
                      corrections: np.ndarray | None = None) -> PetsData:
    """Keep reflections excited near the frame centre: ``|S_g| / ΔS_g < rsg_max`` with
    ``ΔS_g = |g ⊥ axis| · θ_semi`` (Klar et al. 2023; beam along −z); for precession data the
    axis is the beam (the cone of angle θ sweeps S_g by |g ⊥ beam| · θ). ``corrections``
    (F, 3, 3): refined corrective rotations left-multiplied onto each frame's orientation."""
    if rsg_max is None or rsg_max <= 0:
        return data
    orientations, axes = frame_orientations(data, data.cell)
    if corrections is not None:
        orientations = np.einsum("fij,fjk->fik", corrections, orientations)
    B = reciprocal_columns(data.cell)
    k0 = 1.0 / data.wavelength_angstrom
    g = np.einsum("nij,jk,nk->ni", orientations[data.frame_index], B, data.hkl)
    s_g = (2 * k0 * g[:, 2] - (g**2).sum(1)) / (2 * k0)
    g_perp = perpendicular_g(g, axes[data.frame_index], data.geometry.startswith("precession"))
    delta = g_perp * np.radians(semi_angle[data.frame_index])
    keep = np.abs(s_g) < rsg_max * delta
    out = data.keep_reflections(keep)
    return attrs.evolve(out, skipped={**out.skipped, "rsg_filtered": int((~keep).sum())})


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
    rocking_target: float = STEP_THICKNESS_TARGET,
    rocking_thickness: float = 0.0,
    rocking_semi_angle_deg: float | None = None,
    rsg_max: float | None = None,
    method: str = "eig",
    bucket_ratio: float = 0.0,
    bethe_sg: float = 0.0,
    solve_precision: str = "float64",
    generator: torch.Generator | None = None,
    check_cell: bool = True,
    corrections: np.ndarray | None = None,
    structure_module: RefinableStructure | None = None,
    thickness_module=None,
) -> HybridEd3dModel:
    """The hybrid model of ``data`` (resolution cut, Rsg selection) and ``structure``.

    ``corrections`` (F, 3, 3) per frame of ``data``: orientation corrections (from an earlier
    refinement) used for the Rsg selection and kept in the model; ``structure_module`` and
    ``thickness_module`` reuse refined modules (reflection re-selection).
    """
    if check_cell:
        check_cell_matches(structure, data.cell)
    if corrections is not None:
        ids = {int(f): c for f, c in zip(data.frames.frame_id, corrections, strict=True)}
    data = restrict_resolution(data, g_max)
    if corrections is not None:
        corrections = np.array([ids[int(f)] for f in data.frames.frame_id])
    selected = filter_excitation(data, rsg_max, semi_angle_deg(data, rocking_semi_angle_deg), corrections)
    if corrections is not None:
        keep = np.isin(data.frames.frame_id, selected.frames.frame_id)
        corrections = corrections[keep]
    data = selected
    st = structure_module or RefinableStructure(structure, anisotropic=anisotropic, hydrogens=hydrogens,
                                                riding_adp=riding_adp)
    orientations, axes = frame_orientations(data, data.cell)
    semi = semi_angle_deg(data, rocking_semi_angle_deg)
    precession = data.geometry.startswith("precession")
    g_perp_max = perpendicular_g_max(data.hkl, data.frame_index, orientations, axes, reciprocal_columns(data.cell),
                                     precession)
    if n_tilts <= 0:  # automatic: ΔS·t ≤ rocking_target at the expected thickness
        n_tilts = sub_orientations_for(float(np.max(semi)), g_perp_max, rocking_thickness or t_init, rocking_target,
                                       precession=precession)
        log.info("rocking curve: %d sub-orientations (|g⊥| ≤ %.2f Å⁻¹, ±%.2f°, t %.0f Å, ΔS·t ≤ %.2f)",
                 n_tilts, g_perp_max, float(np.max(semi)), rocking_thickness or t_init, rocking_target)
    physics = BlochPhysics(
        st, orientations, axes, wavelength_to_voltage_kv(data.wavelength_angstrom),
        semi_angle_deg(data, rocking_semi_angle_deg), data.hkl, data.frame_index, g_max=g_max, sg_max=sg_max,
        n_tilts=n_tilts, precession=precession, method=method,
        bucket_ratio=bucket_ratio, absorption=absorption, bethe_sg=bethe_sg,
        solve_precision=solve_precision,
    )
    theta = frame_theta(data)
    span = float(np.ptp(theta)) / 2 if theta.size > 1 else 1.0
    thickness = thickness_module or build_thickness_model(
        thickness_model, t_min=t_min, t_max=t_max, t_init=t_init, quadratic_prior=quadratic_prior,
        theta_scale_rad=max(span, 1e-3), generator=generator,
    ).to(torch.float64)
    model = HybridEd3dModel(physics, thickness, theta, data.frame_index, data.intensity, data.sigma,
                            kinematical=False)
    if corrections is not None:
        with torch.no_grad():
            model.orientation_delta.copy_(torch.as_tensor(corrections, dtype=model.orientation_delta.dtype))
    model.data = data  # the data actually refined (after the resolution cut)
    model.rocking = {"n_sub_orientations": int(n_tilts), "semi_angle_deg": float(np.max(semi)),
                     "g_perp_max": g_perp_max, "precession": precession}
    return model


def rocking_convergence(model, *, limit: float = 0.002) -> dict[str, float]:
    """Check the rocking-curve sampling of a (refined) model.

    Returns the step–thickness product ΔS·t at the model's largest thickness and the
    change of wR(all) when the same model is evaluated with 2n − 1 sub-orientations
    (per-frame scales re-fitted). Logs a warning when ΔS·t > 1 (the sum aliases) or the
    wR changes by more than ``limit``: then raise n_tilts (or lower rocking_target).
    """
    from emverse_ed3d.rocking import STEP_THICKNESS_LIMIT, step_thickness_product

    info = model.rocking
    n = info["n_sub_orientations"]
    with torch.no_grad():
        t_max = float(model.thickness().max())
        rho = step_thickness_product(n, info["semi_angle_deg"], info["g_perp_max"], t_max, info["precession"])
        wr = float(model.loss())
        with other_physics(model, model.physics.replace(n_tilts=2 * n - 1)):
            wr_fine = float(model.loss())
    out = {"rocking_n_sub_orientations": float(n), "rocking_step_thickness": rho,
           "rocking_wr_fine": wr_fine, "rocking_wr_change": wr_fine - wr}
    if rho > STEP_THICKNESS_LIMIT or abs(wr_fine - wr) > limit:
        log.warning(
            "rocking curve under-sampled: %d sub-orientations give ΔS·t = %.2f at t = %.0f Å and wR(all) %.4f "
            "-> %.4f with %d; raise forward_model.n_tilts (or set 0 for the automatic choice) or lower "
            "forward_model.rocking_target", n, rho, t_max, wr, wr_fine, 2 * n - 1)
    return out


@contextmanager
def other_physics(model, physics: BlochPhysics):
    """Score ``model`` (no gradients) with ``physics`` inside the block; its own physics after."""
    own = model.physics
    model.physics = physics
    try:
        with torch.no_grad():
            yield model
    finally:
        model.physics = own


def exact_physics_check(model) -> dict[str, float]:
    """wR(all) and R(obs) of the (refined) model with every beam solved exactly in float64, when
    the refinement ran with Bethe potentials or float32 solves (``{}`` otherwise): the
    approximation's effect on the final numbers, as the run's metrics state them."""
    from emverse_ed3d.metrics import WRAll

    if not model.physics.approximate:
        return {}
    with other_physics(model, model.physics.replace(bethe_sg=0.0, solve_precision="float64")):
        i_calc = model.calculated()
    exact = WRAll()(i_calc, torch.stack([model.i_obs, model.sigma], dim=1))
    return {"exact_wr_all": exact["wr_all"], "exact_r_obs": exact["r_obs"]}


def absolute_structure(model, generator: torch.Generator, n_bootstrap: int = 200) -> dict[str, float]:
    """Compare the refined structure with its inverse (the other hand) on the same data,
    thickness profile and orientations (per-frame scales re-fitted for each).

    Per reflection, d_i = w_i²[(F_o − F_c,inv)² − (F_o − F_c)²]; the z-score is
    Σd / √(N·var(d)) (positive: the refined hand fits better), and its uncertainty the
    standard deviation of the same z over ``n_bootstrap`` resamplings of whole frames
    (reflections of one frame share a scale and orientation, so frames are the units).
    The inverted model is not refined again, which favours the refined hand: run the
    recipe with ``options.enantiomer`` for the refined other hand.
    """
    from emverse_ed3d.metrics import amplitude_weights

    refined = model.structure.refined_crystal()
    inverted = RefinableStructure(refined.inverted(), anisotropic=model.structure.anisotropic,
                                  dtype=model.structure.x0.dtype)
    with torch.no_grad():
        i_right = model.calculated()
        with other_physics(model, model.physics.replace(structure=inverted)):
            i_wrong = model.calculated()
            wr_wrong = float(model.loss(i_wrong))
        wr_right = float(model.loss(i_right))
        f_obs, w = amplitude_weights(model.i_obs, model.sigma, model.instability)
        d = w**2 * ((f_obs - i_wrong.clamp_min(0).sqrt()) ** 2 - (f_obs - i_right.clamp_min(0).sqrt()) ** 2)

    def z_of(values):
        return float(values.sum() / torch.sqrt(len(values) * values.var()).clamp_min(1e-300))

    frames = model.frame_index
    n_frames = int(frames.max()) + 1
    draws = []
    for _ in range(n_bootstrap):
        pick = torch.randint(n_frames, (n_frames,), generator=generator)
        counts = torch.bincount(pick, minlength=n_frames)[frames]
        draws.append(z_of(torch.repeat_interleave(d, counts)))
    return {"absolute_structure_z": z_of(d), "absolute_structure_z_sd": float(np.std(draws)),
            "wr_all_inverted": wr_wrong, "wr_all_refined_hand": wr_right}
