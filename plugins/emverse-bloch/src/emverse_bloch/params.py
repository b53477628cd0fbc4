"""Recipe parameters of the bloch components (attrs only; no torch here).

Units are in the field names: kV, Å, Å⁻¹, mrad, deg, mm, µm.
"""

from __future__ import annotations

import attrs
from emverse.params import in_range, non_negative, one_of, positive


def _zone_axis(instance, attribute, value):
    try:
        ok = len(value) == 3 and all(int(v) == v for v in value) and any(v != 0 for v in value)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{attribute.name} {list(value) if hasattr(value, '__iter__') else value!r} is not a "
            "direction; give three integers, not all zero, e.g. [0, 1, 0]"
        )


def _tuple3(value):
    return tuple(int(v) for v in value) if hasattr(value, "__iter__") else value


@attrs.frozen
class CbedParams:
    """``bloch.cbed``: MgB2-type CBED pattern from the 13-parameter vector.

    Paper-scale settings (CBED paper): g_max 2.0–2.5 Å⁻¹ (~120–180 beams), a
    larger detector (e.g. 256 px); the defaults here are small for a CPU.
    """

    structure: str = "MgB2"  # built-in name or CIF path (relative to the recipe)
    voltage_kv: float = attrs.field(default=200.0, validator=positive)
    zone_axis: tuple[int, int, int] = attrs.field(default=(0, 1, 0), converter=_tuple3,
                                                  validator=_zone_axis)
    convergence_semiangle_mrad: float = attrs.field(default=3.0, validator=positive)
    detector_pixels: int = attrs.field(default=40, validator=positive)
    detector_pixel_size_um: float = attrs.field(default=55.0, validator=positive)
    camera_length_mm: float = attrs.field(default=100.0, validator=positive)
    g_max: float = attrs.field(default=1.0, validator=positive)  # Å⁻¹, beams in the Bloch matrix
    sg_max: float = attrs.field(default=0.05, validator=positive)  # Å⁻¹
    parametrization: str = attrs.field(default="lobato", validator=one_of("lobato", "kirkland"))
    method: str = attrs.field(default="eig", validator=one_of("eig", "expm"))
    absorption: float = attrs.field(default=0.0, validator=non_negative)  # κ, U' = κU
    dose_electrons_per_pixel: float = attrs.field(default=0.0, validator=non_negative)  # 0: no noise
    # 0: every beam solved exactly; n > 0: n beams per direction exactly, the rest folded in
    # by Bethe potentials (faster, approximate: see docs/emverse-bloch.md for the error)
    bethe_strong_beams: int = attrs.field(default=0, validator=non_negative)


@attrs.frozen
class Ed3dParams:
    """``bloch.ed3d``: 3D-ED integrated intensities of a rotation series."""

    structure: str = "MgB2"
    voltage_kv: float = attrs.field(default=200.0, validator=positive)
    thickness_angstrom: float = attrs.field(default=300.0, validator=non_negative)
    n_frames: int = attrs.field(default=4, validator=positive)
    rotation_step_deg: float = 1.0
    start_zone_axis: tuple[int, int, int] = attrs.field(default=(0, 1, 0), converter=_tuple3,
                                                        validator=_zone_axis)
    g_max: float = attrs.field(default=1.2, validator=positive)
    sg_max: float = attrs.field(default=0.03, validator=positive)
    rocking_semi_angle_deg: float = attrs.field(default=0.3, validator=non_negative)
    n_sub_orientations: int = attrs.field(default=3, validator=positive)
    integration: str = attrs.field(default="rocking", validator=one_of("rocking", "precession"))
    rsg: float = attrs.field(default=0.66, validator=positive)
    dsg: float = attrs.field(default=0.0015, validator=non_negative)
    mode: str = attrs.field(default="dynamical", validator=one_of("dynamical", "kinematical"))
    method: str = attrs.field(default="eig", validator=one_of("eig", "expm"))
    parametrization: str = attrs.field(default="lobato", validator=one_of("lobato", "kirkland"))
    position_half_range: float = attrs.field(default=0.01, validator=in_range(0.0, 0.5))
    u_iso_range: tuple[float, float] = (0.002, 0.02)
