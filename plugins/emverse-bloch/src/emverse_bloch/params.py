"""Recipe parameters of the bloch components (attrs only; no torch here).

Units are in the field names: kV, Å, Å⁻¹, mrad, deg, mm, µm.
"""

from __future__ import annotations

from typing import ClassVar

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


def _ordered_pair(instance, attribute, value):
    ok = len(value) == 2 and all(isinstance(v, int | float) for v in value) and 0 <= value[0] < value[1]
    if not ok:
        raise ValueError(f"{attribute.name} {list(value)} must be [low, high] with 0 <= low < high")


def _reflections(instance, attribute, value):
    for h in value:
        if len(h) != 3 or not any(h):
            raise ValueError(f"{attribute.name}: {list(h)} is not a reflection; give three Miller "
                             "indices, not all zero, e.g. [[1, 1, 1], [2, 2, 0]]")


@attrs.frozen
class CbedParams:
    """``bloch.cbed``: MgB2-type CBED pattern from the 13-parameter vector.

    Paper-scale settings (CBED paper): g_max 2.0–2.5 Å⁻¹ (~120–180 beams), a
    larger detector (e.g. 256 px); the defaults here are small for a CPU.
    """

    #: what the model predicts and takes (checked against [likelihood] / [parametrization])
    output: ClassVar[str] = "intensity"
    takes: ClassVar[str] = "parameter_vector"

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
    #: the unknowns: "paper" (the CBED paper's MgB2 13-vector), "symmetry" (built from the
    #: crystal: ADPs allowed by site symmetry, free_reflections, tilt, thickness), "auto"
    #: ("paper" for the built-in MgB2, else "symmetry"); see emverse_bloch.cbed_table
    parameter_table: str = attrs.field(default="auto", validator=one_of("auto", "paper", "symmetry"))
    #: "symmetry" table: one U_iso per site, or the U_ij its site symmetry allows
    adp: str = attrs.field(default="isotropic", validator=one_of("isotropic", "anisotropic"))
    #: range of the ADPs (diagonal components, pm² = 1e-4 Å²); off-diagonal: ± half its width
    u_range_pm2: tuple[float, float] = attrs.field(default=(20.0, 150.0), converter=tuple,
                                                   validator=_ordered_pair)
    #: reflections whose structure factor (Å) is free, e.g. [[1, 1, 1], [2, 2, 0]]
    free_reflections: tuple[tuple[int, int, int], ...] = attrs.field(
        default=(), converter=lambda v: tuple(_tuple3(h) for h in v), validator=_reflections)
    #: each free F is uniform in its independent-atom value ± this (Å)
    structure_factor_half_range: float = attrs.field(default=0.5, validator=positive)
    tilt_half_range_deg: float = attrs.field(default=0.2, validator=positive)
    thickness_range_angstrom: tuple[float, float] = attrs.field(default=(500.0, 2500.0), converter=tuple,
                                                                validator=_ordered_pair)


@attrs.frozen
class Ed3dParams:
    """``bloch.ed3d``: 3D-ED integrated intensities of a rotation series."""

    output: ClassVar[str] = "intensity"
    takes: ClassVar[str] = "parameter_vector"

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


def hkl_name(hkl) -> str:
    """Felix-python's file naming of a disc: (1, 1, -3) -> ``+1+1-3``."""
    return "".join(f"{int(v):+d}" for v in hkl)


def _check_discs(instance, value):
    """Every listed reflection needs its disc file, and all discs one size — checked when the
    recipe is validated, before any run directory exists (paths: shared: or absolute)."""
    from pathlib import Path

    from emverse.paths import resolve

    text = str(instance.data_dir)
    if not (text.startswith("shared:") or Path(text).is_absolute()):
        return  # relative to the recipe: checked at run time
    folder = resolve(text, Path.cwd())
    if not folder.is_dir():
        raise ValueError(f"data_dir {text!r} ({folder}) is not a folder; check the path")
    missing = [f"{instance.file_prefix}_{hkl_name(h)}.dm3" for h in value
               if not (folder / f"{instance.file_prefix}_{hkl_name(h)}.dm3").exists()]
    if missing:
        raise ValueError(f"reflections: no disc file for {', '.join(missing)} in {folder}; "
                         "remove those reflections or add their files")
    from emverse.readers import read

    shapes = {}
    for h in value:
        path = folder / f"{instance.file_prefix}_{hkl_name(h)}.dm3"
        shapes[path.name] = read(path, ndim=2).data.shape
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in shapes.items())
        raise ValueError(f"reflections: the disc images differ in size ({listing}); give discs of one size")
    (shape,) = set(shapes.values())
    if shape[0] != shape[1] or shape[0] % instance.downsample:
        raise ValueError(f"downsample {instance.downsample} does not divide the {shape} discs; "
                         "use a divisor of the image side")


