"""Relativistic electron constants (Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed., eqs. 2.5, 5.6)."""

from __future__ import annotations

import math

#: electron rest energy m₀c² in eV (CODATA 2018)
ELECTRON_REST_ENERGY_EV = 510_998.950
#: h·c in eV·Å (CODATA 2018)
HC_EV_ANGSTROM = 12_398.419843


def _check_voltage(voltage_kv: float) -> float:
    if not (isinstance(voltage_kv, (int, float)) and voltage_kv > 0):
        raise ValueError(f"voltage_kv must be > 0 kV, got {voltage_kv!r}; give e.g. 300.0")
    return float(voltage_kv) * 1e3


def wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic de Broglie wavelength λ = hc / √(E(2m₀c² + E)) in Å (E in eV)."""
    energy = _check_voltage(voltage_kv)
    return HC_EV_ANGSTROM / math.sqrt(energy * (2 * ELECTRON_REST_ENERGY_EV + energy))


def interaction_constant(voltage_kv: float) -> float:
    """σ = (2π / (λ·E/e)) · (m₀c² + E) / (2m₀c² + E), in rad / (V·Å).

    The phase a slice imprints is σ·V_projected with V_projected in V·Å.
    """
    energy = _check_voltage(voltage_kv)
    lam = wavelength_angstrom(voltage_kv)
    return (
        2
        * math.pi
        / (lam * energy)
        * (ELECTRON_REST_ENERGY_EV + energy)
        / (2 * ELECTRON_REST_ENERGY_EV + energy)
    )
