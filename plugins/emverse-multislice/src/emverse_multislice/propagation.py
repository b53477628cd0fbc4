"""Free-space propagation, band limiting and the far field (torch, batched, differentiable).

Conventions (the same as abTEM's, see docs/emverse-multislice.md):

* spatial frequencies k are in Å⁻¹ (``torch.fft.fftfreq(n, d=sampling)``),
  zero frequency at index 0 (no shift) until the detector;
* the Fresnel (paraxial) propagator over Δz is ``exp(−iπλΔz k²)``; the
  angular-spectrum one is ``exp(2πiΔz(√(λ⁻² − k²) − λ⁻¹))`` (the constant
  carrier phase removed; evanescent components dropped), which agrees with the
  paraxial one to order λ³k⁴Δz;
* the antialias aperture keeps |k| < (2/3)·k_Nyquist with a raised-cosine
  edge of width 0.01/sampling (abTEM's defaults), applied to the propagator
  and to each slice's transmission function: products of two band-limited
  functions then stay free of wrap-around aliasing;
* the far-field intensity is ``|FFT_ortho ψ|²`` fftshifted (zero frequency
  at index n//2), so a wave with Σ|ψ|² = 1 gives patterns that sum to 1.
"""

from __future__ import annotations

import math

import torch

#: fraction of the Nyquist frequency kept by the antialias aperture
ANTIALIAS_CUTOFF = 2.0 / 3.0
#: raised-cosine edge width of the antialias aperture, in units of 1/sampling (Å⁻¹·Å)
ANTIALIAS_TAPER = 0.01


def _check_grid(gpts, sampling) -> tuple[tuple[int, int], tuple[float, float]]:
    gpts = tuple(int(n) for n in gpts)
    if isinstance(sampling, (int, float)):
        sampling = (float(sampling), float(sampling))
    sampling = tuple(float(s) for s in sampling)
    if len(gpts) != 2 or any(n <= 0 for n in gpts):
        raise ValueError(f"gpts must be two positive integers (H, W), got {gpts!r}")
    if len(sampling) != 2 or any(not s > 0 for s in sampling):
        raise ValueError(
            f"sampling_angstrom must be > 0 Å (one number or (H, W)), got {sampling!r}"
        )
    return gpts, sampling


def spatial_frequencies(
    gpts, sampling, *, dtype=torch.float64, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (Å⁻¹) of an (H, W) grid: ``kx`` of shape (H, 1), ``ky`` of shape (1, W)."""
    (h, w), (sh, sw) = _check_grid(gpts, sampling)
    kx = torch.fft.fftfreq(h, d=sh, dtype=dtype, device=device)[:, None]
    ky = torch.fft.fftfreq(w, d=sw, dtype=dtype, device=device)[None, :]
    return kx, ky


def antialias_aperture(
    gpts,
    sampling,
    *,
    cutoff: float = ANTIALIAS_CUTOFF,
    taper: float = ANTIALIAS_TAPER,
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """Real (H, W) aperture: 1 below ``cutoff``·k_Nyquist, raised-cosine edge, 0 above.

    k_Nyquist = 1 / (2·max(sampling)) so the aperture is round even on a
    rectangular pixel grid.
    """
    gpts, sampling = _check_grid(gpts, sampling)
    kx, ky = spatial_frequencies(gpts, sampling, dtype=dtype, device=device)
    k = torch.sqrt(kx**2 + ky**2)
    k_cut = cutoff / max(sampling) / 2.0
    width = taper / max(sampling)
    if width <= 0:
        return (k < k_cut).to(dtype)
    edge = 0.5 * (1.0 + torch.cos(math.pi * (k - k_cut + width) / width))
    aperture = torch.where(k > k_cut - width, edge, torch.ones_like(k))
    return torch.where(k > k_cut, torch.zeros_like(k), aperture)


def fresnel_propagator(
    gpts,
    sampling,
    thickness_angstrom: float,
    wavelength_angstrom: float,
    *,
    kind: str = "paraxial",
    antialias: bool = True,
    dtype=torch.complex128,
    device=None,
) -> torch.Tensor:
    """Complex (H, W) Fourier-space propagator over ``thickness_angstrom`` (Å).

    ``kind`` is "paraxial" (Fresnel) or "angular_spectrum"; with ``antialias``
    the 2/3-Nyquist aperture is folded in.
    """
    if not wavelength_angstrom > 0:
        raise ValueError(f"wavelength must be > 0 Å, got {wavelength_angstrom!r}")
    if not dtype.is_complex:
        raise ValueError(f"the propagator is complex; give a complex dtype, got {dtype}")
    kx, ky = spatial_frequencies(gpts, sampling, dtype=torch.float64, device=device)
    k2 = kx**2 + ky**2
    if kind == "paraxial":
        phase = -math.pi * wavelength_angstrom * thickness_angstrom * k2
        amplitude = torch.ones_like(k2)
    elif kind == "angular_spectrum":
        kz2 = 1.0 / wavelength_angstrom**2 - k2
        propagating = kz2 > 0
        kz = torch.sqrt(kz2.clamp_min(0.0))
        phase = 2 * math.pi * thickness_angstrom * (kz - 1.0 / wavelength_angstrom)
        amplitude = propagating.to(torch.float64)
    else:
        raise ValueError(
            f"propagator kind {kind!r} is unknown; use 'paraxial' or 'angular_spectrum'"
        )
    if antialias:
        amplitude = amplitude * antialias_aperture(gpts, sampling, device=device)
    return torch.polar(amplitude, phase).to(dtype)


def propagate(waves: torch.Tensor, propagator: torch.Tensor) -> torch.Tensor:
    """Apply a Fourier-space ``propagator`` (H, W) to ``waves`` (..., H, W)."""
    return torch.fft.ifft2(torch.fft.fft2(waves) * propagator)


def bandlimit(field: torch.Tensor, aperture: torch.Tensor) -> torch.Tensor:
    """Low-pass ``field`` (..., H, W) with a Fourier-space ``aperture`` (H, W)."""
    return torch.fft.ifft2(torch.fft.fft2(field) * aperture)


def multislice(
    waves: torch.Tensor,
    transmissions,
    propagator: torch.Tensor | None,
    *,
    propagate_last_slice: bool = True,
) -> torch.Tensor:
    """Exit wave after alternating transmission and propagation.

    ``waves`` (..., H, W) complex; ``transmissions`` a sequence (or a tensor
    whose first axis is depth) of complex arrays broadcastable against
    ``waves``; ``propagator`` the Fourier-space propagator of one slice
    (``None``: no propagation, the projection approximation). Each slice:
    ψ ← t_n·ψ, then ψ ← IFFT(P·FFT ψ) — after every slice when
    ``propagate_last_slice`` (abTEM's order), else after all but the last
    (PtyRAD's / pty-chi's).
    """
    n_slices = len(transmissions)
    for n in range(n_slices):
        waves = waves * transmissions[n]
        if propagator is not None and (propagate_last_slice or n < n_slices - 1):
            waves = propagate(waves, propagator)
    return waves


def far_field_intensity(waves: torch.Tensor) -> torch.Tensor:
    """Diffraction intensity ``fftshift(|FFT_ortho ψ|²)`` over the last two axes (real)."""
    far = torch.fft.fft2(waves, norm="ortho")
    intensity = far.real**2 + far.imag**2
    return torch.fft.fftshift(intensity, dim=(-2, -1))
