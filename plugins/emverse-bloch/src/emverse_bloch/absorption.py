"""Absorptive (imaginary) potential U'_g (Å⁻²) for the Bloch-wave structure matrix.

The structure matrix then carries U_g + iU'_g off the diagonal and iU'_0 on it
(see :mod:`emverse_bloch.structure_matrix`); the matrix is no longer Hermitian.
Two models, switchable by name:

* ``"proportional"``: U'_g = κ U_g (κ dimensionless, e.g. 0.1 = Felix's
  ``absorption_per = 10``).
* ``"bird_king"``: thermal-diffuse-scattering absorption of each atom in the
  Einstein model (Hall & Hirsch 1965; Bird & King, Acta Cryst. A 46 (1990) 202),

      f'(g) = (λ/2) ∫ d²q f(|q|) f(|g − q|) [e^{−B g²/4} − e^{−B (q² + |g−q|²)/4}]

  with f = γ f_e the relativistic electron scattering factor (Å), q, g in Å⁻¹
  (no 2π), B = 8π²U_iso (Å²) and λ (Å); U'_g = Σ_j f'_j(g) e^{2πi h·x_j}/(πΩ).
  At g = 0 this is the optical theorem, Im f(0) = (λ/2) ∫ |f|² (1 − e^{−2M}) d²q,
  with the TDS cross-section as the loss. The integral is a fixed polar
  quadrature (differentiable in B); the thermal factor is already inside the
  bracket, so no further Debye–Waller factor multiplies f'.

``"none"`` gives zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.electron import lorentz_factor, wavelength_angstrom
from emverse.errors import EmverseError

from emverse_bloch.scattering_factors import scattering_factor

MODELS = ("none", "proportional", "bird_king")


def check_model(model: str) -> str:
    if model not in MODELS:
        raise EmverseError(f"absorption model {model!r} is unknown; use one of {', '.join(MODELS)}")
    return model


def _polar_grid(q_max: float, n_radial: int, n_angular: int, dtype, device):
    """Nodes (r, φ) and weights of ∫ d²q over the disc |q| ≤ q_max, φ ∈ [0, π] doubled
    (the integrand is even in φ when g lies along x)."""
    x, w = np.polynomial.legendre.leggauss(n_radial)
    # r = q_max u², dense near 0 where f(q) peaks; d²q = r dr dφ
    u = 0.5 * (x + 1.0)
    r = q_max * u**2
    wr = 0.5 * w * (2 * q_max * u) * r
    phi = (np.arange(n_angular) + 0.5) * math.pi / n_angular
    wphi = np.full(n_angular, 2 * math.pi / n_angular)  # ×2 for φ ∈ [π, 2π]
    as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return as_t(r), as_t(wr), as_t(phi), as_t(wphi)


def bird_king_form_factor(
    element: str,
    g: torch.Tensor,
    b_iso: torch.Tensor,
    voltage_kv: float,
    parametrization: str = "lobato",
    q_max: float = 8.0,
    n_radial: int = 96,
    n_angular: int = 48,
) -> torch.Tensor:
    """f'(g) in Å for |g| values ``g`` (M,) Å⁻¹ and B (scalar tensor, Å²)."""
    dtype, device = g.dtype, g.device
    r, wr, phi, wphi = _polar_grid(q_max, n_radial, n_angular, dtype, device)
    qx = r[:, None] * torch.cos(phi)[None, :]  # (R, Φ)
    qy = r[:, None] * torch.sin(phi)[None, :]
    weight = wr[:, None] * wphi[None, :]
    q2 = qx**2 + qy**2
    gq2 = (g[:, None, None] - qx) ** 2 + qy**2  # |g − q|², (M, R, Φ)
    gamma = lorentz_factor(voltage_kv)
    f_q = gamma * scattering_factor(element, q2, parametrization)
    f_gq = gamma * scattering_factor(element, gq2, parametrization)
    bracket = torch.exp(-b_iso * g[:, None, None] ** 2 / 4) - torch.exp(-b_iso * (q2 + gq2) / 4)
    integral = (f_q * f_gq * bracket * weight).sum((-1, -2))
    return 0.5 * wavelength_angstrom(voltage_kv) * integral


def bird_king_potential(
    crystal: Crystal,
    hkl: np.ndarray,
    positions: torch.Tensor,
    b_by_element: dict[str, torch.Tensor],
    voltage_kv: float,
    parametrization: str = "lobato",
) -> torch.Tensor:
    """U'(h) (Å⁻², complex (M,)) for Miller indices ``hkl`` (M, 3).

    ``positions``: asymmetric-unit fractional positions (S, 3); ``b_by_element``:
    isotropic B (Å², scalar tensors) of every element of the crystal.
    """
    dtype, device = positions.dtype, positions.device
    h = torch.as_tensor(np.asarray(hkl, dtype=float), dtype=dtype, device=device)
    metric = torch.as_tensor(crystal.reciprocal_metric, dtype=dtype, device=device)
    g = torch.sqrt(torch.clamp(torch.einsum("mi,ij,mj->m", h, metric, h), min=0.0))
    g_unique, inverse = torch.unique(torch.round(g, decimals=10), return_inverse=True)
    rot = torch.as_tensor(crystal.atom_rotation, dtype=dtype, device=device)
    trans = torch.as_tensor(crystal.atom_translation, dtype=dtype, device=device)
    site = torch.as_tensor(crystal.atom_site, device=device)
    x_atom = torch.einsum("aij,aj->ai", rot, positions[site]) + trans  # (A, 3)
    phase = 2 * math.pi * h @ x_atom.T  # (M, A)
    total = torch.zeros(len(h), dtype=torch.complex128 if dtype == torch.float64 else torch.complex64,
                        device=device)
    for element in crystal.elements:
        mask = torch.as_tensor([e == element for e in crystal.atom_elements], device=device)
        f_abs = bird_king_form_factor(element, g_unique, b_by_element[element], voltage_kv,
                                      parametrization)[inverse]
        ph = phase[:, mask]
        total = total + f_abs * torch.complex(torch.cos(ph).sum(-1), torch.sin(ph).sum(-1))
    return total / (math.pi * crystal.volume)
