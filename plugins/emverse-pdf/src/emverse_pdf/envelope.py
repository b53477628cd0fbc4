"""Particle envelopes γ(r): the shape's characteristic function multiplying a bulk G(r).

A nanocrystal's PDF is, to a good approximation, the bulk crystal's G(r)
(baseline included) times the particle's characteristic function γ(r): the
fraction of the particle that overlaps with its copy shifted by r, averaged
over directions (Kodama, Iikubo, Taguchi & Shamoto, Acta Cryst. A62, 444
(2006); PDFfit2's ``spdiameter``). γ(0) = 1 and γ = 0 beyond the largest
dimension.

* sphere of diameter D (Å):  γ(r) = 1 − 3/2 (r/D) + 1/2 (r/D)³ for r < D, else 0.
* spheroid with equatorial diameter D_e and polar diameter D_p (Å): stretching
  the polar axis by D_e/D_p turns it into a sphere of diameter D_e and a shift
  r at polar angle θ into a shift r·√(sin²θ + (D_e/D_p)² cos²θ), so
  γ(r) = ∫₀¹ γ_sphere(r √(1 − μ² + (D_e/D_p)² μ²); D_e) dμ (μ = cos θ), evaluated
  by Gauss-Legendre quadrature. γ_sphere is C¹ (value and slope vanish at r = D),
  so 64 nodes give ~1e-6.

The envelope assumes the particle's own small-angle scattering is absent from
the data (it lies below the data's Qmin). It is only absent when Qmin is well
above 2π/D: :func:`small_angle_warning` says so when it is not.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["sphere_envelope", "spheroid_envelope", "small_angle_warning"]

_QUADRATURE_NODES = 64


def sphere_envelope(r: torch.Tensor, diameter: torch.Tensor | float) -> torch.Tensor:
    """γ(r) of a sphere of ``diameter`` Å at distances ``r`` Å (differentiable in both)."""
    diameter = torch.as_tensor(diameter, dtype=r.dtype, device=r.device)
    x = r / diameter
    inside = x < 1
    x_in = torch.where(inside, x, torch.zeros_like(x))
    return torch.where(inside, 1 - 1.5 * x_in + 0.5 * x_in**3, torch.zeros_like(x))


def spheroid_envelope(r: torch.Tensor, equatorial_diameter, polar_diameter) -> torch.Tensor:
    """γ(r) of a spheroid (rotation axis = polar) with the two diameters in Å."""
    equatorial = torch.as_tensor(equatorial_diameter, dtype=r.dtype, device=r.device)
    polar = torch.as_tensor(polar_diameter, dtype=r.dtype, device=r.device)
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    mu = torch.as_tensor(0.5 * (nodes + 1), dtype=r.dtype, device=r.device)  # on [0, 1]
    w = torch.as_tensor(0.5 * weights, dtype=r.dtype, device=r.device)
    stretch = torch.sqrt(1 - mu**2 + (equatorial / polar) ** 2 * mu**2)  # (m,)
    values = sphere_envelope(r[..., None] * stretch, equatorial)
    return (values * w).sum(-1)


def small_angle_warning(qmin: float | None, diameter: float, source: str) -> str | None:
    """A warning text when the data's Qmin (Å⁻¹) is below ~2π/D of a particle of D Å, else None."""
    if qmin is None:
        return (f"{source}: the header gives no Qmin; the {diameter:.1f} Å particle's small-angle "
                f"scattering (Q below ~2π/D = {2 * math.pi / diameter:.3f} Å⁻¹) is assumed absent "
                "from the data; give qmin in the recipe if it is known")
    limit = 2 * math.pi / diameter
    if qmin < limit:
        return (f"{source}: Qmin = {qmin:g} Å⁻¹ is below 2π/D = {limit:.3f} Å⁻¹ for the "
                f"{diameter:.1f} Å particle, so part of its small-angle scattering is in the data and "
                "lifts the low-r baseline above −4πρ₀rγ(r), which the envelope model assumes; "
                f"reprocess the data with Qmin ≥ {limit:.2f} Å⁻¹ or fit only r above the first peaks")
    return None
