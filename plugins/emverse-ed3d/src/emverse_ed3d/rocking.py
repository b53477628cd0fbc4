"""How finely to sample the rocking curve of a virtual frame.

A virtual frame integrates each reflection over the frame's angular range
±θ (rad) about the goniometer axis; the excitation error of reflection g then
sweeps S_g over a range 2θ|g⊥| (|g⊥| = the component of g perpendicular to the
axis, Å⁻¹). The integral is a mean over n sub-orientations, so the step in
excitation error is ΔS = 2θ|g⊥| / (n − 1).

Precession data integrate over n points on a cone of half-angle θ about the beam: S_g
follows S_0 + θ|g⊥|cos φ (g⊥ ⊥ the beam), so the largest step between neighbouring points is
ΔS = 2πθ|g⊥| / n — π times the rocking step for the same n.

The rocking curve of a crystal of thickness t (Å) is sin²(π t √(S² + ξ⁻²))/(…) —
kinematically sinc²(π S t): its Fourier transform in S is supported on |x| ≤ t
(the two-beam dynamical curve's instantaneous frequency t·S/√(S² + ξ⁻²) is ≤ t as
well). A uniform sum then equals the integral once the sampling rate 1/ΔS exceeds
the band limit t (Poisson summation: the aliases sit at multiples of 1/ΔS), i.e.
the *step–thickness product* ρ = ΔS·t must stay below 1; the default asks for
ρ ≤ 0.5, well below. The refinement checks ρ again with the refined thickness
and, at the end, compares the intensities at n and 2n − 1 sub-orientations.
"""

from __future__ import annotations

import math

import numpy as np

#: default target for ΔS·t (dimensionless): the step in excitation error at most half of 1/t
STEP_THICKNESS_TARGET = 0.5
#: above this ΔS·t the sum aliases (warn)
STEP_THICKNESS_LIMIT = 1.0


def step_thickness_product(n_sub: int, semi_angle_deg: float, g_perp_max: float, thickness_angstrom: float,
                           precession: bool = False) -> float:
    """ρ = ΔS·t for ``n_sub`` sub-orientations over ±semi_angle_deg (or on a precession cone of that
    half-angle), |g⊥| ≤ g_perp_max (Å⁻¹), t in Å."""
    if n_sub <= 1:
        return math.inf
    if precession:
        return 2 * math.pi * math.radians(semi_angle_deg) * g_perp_max / n_sub * thickness_angstrom
    step = 2 * math.radians(semi_angle_deg) * g_perp_max / (n_sub - 1)
    return step * thickness_angstrom


def sub_orientations_for(semi_angle_deg: float, g_perp_max: float, thickness_angstrom: float,
                         target: float = STEP_THICKNESS_TARGET, minimum: int = 3, precession: bool = False) -> int:
    """The smallest n (≥ ``minimum``) with ΔS·t ≤ ``target``: odd for a rocking range (the frame
    centre is a sample), any for a precession cone."""
    if precession:
        span = 2 * math.pi * math.radians(semi_angle_deg) * g_perp_max * thickness_angstrom
        return max(int(math.ceil(span / target)), minimum)
    span = 2 * math.radians(semi_angle_deg) * g_perp_max * thickness_angstrom
    n = max(int(math.ceil(span / target)) + 1, minimum)
    return n + 1 - n % 2


def perpendicular_g(g_lab: np.ndarray, axes: np.ndarray, precession: bool = False) -> np.ndarray:
    """|g⊥| (N,) Å⁻¹: the part of each g (N, 3, lab frame) perpendicular to its frame's rotation
    axis (N, 3) — or to the beam (lab z) for precession data — that sets how far S_g sweeps."""
    ax = np.broadcast_to(np.array([0.0, 0.0, 1.0]), g_lab.shape) if precession else axes
    return np.linalg.norm(g_lab - (g_lab * ax).sum(1, keepdims=True) * ax, axis=1)


def perpendicular_g_max(hkl: np.ndarray, frame_index: np.ndarray, orientations: np.ndarray, axes: np.ndarray,
                        reciprocal_columns: np.ndarray, precession: bool = False) -> float:
    """max |g⊥| (Å⁻¹, :func:`perpendicular_g`) over the reflections of the data (each in its own
    frame's geometry)."""
    g = np.einsum("nij,jk,nk->ni", orientations[frame_index], reciprocal_columns, hkl)
    return float(perpendicular_g(g, axes[frame_index], precession).max()) if len(g) else 0.0
