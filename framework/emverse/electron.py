"""Relativistic electron constants: wavelength, Lorentz factor, interaction constant.

All energies are accelerating voltages in kV; lengths in Å.

* ``wavelength_angstrom(V) = h c / sqrt(e V (2 m0 c² + e V))``:
  0.03701 / 0.02508 / 0.01969 Å at 100 / 200 / 300 kV.
* ``lorentz_factor(V) = 1 + e V / (m0 c²)``.
* ``potential_prefactor(V) = γ / π``: with it ``U_g = γ F_g / (π Ω)`` (Å⁻²) for an
  electron structure factor ``F_g`` in Å and a cell volume ``Ω`` in Å³, i.e.
  ``U_g = 2 m e V_g / h²`` with the relativistic mass ``m = γ m0``.
"""

from __future__ import annotations

import math

from emverse.errors import EmverseError

#: electron rest energy m0 c² in eV (CODATA 2018)
ELECTRON_REST_ENERGY_EV = 510998.95
#: h c in eV·Å (CODATA 2018)
HC_EV_ANGSTROM = 12398.419843320026


def _check_voltage(voltage_kv: float) -> float:
    v = float(voltage_kv)
    if not math.isfinite(v) or v <= 0:
        raise EmverseError(
            f"voltage_kv {voltage_kv!r} is not an accelerating voltage; give a positive "
            "number of kV, e.g. 200.0"
        )
    return v


def wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength in vacuum (Å) for an accelerating voltage in kV."""
    energy_ev = _check_voltage(voltage_kv) * 1e3
    return HC_EV_ANGSTROM / math.sqrt(energy_ev * (2 * ELECTRON_REST_ENERGY_EV + energy_ev))


def lorentz_factor(voltage_kv: float) -> float:
    """γ = 1 + eV / m0c² (dimensionless)."""
    return 1.0 + _check_voltage(voltage_kv) * 1e3 / ELECTRON_REST_ENERGY_EV


def potential_prefactor(voltage_kv: float) -> float:
    """γ/π: multiplies F_g/Ω (Å / Å³) to give U_g in Å⁻²."""
    return lorentz_factor(voltage_kv) / math.pi
