"""Parameters of the multislice components (attrs only: no torch, no numpy).

Units are in the field names: kV, mrad, Å (``_angstrom``), electrons per Å²
(``_e_per_angstrom2``). Lateral axes are ordered (H, W) everywhere; they are
abTEM's (x, y) axes in that order, so a volume rendered by
:mod:`emverse_multislice.render` and a scan position (row, col) in Å mean the
same thing as in abTEM.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import non_negative, one_of, optional_positive, path_field, positive


def _positive_int_tuple(length: int):
    def check(instance, attribute, value):
        if (
            not isinstance(value, tuple)
            or len(value) != length
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise ValueError(
                f"{attribute.name} must be {length} positive integers, got {value!r}"
            )

    return check


def optional_positive_int_pair(instance, attribute, value):
    if value is None:
        return
    _positive_int_tuple(2)(instance, attribute, value)


def _optional_float_pair(instance, attribute, value):
    if value is None:
        return
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{attribute.name} must be two numbers (Å) or omitted, got {value!r}")


def _optional_finite(instance, attribute, value):
    import math

    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number or omitted, got {value!r}")


def _to_tuple(value):
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class PtychographyParams:
    """Multislice 4D-STEM / ptychography forward model (``multislice.ptychography``).

    The unknown is a batch of phase volumes ``(B, depth, H, W)`` in radians
    (transmission ``exp(i·phase)`` per slice, the strong-phase approximation);
    the observation is the stack of diffraction intensities
    ``(B, n_scan, kH, kW)`` (fftshifted, each pattern summing to ≤ 1: the
    probe is normalised so that Σ_k |FFT ψ|² = 1, as in abTEM).

    * ``voltage_kv`` acceleration voltage (kV);
    * ``semiangle_mrad`` probe semi-convergence angle (mrad);
    * ``defocus_angstrom`` defocus (Å), abTEM's convention ``defocus = −C10``;
    * ``cs_angstrom`` spherical aberration C30 (Å);
    * ``soft_aperture`` soften the aperture edge over one angular pixel;
    * ``sampling_angstrom`` lateral pixel size of object and probe (Å);
    * ``slice_thickness_angstrom`` thickness of one slice (Å);
    * ``object_shape`` (depth, H, W) voxels of the phase volume;
    * ``probe_gpts`` (kH, kW) probe window; omitted = the whole object
      (periodic boundary conditions, as in abTEM);
    * ``scan_shape`` (rows, cols) scan positions, ``scan_step_angstrom`` their
      pitch (Å), ``scan_origin_angstrom`` the first position (Å); omitted =
      scan centred on the object;
    * ``propagator`` "paraxial" (Fresnel, abTEM's) or "angular_spectrum";
    * ``antialias`` band-limit propagator and transmission at 2/3 Nyquist;
    * ``propagate_last_slice`` propagate after the last slice too (abTEM);
    * ``dose_e_per_angstrom2`` electron dose (e⁻/Å²) for Poisson noise;
      omitted = noiseless;
    * ``learn_probe`` / ``learn_positions`` make the probe / scan positions
      trainable ``nn.Parameter`` s;
    * ``positions_per_pass`` scan positions simulated at once when no gradient
      is needed (bounds memory; omitted = all);
    * ``probe_modes`` incoherent probe modes (a mixed-state probe: the pattern
      is the sum of the modes' intensities; 1 = a coherent probe); the start
      is the optics probe and its low-order Hermite modes (90 % of the power
      in the first);
    * ``scan_affine`` 2 × 2 matrix A [[a, b], [c, d]] applied to the nominal
      scan about its centre (position = centre + A·(nominal − centre) + offset;
      identity = the nominal grid); ``learn_affine`` makes it trainable;
    * ``detector_blur_px`` Gaussian point-spread of the detector, σ in detector
      pixels (0 = none);
    * ``source_size_angstrom`` Gaussian source size σ (Å, its image at the
      sample): partial spatial coherence, an incoherent average over
      ``source_points`` × ``source_points`` Gauss–Hermite probe offsets
      (0 = coherent).
    """

    output: ClassVar[str] = "intensity"
    takes: ClassVar[str] = "volume"

    voltage_kv: float = attrs.field(default=300.0, validator=positive)
    semiangle_mrad: float = attrs.field(default=21.4, validator=positive)
    defocus_angstrom: float = 0.0
    cs_angstrom: float = 0.0
    soft_aperture: bool = True
    sampling_angstrom: float = attrs.field(default=0.2, validator=positive)
    slice_thickness_angstrom: float = attrs.field(default=1.6, validator=positive)
    object_shape: tuple[int, int, int] = attrs.field(
        default=(8, 64, 64), converter=_to_tuple, validator=_positive_int_tuple(3)
    )
    probe_gpts: tuple[int, int] | None = attrs.field(
        default=None, converter=_to_tuple, validator=optional_positive_int_pair
    )
    scan_shape: tuple[int, int] = attrs.field(
        default=(8, 8), converter=_to_tuple, validator=_positive_int_tuple(2)
    )
    scan_step_angstrom: float = attrs.field(default=0.512, validator=positive)
    scan_origin_angstrom: tuple[float, float] | None = attrs.field(
        default=None, converter=_to_tuple, validator=_optional_float_pair
    )
    propagator: str = attrs.field(
        default="paraxial", validator=one_of("paraxial", "angular_spectrum")
    )
    antialias: bool = True
    propagate_last_slice: bool = True
    dose_e_per_angstrom2: float | None = attrs.field(default=None, validator=optional_positive)
    learn_probe: bool = False
    learn_positions: bool = False
    positions_per_pass: int | None = attrs.field(default=256, validator=optional_positive)
    probe_modes: int = attrs.field(default=1, validator=positive)
    scan_affine: tuple[tuple[float, float], tuple[float, float]] = attrs.field(
        default=((1.0, 0.0), (0.0, 1.0)), converter=lambda v: tuple(_to_tuple(r) for r in _to_tuple(v)),
        validator=lambda i, a, v: _check_matrix(a, v),
    )
    learn_affine: bool = False
    detector_blur_px: float = attrs.field(default=0.0, validator=non_negative)
    source_size_angstrom: float = attrs.field(default=0.0, validator=non_negative)
    source_points: int = attrs.field(default=3, validator=positive)


def _check_matrix(attribute, value):
    ok = (isinstance(value, tuple) and len(value) == 2
          and all(isinstance(r, tuple) and len(r) == 2 for r in value)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in value for v in r))
    if not ok:
        raise ValueError(f"{attribute.name} must be a 2 × 2 matrix [[a, b], [c, d]], got {value!r}")
    (a, b), (c, d) = value
    if abs(a * d - b * c) < 1e-6:
        raise ValueError(f"{attribute.name} {value!r} is singular; give an invertible matrix (identity = no distortion)")


@attrs.frozen
class AdamParams:
    """Gradient reconstruction of the phase volume with Adam (``multislice.adam``).

    * ``epochs`` passes over all scan positions; ``batch_size`` scan positions
      per optimiser step (omitted = all positions, one step per epoch);
    * ``learning_rate`` (rad per step for the object);
    * ``loss`` "amplitude" (‖√I_pred − √I_obs‖², robust), "intensity"
      (‖I_pred − I_obs‖²) or "model" (the forward model's own negative
      log-likelihood, e.g. Poisson when a dose is set);
    * ``l1_weight`` sparsity weight on |phase| (mean over voxels);
    * ``positivity`` clamp the phase to ≥ 0 after every step;
    * ``object_bandlimit`` optimise a variable whose low-pass to the model's
      2/3-Nyquist antialias band is the volume (the data carry no information
      beyond the band; without it Adam fills that null space with noise);
    * ``refine_probe`` / ``refine_positions`` also optimise the model's
      trainable probe / positions (the model must have been built with
      ``learn_probe`` / ``learn_positions``);
    * ``tolerance`` stop when the relative change of the epoch loss stays
      below it for ``patience`` epochs (0 = never stop early);
    * ``schedule`` learning-rate schedule over the epochs: "constant" or
      "cosine" (annealed to 0 at the last epoch);
    * ``refine_affine`` also optimise the model's global scan affine (built with
      ``learn_affine``), at ``affine_learning_rate`` per step; while it is
      refined the position corrections are kept free of any linear part;
    * ``refine_amplitude`` optimise the object's amplitude too (a complex
      transmission exp(−a + iφ) with a ≥ 0: amplitude ≤ 1);
    * ``correction_start_epoch`` probe, position and affine corrections start
      at this epoch (the object settles first);
    * ``probe_support`` a refined probe keeps no amplitude outside the
      bright-field disc (the aperture plus one pixel);
    * ``object_lowpass`` σ_k (Å⁻¹) of a Gaussian low-pass on the object
      (a real-space blur of 1/(2π σ_k) Å; regularises low-dose data; 0 = off).
    """

    epochs: int = attrs.field(default=200, validator=positive)
    batch_size: int | None = attrs.field(default=None, validator=optional_positive)
    learning_rate: float = attrs.field(default=0.02, validator=positive)
    loss: str = attrs.field(default="amplitude", validator=one_of("amplitude", "intensity", "model"))
    l1_weight: float = attrs.field(default=0.0, validator=non_negative)
    positivity: bool = False
    object_bandlimit: bool = True
    refine_probe: bool = False
    refine_positions: bool = False
    probe_learning_rate: float = attrs.field(default=1e-3, validator=positive)
    positions_learning_rate: float = attrs.field(default=1e-3, validator=positive)
    tolerance: float = attrs.field(default=0.0, validator=non_negative)
    patience: int = attrs.field(default=10, validator=positive)
    schedule: str = attrs.field(default="constant", validator=one_of("constant", "cosine"))
    refine_affine: bool = False
    affine_learning_rate: float = attrs.field(default=1e-3, validator=positive)
    refine_amplitude: bool = False
    correction_start_epoch: int = attrs.field(default=0, validator=non_negative)
    probe_support: bool = True
    object_lowpass: float = attrs.field(default=0.0, validator=non_negative)


@attrs.frozen
class LbfgsParams:
    """Gradient reconstruction of the phase volume with L-BFGS (``multislice.lbfgs``).

    Full-batch quasi-Newton with a strong-Wolfe line search; ``batch_size``
    only splits the gradient evaluation over scan positions (to bound
    memory), the objective is always the full data set.
    ``iterations`` outer L-BFGS steps; ``history_size`` stored curvature
    pairs; other fields as for :class:`AdamParams`, except that
    ``object_bandlimit`` defaults to false: L-BFGS does not fill the null
    space with noise the way Adam does, and unconstrained it also fits the
    out-of-band part of the phase that reaches the data through exp(iφ).
    """

    iterations: int = attrs.field(default=50, validator=positive)
    batch_size: int | None = attrs.field(default=None, validator=optional_positive)
    learning_rate: float = attrs.field(default=1.0, validator=positive)
    history_size: int = attrs.field(default=20, validator=positive)
    max_evaluations_per_iteration: int = attrs.field(default=25, validator=positive)
    loss: str = attrs.field(default="amplitude", validator=one_of("amplitude", "intensity", "model"))
    l1_weight: float = attrs.field(default=0.0, validator=non_negative)
    positivity: bool = False
    object_bandlimit: bool = False
    tolerance: float = attrs.field(default=1e-10, validator=non_negative)


@attrs.frozen
class ReconstructParams:
    """Task ``multislice.reconstruct``: render a crystal, simulate its 4D-STEM
    data with the recipe's forward model, reconstruct with the recipe's
    refiner, and report depth-summed SSIM / PSNR.

    * ``structure`` CIF or any ase-readable file (recipe-relative or
      ``shared:...``), or omitted for the built-in test crystal
      (``builtin:srtio3``);
    * ``zone_axis`` crystal direction [uvw] put along the beam;
    * ``in_plane_rotation_deg`` extra rotation about the beam (degrees);
    * ``parametrization`` abTEM scattering-factor table ("lobato", "kirkland");
    * ``noise`` add Poisson noise at the model's dose to the simulated data.

    Measured data instead of a rendered crystal:

    * ``observation`` a 4D-STEM file (scan_y, scan_x, k_y, k_x) in counts,
      any format :func:`emverse.readers.read` opens (EMD, HDF5, DM4, MIB,
      TIFF, .npy + metadata table, Zarr); the structure is then not used;
    * calibrations, each replacing the file's value: ``beam_energy_kv`` (kV),
      ``convergence_semiangle_mrad`` (mrad), ``reciprocal_pixel_size``
      (Å⁻¹ per detector pixel), ``scan_step_angstrom`` (Å),
      ``scan_rotation_deg`` (deg, scan axes relative to the detector's);
      where neither file nor options give beam energy, semi-angle or scan
      step, the forward model's ``voltage_kv`` / ``semiangle_mrad`` /
      ``scan_step_angstrom`` are used; the reciprocal pixel size has no
      default. The forward model's voltage, semi-angle, sampling, scan and
      object shape are then set from the data (reported);
    * ``detector_binning`` model detector pixel ÷ measured pixel (1 = crop
      the centred ``probe_gpts`` window; 2 = bin 2 × 2; any ratio resamples);
    * ``object_padding_px`` vacuum margin (px) around the scanned area plus the
      probe window;
    * ``stream`` read patterns from disk a mini-batch at a time (datasets
      larger than memory; use with the refiner's ``batch_size``);
    * ``truth`` optional phase volume (.npy, depth × H × W on the model's
      grid, rad) of simulated "measured" data, for SSIM in the scanned area;
    * ``detector_transpose`` swap the detector axes (k_y ↔ k_x) of every
      pattern: a detector mirrored relative to the scan, which no scan
      rotation undoes.
    """

    structure: str = path_field("file", default="builtin:srtio3")
    zone_axis: tuple[int, int, int] = attrs.field(default=(0, 0, 1), converter=_to_tuple)
    in_plane_rotation_deg: float = 0.0
    parametrization: str = attrs.field(default="lobato", validator=one_of("lobato", "kirkland"))
    noise: bool = False
    save_volumes: bool = True
    observation: str = path_field("any", default="", reader="emverse.readers:check_4dstem")
    beam_energy_kv: float | None = attrs.field(default=None, validator=optional_positive)
    convergence_semiangle_mrad: float | None = attrs.field(default=None, validator=optional_positive)
    reciprocal_pixel_size: float | None = attrs.field(default=None, validator=optional_positive)
    scan_step_angstrom: float | None = attrs.field(default=None, validator=optional_positive)
    scan_rotation_deg: float | None = attrs.field(default=None, validator=_optional_finite)
    detector_binning: float = attrs.field(default=1.0, validator=positive)
    object_padding_px: int = attrs.field(default=8, validator=non_negative)
    stream: bool = False
    truth: str = path_field("file", default="")
    detector_transpose: bool = False


__all__ = [
    "PtychographyParams",
    "AdamParams",
    "LbfgsParams",
    "ReconstructParams",
]
