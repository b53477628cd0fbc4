"""Physics of the pieces against analytic results and abTEM's constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from emverse_multislice.electron import interaction_constant, wavelength_angstrom
from emverse_multislice.probe import probe_fourier, scan_grid, shifted_probes
from emverse_multislice.propagation import (
    antialias_aperture,
    far_field_intensity,
    fresnel_propagator,
    propagate,
)
from emverse_multislice.ptychography import MultislicePtychography


@pytest.mark.parametrize("voltage_kv", [100.0, 200.0, 300.0])
def test_electron_constants_match_abtem_and_published_values(voltage_kv):
    from abtem.core.energy import energy2sigma, energy2wavelength

    assert wavelength_angstrom(voltage_kv) == pytest.approx(energy2wavelength(voltage_kv * 1e3), rel=1e-6)
    assert interaction_constant(voltage_kv) == pytest.approx(energy2sigma(voltage_kv * 1e3), rel=1e-6)
    # published: λ = 0.03701 / 0.02508 / 0.01969 Å; σ = 9.2440e-4 / 7.2884e-4 / 6.5262e-4 rad/(V·Å)
    published = {100.0: (0.03701, 9.2440e-4), 200.0: (0.02508, 7.2884e-4), 300.0: (0.01969, 6.5262e-4)}
    lam, sigma = published[voltage_kv]
    assert wavelength_angstrom(voltage_kv) == pytest.approx(lam, abs=1e-5)
    assert interaction_constant(voltage_kv) == pytest.approx(sigma, rel=1e-4)


@pytest.mark.parametrize("kind, z", [("paraxial", 200.0), ("paraxial", -150.0), ("angular_spectrum", 200.0)])
def test_gaussian_beam_free_space_propagation_matches_analytic(kind, z):
    """ψ₀ = exp(−r²/w₀²) → ψ(z) = (w₀²/q) exp(−r²/q), q = w₀² + iλz/π (paraxial, exact on a
    periodic grid while the beam stays far from the edges). w₀ = 1 Å, z_R = πw₀²/λ ≈ 160 Å at 300 kV."""
    n, s, w0 = 256, 0.1, 1.0
    lam = wavelength_angstrom(300.0)
    coords = (torch.arange(n, dtype=torch.float64) - n // 2) * s
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    psi0 = torch.exp(-r2 / w0**2).to(torch.complex128)
    prop = fresnel_propagator((n, n), s, z, lam, kind=kind, antialias=False)
    psi = propagate(psi0, prop)
    q = w0**2 + 1j * lam * z / math.pi
    expected = (w0**2 / q) * torch.exp(-r2 / q)
    error = float(torch.linalg.norm(psi - expected) / torch.linalg.norm(expected))
    # the beam broadens a lot: w(z)/w0 = |q|/w0² ≈ 1.6 at 200 Å, so a wrong sign or factor fails
    assert abs(q) / w0**2 > 1.5 or z < 0
    tolerance = 1e-10 if kind == "paraxial" else 1e-4  # angular spectrum differs by O(λ³k⁴z)
    assert error < tolerance
    # energy is conserved by a pure-phase propagator
    assert float((psi.abs() ** 2).sum()) == pytest.approx(float((psi0.abs() ** 2).sum()), rel=1e-12)


def test_antialias_aperture_cuts_at_two_thirds_nyquist():
    s = 0.2
    aperture = antialias_aperture((64, 64), s).numpy()
    k = np.fft.fftfreq(64, d=s)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    k_cut = (2 / 3) / (2 * s)
    assert np.all(aperture[kk > k_cut] == 0)
    assert np.all(aperture[kk < k_cut - 0.01 / s] == 1)


def test_zero_object_returns_the_probe_diffraction_and_conserves_energy():
    """A vacuum object: every pattern is |Ψ(k)|² of the bare probe — for a hard
    aperture a uniform disk of 1/n_disk over the pixels with α ≤ α₀ — and sums to 1."""
    model = MultislicePtychography(
        voltage_kv=200.0,
        semiangle_mrad=20.0,
        defocus_angstrom=50.0,
        cs_angstrom=1e5,
        soft_aperture=False,
        sampling_angstrom=0.25,
        slice_thickness_angstrom=2.0,
        object_shape=(5, 48, 48),
        scan_shape=(3, 4),
        scan_step_angstrom=0.77,
    )
    y = model(torch.zeros(2, 5, 48, 48, dtype=torch.float64))
    assert torch.allclose(y.sum(dim=(-2, -1)), torch.ones(2, 12, dtype=torch.float64), atol=1e-12)
    ax, ay = model.detector_angles_mrad()
    alpha = np.sqrt(ax.numpy()[:, None] ** 2 + ay.numpy()[None, :] ** 2)
    disk = alpha <= 20.0
    expected = disk / disk.sum()
    assert np.abs(y.numpy() - expected).max() < 1e-12


def test_integer_fourier_shift_equals_a_roll_and_subpixel_shift_is_unitary():
    probe = probe_fourier((40, 40), 0.2, 300.0, 21.4, defocus_angstrom=40.0)
    base = shifted_probes(probe, torch.zeros(1, 2, dtype=torch.float64), 0.2)[0]
    moved = shifted_probes(probe, torch.tensor([[3 * 0.2, -5 * 0.2]], dtype=torch.float64), 0.2)[0]
    assert torch.allclose(moved, torch.roll(base, shifts=(3, -5), dims=(0, 1)), atol=1e-12)
    half = shifted_probes(probe, torch.tensor([[0.1, 0.37]], dtype=torch.float64), 0.2)[0]
    assert float((half.abs() ** 2).sum()) == pytest.approx(1.0, abs=1e-12)
    # centre of mass moves by the requested sub-pixel shift
    x = torch.arange(40, dtype=torch.float64) * 0.2
    x = torch.where(x > 4.0, x - 8.0, x)
    com_row = float(((half.abs() ** 2).sum(dim=1) * x).sum())
    assert com_row == pytest.approx(0.1, abs=2e-3)


def test_scan_grid_is_row_major_in_angstrom():
    grid = scan_grid((2, 3), 0.5, (1.0, 2.0))
    assert grid.tolist() == [[1.0, 2.0], [1.0, 2.5], [1.0, 3.0], [1.5, 2.0], [1.5, 2.5], [1.5, 3.0]]


def test_far_field_of_plane_wave_is_a_delta_at_the_centre():
    wave = torch.full((8, 10), 1 / math.sqrt(80), dtype=torch.complex128)
    intensity = far_field_intensity(wave)
    assert float(intensity[4, 5]) == pytest.approx(1.0, abs=1e-12)
    assert float(intensity.sum()) == pytest.approx(1.0, abs=1e-12)


def test_poisson_noise_counts_at_the_dose():
    """dose e⁻/Å² × step² Å² electrons per pattern; counts are integers; seeded draws repeat."""
    model = MultislicePtychography(
        object_shape=(2, 32, 32), scan_shape=(3, 3), scan_step_angstrom=0.5, dose_e_per_angstrom2=1e4
    )
    x = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    electrons_per_pattern = 1e4 * 0.5**2
    noisy = model.simulate(x, generator=torch.Generator().manual_seed(3))
    counts = noisy * electrons_per_pattern
    assert torch.allclose(counts, counts.round(), atol=1e-6)
    totals = counts.sum(dim=(-2, -1))
    # Poisson total ~ N(2500, 50²): 9 patterns within 5 σ
    assert torch.all((totals - electrons_per_pattern).abs() < 5 * math.sqrt(electrons_per_pattern))
    again = model.simulate(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
