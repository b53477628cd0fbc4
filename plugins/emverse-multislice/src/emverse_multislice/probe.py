"""The convergent electron probe, the scan grid and sub-pixel shifts.

The probe is built in Fourier space: an objective aperture of semi-angle α₀
(mrad) times the aberration phase ``exp(−iχ(α))`` with
χ(α) = (2π/λ)(½·C10·α² + ¼·C30·α⁴), α = λ|k| (rad), C10 = −defocus and
C30 = Cs (abTEM's sign conventions). It is normalised so that Σ_k|Ψ|² = 1
with the orthonormal FFT (hence Σ_r|ψ|² = 1 and Σ of every diffraction
pattern = 1 before any scattering out of the band limit).

A probe at position r₀ (Å) is Ψ(k)·exp(−2πi k·r₀) transformed to real
space: shifts by any fraction of a pixel are exact for band-limited waves
(periodic on the grid).
"""

from __future__ import annotations

import math

import torch

from emverse_multislice.electron import wavelength_angstrom
from emverse_multislice.propagation import _check_grid, spatial_frequencies


def aperture(
    gpts,
    sampling,
    voltage_kv: float,
    semiangle_mrad: float,
    *,
    soft: bool = True,
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """Real (H, W) objective aperture of semi-angle ``semiangle_mrad`` (mrad).

    ``soft``: the edge is a linear ramp one angular pixel wide (along the
    azimuth's direction), which makes the probe a smooth function of the
    semi-angle and removes pixel-staircase ringing; else a hard disk
    (α ≤ α₀).
    """
    gpts, sampling = _check_grid(gpts, sampling)
    if not semiangle_mrad > 0:
        raise ValueError(f"semiangle_mrad must be > 0 mrad, got {semiangle_mrad!r}")
    lam = wavelength_angstrom(voltage_kv)
    kx, ky = spatial_frequencies(gpts, sampling, dtype=torch.float64, device=device)
    alpha = lam * torch.sqrt(kx**2 + ky**2)
    cutoff = semiangle_mrad * 1e-3
    if not soft:
        return (alpha <= cutoff).to(dtype)
    # angular pixel size along each axis (rad)
    d_alpha_x = lam / (gpts[0] * sampling[0])
    d_alpha_y = lam / (gpts[1] * sampling[1])
    phi = torch.atan2(ky.expand(gpts), kx.expand(gpts))
    width = torch.sqrt((torch.cos(phi) * d_alpha_x) ** 2 + (torch.sin(phi) * d_alpha_y) ** 2)
    ramp = ((cutoff - alpha) / width + 0.5).clamp(0.0, 1.0)
    ramp[0, 0] = 1.0
    return ramp.to(dtype)


def aberration_phase(
    gpts,
    sampling,
    voltage_kv: float,
    *,
    defocus_angstrom: float = 0.0,
    cs_angstrom: float = 0.0,
    device=None,
) -> torch.Tensor:
    """χ(k) in radians on the (H, W) grid (float64): (2π/λ)(½·C10·α² + ¼·Cs·α⁴), C10 = −defocus."""
    lam = wavelength_angstrom(voltage_kv)
    kx, ky = spatial_frequencies(gpts, sampling, dtype=torch.float64, device=device)
    alpha2 = lam**2 * (kx**2 + ky**2)
    c10 = -float(defocus_angstrom)
    return 2 * math.pi / lam * (0.5 * c10 * alpha2 + 0.25 * float(cs_angstrom) * alpha2**2)


def probe_fourier(
    gpts,
    sampling,
    voltage_kv: float,
    semiangle_mrad: float,
    *,
    defocus_angstrom: float = 0.0,
    cs_angstrom: float = 0.0,
    soft_aperture: bool = True,
    dtype=torch.complex128,
    device=None,
) -> torch.Tensor:
    """Fourier-space probe Ψ(k) (H, W), centred on the origin, Σ|Ψ|² = 1."""
    amplitude = aperture(
        gpts, sampling, voltage_kv, semiangle_mrad, soft=soft_aperture, device=device
    )
    if float(amplitude.sum()) == 0.0:
        raise ValueError(
            f"the aperture of {semiangle_mrad} mrad holds no pixel of the "
            f"{tuple(gpts)} grid at {sampling} Å; enlarge the grid or the semi-angle"
        )
    chi = aberration_phase(
        gpts,
        sampling,
        voltage_kv,
        defocus_angstrom=defocus_angstrom,
        cs_angstrom=cs_angstrom,
        device=device,
    )
    wave = torch.polar(amplitude, -chi)
    wave = wave / torch.sqrt((amplitude**2).sum())
    return wave.to(dtype)


def phase_ramp(shifts_angstrom: torch.Tensor, gpts, sampling) -> torch.Tensor:
    """exp(−2πi k·r₀) for each shift: (n, 2) Å → complex (n, H, W); differentiable in the shifts."""
    kx, ky = spatial_frequencies(
        gpts, sampling, dtype=shifts_angstrom.dtype, device=shifts_angstrom.device
    )
    phase = -2 * math.pi * (
        kx[None] * shifts_angstrom[:, 0, None, None] + ky[None] * shifts_angstrom[:, 1, None, None]
    )
    return torch.polar(torch.ones_like(phase), phase)


def shifted_probes(
    wave_fourier: torch.Tensor, shifts_angstrom: torch.Tensor, sampling
) -> torch.Tensor:
    """Real-space probes (n, H, W) centred at ``shifts_angstrom`` (n, 2) (Å, rows then columns).

    ``wave_fourier`` is the centred Fourier-space probe (H, W); the shift is a
    Fourier phase ramp, so sub-pixel positions are exact and differentiable.
    """
    gpts = tuple(wave_fourier.shape[-2:])
    real = torch.float64 if wave_fourier.dtype == torch.complex128 else torch.float32
    ramp = phase_ramp(shifts_angstrom.to(real), gpts, sampling)
    return torch.fft.ifft2(wave_fourier * ramp, norm="ortho")


def scan_grid(
    scan_shape: tuple[int, int],
    step_angstrom: float,
    origin_angstrom: tuple[float, float] = (0.0, 0.0),
    *,
    dtype=torch.float64,
) -> torch.Tensor:
    """Scan positions (rows·cols, 2) in Å, row-major: origin + (i, j)·step."""
    rows, cols = (int(n) for n in scan_shape)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"scan_shape must be two positive integers, got {scan_shape!r}")
    if not step_angstrom > 0:
        raise ValueError(f"scan_step_angstrom must be > 0 Å, got {step_angstrom!r}")
    i = torch.arange(rows, dtype=dtype) * step_angstrom + float(origin_angstrom[0])
    j = torch.arange(cols, dtype=dtype) * step_angstrom + float(origin_angstrom[1])
    grid = torch.stack(torch.meshgrid(i, j, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)


def centred_scan_origin(
    scan_shape: tuple[int, int], step_angstrom: float, extent_angstrom: tuple[float, float]
) -> tuple[float, float]:
    """Origin (Å) that centres a scan of ``scan_shape`` × ``step_angstrom`` on a field of view."""
    return tuple(
        0.5 * (float(extent) - (int(n) - 1) * float(step_angstrom))
        for n, extent in zip(scan_shape, extent_angstrom, strict=True)
    )


def probe_mode_set(
    wave_fourier: torch.Tensor, n_modes: int, sampling, *, dominant_power: float = 0.9
) -> torch.Tensor:
    """An initial mixed-state probe (n_modes, H, W) in Fourier space from one coherent probe.

    Mode 0 is ``wave_fourier``; mode m > 0 is it multiplied in real space by
    a product of Hermite polynomials H_a(x/w)·H_b(y/w) (orders (1, 0), (0, 1),
    (1, 1), (2, 0), (0, 2), … ; w the probe's rms radius), the set made
    orthonormal (Gram–Schmidt from mode 0), then scaled so that mode 0 carries
    ``dominant_power`` of the total and the others share the rest equally;
    Σ_m Σ_k |Ψ_m|² equals the input probe's power. These are the low-order
    modes of a partially coherent probe (a finite source blurs the probe by
    a small shift, whose first-order terms are x·ψ and y·ψ).
    """
    n_modes = int(n_modes)
    if n_modes < 1:
        raise ValueError(f"probe_modes must be a positive integer, got {n_modes!r}")
    power = float((wave_fourier.abs() ** 2).sum())
    if n_modes == 1:
        return wave_fourier[None].clone()
    if not 0.0 < dominant_power < 1.0:
        raise ValueError(f"dominant_power must lie in (0, 1), got {dominant_power!r}")
    gpts = tuple(wave_fourier.shape[-2:])
    psi = torch.fft.ifft2(wave_fourier, norm="ortho")  # the probe at the window's corner (periodic)
    s = (float(sampling), float(sampling)) if not isinstance(sampling, (tuple, list)) else tuple(sampling)
    rows = torch.arange(gpts[0], dtype=torch.float64)
    cols = torch.arange(gpts[1], dtype=torch.float64)
    # coordinates measured from the corner, wrapped to (−N/2, N/2]: the probe sits at pixel (0, 0)
    rows = (rows + gpts[0] // 2) % gpts[0] - gpts[0] // 2
    cols = (cols + gpts[1] // 2) % gpts[1] - gpts[1] // 2
    x = (rows * s[0])[:, None].expand(gpts)
    y = (cols * s[1])[None, :].expand(gpts)
    density = psi.abs() ** 2
    density = density / density.sum()
    radius = float(torch.sqrt((density * (x**2 + y**2)).sum() / 2).clamp_min(min(s)))
    hermite = [lambda u: torch.ones_like(u), lambda u: 2 * u, lambda u: 4 * u**2 - 2]
    orders = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1), (1, 2), (2, 2)]
    if n_modes > len(orders):
        raise ValueError(f"probe_modes = {n_modes} is more than the {len(orders)} modes this start offers")
    modes = []
    for a, b in orders[:n_modes]:
        candidate = psi * (hermite[a](x / radius) * hermite[b](y / radius)).to(psi.dtype)
        for previous in modes:
            candidate = candidate - (previous.conj() * candidate).sum() * previous
        modes.append(candidate / torch.sqrt((candidate.abs() ** 2).sum()))
    weights = [dominant_power] + [(1 - dominant_power) / (n_modes - 1)] * (n_modes - 1)
    stack = torch.stack([torch.fft.fft2(m, norm="ortho") * (w * power) ** 0.5 for m, w in zip(modes, weights, strict=True)])
    return stack.to(wave_fourier.dtype)


def orthogonal_modes(modes_fourier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenmodes of a mixed-state probe (M, H, W) and their power fractions, strongest first.

    Σ_m ψ_m ψ_mᴴ (the probe's density matrix, all that the data constrain) is unchanged; the
    returned modes are orthogonal (an SVD of the stacked modes)."""
    m = modes_fourier.shape[0]
    flat = modes_fourier.reshape(m, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    orthogonal = (s[:, None].to(vh.dtype) * vh).reshape(modes_fourier.shape)
    fractions = s**2 / (s**2).sum()
    return orthogonal, fractions


def source_offsets(source_size_angstrom: float, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Hermite quadrature of a Gaussian source of standard deviation ``source_size_angstrom``
    (Å, the source's image at the sample): offsets (points², 2) in Å and weights (points²,) summing
    to 1. Averaging intensities over probe positions shifted by the offsets is partial spatial
    coherence (an incoherent sum over source points)."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(int(points))  # weight exp(−u²/2)
    weights = weights / weights.sum()
    u = torch.tensor(nodes, dtype=torch.float64) * float(source_size_angstrom)
    w = torch.tensor(weights, dtype=torch.float64)
    offsets = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    return offsets, (w[:, None] * w[None, :]).reshape(-1)