_REFINABLE = ("thickness", "B", "xyz", "centre_row", "centre_col", "rotation", "pixel_scale", "blur")


def _refinable(instance, attribute, value):
    bad = [v for v in value if v not in _REFINABLE and not str(v).startswith("B_")]
    if bad:
        raise ValueError(f"refine {bad} unknown; use {', '.join(_REFINABLE)} or B_<element>")


def _reflection_list(value):
    return tuple(tuple(int(v) for v in h) for h in value)


@attrs.frozen
class LacbedParams:
    """Options of ``bloch.lacbed``: refine a structure against D-LACBED discs (Felix workflow).

    Data: ``data_dir`` holds one 2D image per reflection, ``<file_prefix>_+h+k+l.dm3``
    (Felix-python naming). The DM3 files carry no calibration, so the reciprocal pixel
    size comes from Felix's ``convergence_angle`` (disc radius, Å⁻¹ without 2π) over
    ``image_radius`` (px): ``reciprocal_pixel_size = convergence_angle / image_radius``
    at the files' resolution. ``downsample`` averages blocks of pixels (CPU budget).
    Units: kV, Å, Å⁻¹, Å², px, deg.
    """

    requires: ClassVar[tuple[str, ...]] = ("refiner",)

    data_dir: str = "shared:lacbed/diamond_felixpython/DM3_100x100"
    file_prefix: str = "C"
    structure: str = "diamond"  # built-in (diamond, LiNbO3, MgB2) or a CIF path
    voltage_kv: float = attrs.field(default=200.0, validator=positive)
    zone_axis: tuple[int, int, int] = attrs.field(default=(1, -1, 0), converter=_tuple3, validator=_zone_axis)
    x_direction: tuple[int, int, int] = attrs.field(default=(0, 0, -1), converter=_tuple3,
                                                    validator=_zone_axis)
    reciprocal_pixel_size: float = attrs.field(default=0.889 / 50, validator=positive)  # Å⁻¹/px
    downsample: int = attrs.field(default=4, validator=positive)
    g_max: float = attrs.field(default=2.6, validator=positive)  # Å⁻¹, the ZOLZ beam pool
    n_strong_beams: int = attrs.field(default=45, validator=non_negative)  # per direction; 0 = all
    absorption: str = attrs.field(default="bird_king", validator=one_of("none", "proportional", "bird_king"))
    absorption_fraction: float = attrs.field(default=0.1, validator=non_negative)  # κ of "proportional"
    parametrization: str = attrs.field(default="kirkland", validator=one_of("lobato", "kirkland"))
    # start values; B_iso per element (Å²), an empty table takes the structure's own
    b_iso: dict = attrs.field(factory=dict)
    thickness_range_angstrom: tuple[float, float] = (2200.0, 2301.0)  # Felix's initial/final thickness
    thickness_step_angstrom: float = attrs.field(default=25.0, validator=positive)
    pixel_scale_scan: tuple[float, ...] = (0.94, 0.97, 1.0, 1.03)  # × reciprocal_pixel_size, coarse scan
    b_scan_factors: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5)  # × every start B, coarse scan
    blur_px: float = attrs.field(default=0.7, validator=non_negative)  # σ at the fitted resolution
    # "B" = every element's B; "xyz" = the symmetry-allowed coordinates of the sites in ``coordinate_sites``
    refine: tuple[str, ...] = attrs.field(
        default=("thickness", "B", "centre_row", "centre_col", "rotation", "pixel_scale"), validator=_refinable)
    coordinate_sites: tuple[str, ...] = ()  # site labels (a polar axis needs one site kept fixed)
    likelihood: str = attrs.field(default="ncc", validator=one_of("ncc", "gaussian"))
    orientation_check: bool = True  # compare the 8 flips/rotations of the image axes at the start
    reflections: tuple[tuple[int, int, int], ...] = attrs.field(
        default=((0, 0, 0), (0, 0, 2), (1, 1, 1), (2, 2, 0)), converter=_reflection_list)

    def __attrs_post_init__(self):
        _check_discs(self, self.reflections)
