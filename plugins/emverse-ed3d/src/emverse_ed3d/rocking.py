"""How finely to sample the rocking curve of a virtual frame.

A virtual frame integrates each reflection over the frame's angular range
±θ (rad) about the goniometer axis; the excitation error of reflection g then
sweeps S_g over a range 2θ|g⊥| (|g⊥| = the component of g perpendicular to the
axis, Å⁻¹). The integral is a mean over n sub-orientations, so the step in
excitation error is ΔS = 2θ|g⊥| / (n − 1).

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


def step_thickness_product(n_sub: int, semi_angle_deg: float, g_perp_max: float, thickness_angstrom: float) -> float:
    """ρ = ΔS·t for ``n_sub`` sub-orientations over ±semi_angle_deg, |g⊥| ≤ g_perp_max (Å⁻¹), t in Å."""
    if n_sub <= 1:
        return math.inf
    step = 2 * math.radians(semi_angle_deg) * g_perp_max / (n_sub - 1)
    return step * thickness_angstrom


def sub_orientations_for(semi_angle_deg: float, g_perp_max: float, thickness_angstrom: float,
                         target: float = STEP_THICKNESS_TARGET, minimum: int = 3) -> int:
    """The smallest odd n (≥ ``minimum``) with ΔS·t ≤ ``target`` (the frame centre is a sample)."""
    span = 2 * math.radians(semi_angle_deg) * g_perp_max * thickness_angstrom
    n = max(int(math.ceil(span / target)) + 1, minimum)
    return n + 1 - n % 2


def perpendicular_g_max(hkl: np.ndarray, frame_index: np.ndarray, orientations: np.ndarray, axes: np.ndarray,
                        reciprocal_columns: np.ndarray) -> float:
    """max |g⊥axis| (Å⁻¹) over the reflections of the data (each in its own frame's geometry)."""
    g = np.einsum("nij,jk,nk->ni", orientations[frame_index], reciprocal_columns, hkl)
    ax = axes[frame_index]
    g_perp = g - (g * ax).sum(1, keepdims=True) * ax
    return float(np.linalg.norm(g_perp, axis=1).max()) if len(g) else 0.0
