"""``multislice.ptychography``: the multislice 4D-STEM forward model.

x: phase volumes (B, depth, H, W) in radians (or complex transmissions of
the same shape) → y: diffraction stacks (B, n_scan, kH, kW), each pattern the
fftshifted |FFT_ortho ψ_exit|² of a probe normalised to Σ_k|Ψ|² = 1.

Per scan position and object: the probe, shifted to the position by a
Fourier phase ramp, is multiplied by each slice's transmission
t_n = exp(i·φ_n) (band-limited at 2/3 Nyquist, as in abTEM) and propagated
by the slice thickness. With ``probe_gpts`` omitted the probe window is the
whole object, periodic (exactly abTEM's set-up); with a smaller window the
object is cropped around each position (integer part of the shift) and the
probe carries the sub-pixel remainder.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse.noise import NoNoise, PoissonNoise
from torch import nn

from emverse_multislice.electron import wavelength_angstrom
from emverse_multislice.probe import (
    aperture,
    centred_scan_origin,
    phase_ramp,
    probe_fourier,
    probe_mode_set,
    scan_grid,
    shifted_probes,
    source_offsets,
)
from emverse_multislice.propagation import (
    antialias_aperture,
    bandlimit,
    far_field_intensity,
    fresnel_propagator,
    multislice,
)


def _complex_of(real_dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def _real_of(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.complex128, torch.float64):
        return torch.float64
    return torch.float32


class MultislicePtychography(ForwardModel):
    """Differentiable multislice 4D-STEM simulator (see the module docstring).

    Parameters are those of :class:`emverse_multislice.params.PtychographyParams`
    (units in the names: kV, mrad, Å, e⁻/Å²). Keyword-only extras:

    * ``positions_angstrom`` (n_scan, 2) scan positions (Å, rows then columns,
      measured from the object's corner pixel centre) overriding the scan grid;
    * ``probe`` a complex Fourier-space probe (kH, kW), centred on k = 0,
      overriding the one built from the optics parameters.

    ``forward(x, scan_indices=None)``: ``scan_indices`` (LongTensor) selects a
    subset of scan positions (mini-batches); the result then has
    ``len(scan_indices)`` patterns per object.
    """

    def __init__(
        self,
        voltage_kv: float = 300.0,
        semiangle_mrad: float = 21.4,
        defocus_angstrom: float = 0.0,
        cs_angstrom: float = 0.0,
        soft_aperture: bool = True,
        sampling_angstrom: float = 0.2,
        slice_thickness_angstrom: float = 1.6,
        object_shape: tuple[int, int, int] = (8, 64, 64),
        probe_gpts: tuple[int, int] | None = None,
        scan_shape: tuple[int, int] = (8, 8),
        scan_step_angstrom: float = 0.512,
        scan_origin_angstrom: tuple[float, float] | None = None,
        propagator: str = "paraxial",
        antialias: bool = True,
        propagate_last_slice: bool = True,
        dose_e_per_angstrom2: float | None = None,
        learn_probe: bool = False,
        learn_positions: bool = False,
        positions_per_pass: int | None = 256,
        probe_modes: int = 1,
        scan_affine=((1.0, 0.0), (0.0, 1.0)),
        learn_affine: bool = False,
        detector_blur_px: float = 0.0,
        source_size_angstrom: float = 0.0,
        source_points: int = 3,
        *,
        positions_angstrom: torch.Tensor | None = None,
        probe: torch.Tensor | None = None,
    ):
        self._check_inputs(
            voltage_kv=voltage_kv,
            semiangle_mrad=semiangle_mrad,
            sampling_angstrom=sampling_angstrom,
            slice_thickness_angstrom=slice_thickness_angstrom,
            scan_step_angstrom=scan_step_angstrom,
            dose_e_per_angstrom2=dose_e_per_angstrom2,
        )
        object_shape = tuple(int(n) for n in object_shape)
        if len(object_shape) != 3 or any(n <= 0 for n in object_shape):
            raise EmverseError(
                f"object_shape {object_shape!r} must be three positive integers (depth, H, W)"
            )
        probe_gpts = object_shape[1:] if probe_gpts is None else tuple(int(n) for n in probe_gpts)
        if len(probe_gpts) != 2 or any(
            n <= 0 or n > m for n, m in zip(probe_gpts, object_shape[1:], strict=False)
        ):
            raise EmverseError(
                f"probe_gpts {probe_gpts!r} does not fit the object's lateral grid "
                f"{object_shape[1:]!r} (object_shape {object_shape!r}); give a window no larger "
                "than the object, or omit probe_gpts to use the whole object"
            )
        if propagator not in ("paraxial", "angular_spectrum"):
            raise EmverseError(
                f"propagator {propagator!r} is unknown; use 'paraxial' or 'angular_spectrum'"
            )

        step_area = float(scan_step_angstrom) ** 2
        noise = (
            NoNoise()
            if dose_e_per_angstrom2 is None
            else PoissonNoise(float(dose_e_per_angstrom2) * step_area)
        )
        super().__init__(noise=noise)

        self.voltage_kv = float(voltage_kv)
        self.semiangle_mrad = float(semiangle_mrad)
        self.defocus_angstrom = float(defocus_angstrom)
        self.cs_angstrom = float(cs_angstrom)
        self.sampling_angstrom = float(sampling_angstrom)
        self.slice_thickness_angstrom = float(slice_thickness_angstrom)
        self.object_shape = object_shape
        self.probe_gpts = probe_gpts
        self.periodic = probe_gpts == object_shape[1:]
        self.propagator_kind = propagator
        self.antialias = bool(antialias)
        self.propagate_last_slice = bool(propagate_last_slice)
        self.dose_e_per_angstrom2 = dose_e_per_angstrom2
        if positions_per_pass is not None and int(positions_per_pass) <= 0:
            raise EmverseError(
                f"positions_per_pass must be a positive integer or omitted, got {positions_per_pass!r}"
            )
        self.positions_per_pass = None if positions_per_pass is None else int(positions_per_pass)
        self.wavelength_angstrom = wavelength_angstrom(voltage_kv)
        self.extent_angstrom = tuple(n * self.sampling_angstrom for n in object_shape[1:])

        if int(probe_modes) < 1:
            raise EmverseError(f"probe_modes must be a positive integer, got {probe_modes!r}")
        for name, value in (("detector_blur_px", detector_blur_px), ("source_size_angstrom", source_size_angstrom)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise EmverseError(f"{name} must be a number >= 0, got {value!r}")
        if int(source_points) < 1:
            raise EmverseError(f"source_points must be a positive integer, got {source_points!r}")
        affine = torch.as_tensor(scan_affine, dtype=torch.float64).detach().clone()
        if affine.shape != (2, 2) or not torch.isfinite(affine).all() or abs(float(torch.linalg.det(affine))) < 1e-6:
            raise EmverseError(
                f"scan_affine must be an invertible 2 × 2 matrix [[a, b], [c, d]], got {scan_affine!r}"
            )
        self.probe_modes = int(probe_modes)
        self.detector_blur_px = float(detector_blur_px)
        self.source_size_angstrom = float(source_size_angstrom)
        self.source_points = int(source_points) if source_size_angstrom > 0 else 1

        # scan positions (Å): centre + A·(nominal − centre) + offset
        if positions_angstrom is None:
            if scan_origin_angstrom is None:
                scan_origin_angstrom = centred_scan_origin(
                    scan_shape, scan_step_angstrom, self.extent_angstrom
                )
            positions = scan_grid(scan_shape, scan_step_angstrom, scan_origin_angstrom)
            self.scan_shape = tuple(int(n) for n in scan_shape)
        else:
            positions = torch.as_tensor(positions_angstrom, dtype=torch.float64).detach().clone()
            if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] == 0:
                raise EmverseError(
                    f"positions_angstrom must have shape (n_scan, 2) in Å, got {tuple(positions.shape)}"
                )
            self.scan_shape = (positions.shape[0], 1)
        self.register_buffer("nominal_positions", positions)
        self.register_buffer("scan_centre", positions.mean(dim=0))
        offsets = torch.zeros_like(positions)
        if learn_positions:
            self.position_offsets = nn.Parameter(offsets)
        else:
            self.register_buffer("position_offsets", offsets)
        if learn_affine:
            self.scan_affine = nn.Parameter(affine)
        else:
            self.register_buffer("scan_affine", affine)
        self._check_positions(self.positions_angstrom.detach())

        # probe (Fourier space, centred on k = 0), stored as real (kH, kW, 2)
        if probe is None:
            probe = probe_fourier(
                probe_gpts,
                self.sampling_angstrom,
                voltage_kv,
                semiangle_mrad,
                defocus_angstrom=defocus_angstrom,
                cs_angstrom=cs_angstrom,
                soft_aperture=soft_aperture,
            )
        else:
            probe = torch.as_tensor(probe).to(torch.complex128).detach().clone()
            if tuple(probe.shape) != probe_gpts:
                raise EmverseError(
                    f"probe has shape {tuple(probe.shape)} but the probe window (probe_gpts) is "
                    f"{probe_gpts}; give a Fourier-space probe of that shape"
                )
        # the bright-field disc: where the probe may carry amplitude (the aperture plus one pixel)
        disc = aperture(probe_gpts, self.sampling_angstrom, voltage_kv,
                        semiangle_mrad + 1e3 * self.wavelength_angstrom / (min(probe_gpts) * self.sampling_angstrom),
                        soft=False)
        self.register_buffer("probe_support", disc, persistent=False)
        probe = probe_mode_set(probe, self.probe_modes, self.sampling_angstrom)
        probe_real = torch.view_as_real(probe).contiguous()  # (modes, kH, kW, 2)
        if learn_probe:
            self.probe_fourier_ri = nn.Parameter(probe_real)
        else:
            self.register_buffer("probe_fourier_ri", probe_real)

        # fixed operators (float64/complex128; cast to the input's precision in forward)
        self.register_buffer(
            "propagator",
            fresnel_propagator(
                probe_gpts,
                self.sampling_angstrom,
                self.slice_thickness_angstrom,
                self.wavelength_angstrom,
                kind=propagator,
                antialias=self.antialias,
            ),
            persistent=False,
        )
        self.register_buffer(
            "object_aperture",
            antialias_aperture(object_shape[1:], self.sampling_angstrom),
            persistent=False,
        )
        offsets, weights = source_offsets(self.source_size_angstrom, self.source_points)
        self.register_buffer("source_offsets", offsets, persistent=False)
        self.register_buffer("source_weights", weights, persistent=False)
        # detector point-spread: a Gaussian of σ = detector_blur_px pixels (transfer function)
        fy = torch.fft.fftfreq(probe_gpts[0], dtype=torch.float64)[:, None]
        fx = torch.fft.fftfreq(probe_gpts[1], dtype=torch.float64)[None, :]
        blur = torch.exp(-2 * math.pi**2 * self.detector_blur_px**2 * (fy**2 + fx**2))
        self.register_buffer("detector_transfer", blur, persistent=False)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_inputs(**values):
        for name, value in values.items():
            if name == "dose_e_per_angstrom2" and value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise EmverseError(
                    f"{name} must be a positive number, got {value!r}; "
                    f"give e.g. {_EXAMPLES.get(name, 1.0)}"
                )

    def _check_positions(self, positions: torch.Tensor):
        if not torch.isfinite(positions).all():
            raise EmverseError("scan positions must be finite numbers (Å)")
        s = self.sampling_angstrom
        h, w = self.object_shape[1:]
        if self.periodic:
            low = torch.zeros(2, dtype=positions.dtype)
            high = torch.tensor([h * s, w * s], dtype=positions.dtype)
            bad = ((positions < low) | (positions > high)).any(dim=1)
            where = f"the object's field of view [0, {h * s:g}] × [0, {w * s:g}] Å"
        else:
            corner = self._window_corner(positions)
            kh, kw = self.probe_gpts
            bad = (
                (corner[:, 0] < 0)
                | (corner[:, 1] < 0)
                | (corner[:, 0] + kh > h)
                | (corner[:, 1] + kw > w)
            )
            where = (
                f"the object ({h}×{w} px at {s:g} Å) with a {kh}×{kw} px probe window "
                "around each position"
            )
        if bad.any():
            index = int(torch.nonzero(bad)[0, 0])
            first = tuple(round(float(v), 4) for v in positions[index])
            raise EmverseError(
                f"scan position {index} at {first} Å lies outside {where} "
                f"({int(bad.sum())} of {positions.shape[0]} positions do); shrink scan_shape or "
                "scan_step_angstrom, move scan_origin_angstrom, or enlarge object_shape"
            )

    def _window_corner(self, positions: torch.Tensor) -> torch.Tensor:
        """Top-left object pixel of each position's probe window (n, 2) long."""
        half = torch.tensor([n // 2 for n in self.probe_gpts], dtype=torch.long, device=positions.device)
        return torch.floor(positions.detach() / self.sampling_angstrom).long() - half

    def check_input(self, x: torch.Tensor):
        """Raise a clear error unless ``x`` is a (B, depth, H, W) batch matching ``object_shape``."""
        if not isinstance(x, torch.Tensor):
            raise EmverseError(f"x must be a torch.Tensor (B, depth, H, W), got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.object_shape:
            raise EmverseError(
                f"x has shape {tuple(x.shape)} but the model expects (B, {', '.join(map(str, self.object_shape))}) "
                f"(object_shape = (depth, H, W) = {self.object_shape} at "
                f"{self.slice_thickness_angstrom:g} Å × {self.sampling_angstrom:g} Å voxels); "
                "render the volume on that grid or build the model with matching object_shape"
            )

    # -------------------------------------------------------------- properties
    @property
    def n_scan(self) -> int:
        return int(self.nominal_positions.shape[0])

    @property
    def positions_angstrom(self) -> torch.Tensor:
        """Scan positions (n_scan, 2) in Å: centre + A·(nominal − centre) + offsets, with A the
        global scan affine (``scan_affine``) and the offsets the per-position corrections."""
        relative = self.nominal_positions - self.scan_centre
        return self.scan_centre + relative @ self.scan_affine.T + self.position_offsets

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """(n_scan, kH, kW) of one object's diffraction stack."""
        return (self.n_scan, *self.probe_gpts)

    @property
    def probe_modes_fourier(self) -> torch.Tensor:
        """The mixed-state probe (modes, kH, kW), complex, Fourier space, centred on k = 0;
        the diffraction pattern is the sum of the modes' intensities."""
        return torch.view_as_complex(self.probe_fourier_ri)

    @property
    def probe_fourier(self) -> torch.Tensor:
        """The first (dominant) probe mode (kH, kW); with one mode, the probe."""
        return self.probe_modes_fourier[0]

    def probe_wave(self) -> torch.Tensor:
        """Real-space probe (kH, kW) at the window centre (for display)."""
        centre = torch.tensor(
            [[(n // 2) * self.sampling_angstrom for n in self.probe_gpts]],
            dtype=torch.float64,
            device=self.probe_fourier_ri.device,
        )
        return shifted_probes(self.probe_fourier.detach(), centre, self.sampling_angstrom)[0]

    def detector_angles_mrad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scattering angles (mrad) along the two detector axes (fftshifted order)."""
        out = []
        for n in self.probe_gpts:
            k = torch.fft.fftshift(torch.fft.fftfreq(n, d=self.sampling_angstrom, dtype=torch.float64))
            out.append(k * self.wavelength_angstrom * 1e3)
        return tuple(out)

    # ------------------------------------------------------------------ physics
    def transmission(self, x: torch.Tensor) -> torch.Tensor:
        """Complex transmission (B, depth, H, W): exp(i·x) for real x, x itself when complex;
        band-limited at 2/3 Nyquist when ``antialias``."""
        if x.is_complex():
            t = x
        else:
            t = torch.polar(torch.ones_like(x), x)
        if self.antialias:
            t = bandlimit(t, self.object_aperture.to(_real_of(x.dtype)))
        return t

    def exit_waves(self, x: torch.Tensor, scan_indices: torch.Tensor | None = None,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Exit waves (B, n, modes, kH, kW) for the selected scan positions (or for
        ``positions`` (n, 2) in Å, given directly)."""
        self.check_input(x)
        real = _real_of(x.dtype)
        cplx = _complex_of(real)
        t = self.transmission(x).to(cplx)
        if positions is None:
            positions = self.positions_angstrom
            if scan_indices is not None:
                scan_indices = torch.as_tensor(scan_indices, dtype=torch.long, device=positions.device)
                positions = positions[scan_indices]
        probe = self.probe_modes_fourier.to(cplx)
        s = self.sampling_angstrom
        if self.periodic:
            waves = _shifted_modes(probe, positions.to(real), s)[None]  # (1, n, M, H, W)
            slices = t[:, :, None, None]  # (B, D, 1, 1, H, W)
        else:
            corner = self._window_corner(positions)
            kh, kw = self.probe_gpts
            h, w = self.object_shape[1:]
            if bool(
                (corner < 0).any() | (corner[:, 0] + kh > h).any() | (corner[:, 1] + kw > w).any()
            ):
                raise EmverseError(
                    "a (refined) scan position moved the probe window outside the object; "
                    "lower positions_learning_rate or enlarge object_shape"
                )
            shifts = positions.to(real) - corner.to(real) * s
            waves = _shifted_modes(probe, shifts, s)[None]  # (1, n, M, kH, kW)
            rows = corner[:, 0, None] + torch.arange(kh, device=corner.device)  # (n, kH)
            cols = corner[:, 1, None] + torch.arange(kw, device=corner.device)  # (n, kW)
            slices = t[:, :, rows[:, :, None], cols[:, None, :]][:, :, :, None]  # (B, D, n, 1, kH, kW)
        propagator = self.propagator.to(cplx)
        return multislice(
            waves,
            slices.unbind(dim=1),
            propagator,
            propagate_last_slice=self.propagate_last_slice,
        )

    def forward(self, x: torch.Tensor, scan_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Diffraction intensities (B, n_scan, kH, kW), dtype = x's real precision.

        Without autograd (simulation) the positions are processed
        ``positions_per_pass`` at a time to bound memory; with autograd all
        requested positions go at once (choose ``scan_indices`` mini-batches).
        """
        chunk = self.positions_per_pass
        n = self.n_scan if scan_indices is None else len(scan_indices)
        if chunk is None or torch.is_grad_enabled() or n <= chunk:
            return self._intensities(x, scan_indices)
        indices = (
            torch.arange(self.n_scan) if scan_indices is None else torch.as_tensor(scan_indices).cpu()
        )
        return torch.cat([self._intensities(x, part) for part in indices.split(chunk)], dim=1)

    def _intensities(self, x: torch.Tensor, scan_indices) -> torch.Tensor:
        """Σ over probe modes (and source points) of the far-field intensity, then the
        detector's blur: (B, n, kH, kW)."""
        if self.source_size_angstrom == 0:
            intensity = far_field_intensity(self.exit_waves(x, scan_indices)).sum(dim=2)
        else:
            positions = self.positions_angstrom
            if scan_indices is not None:
                positions = positions[torch.as_tensor(scan_indices, dtype=torch.long, device=positions.device)]
            n, k = positions.shape[0], self.source_offsets.shape[0]
            spread = (positions[:, None, :] + self.source_offsets[None]).reshape(n * k, 2)
            waves = self.exit_waves(x, positions=spread)
            intensity = far_field_intensity(waves).sum(dim=2).unflatten(1, (n, k))
            intensity = (intensity * self.source_weights.to(intensity.dtype)[:, None, None]).sum(dim=2)
        if self.detector_blur_px > 0:
            # a circular convolution commutes with the fftshift: blur the shifted pattern directly
            transfer = self.detector_transfer.to(intensity.dtype)
            intensity = torch.fft.ifft2(torch.fft.fft2(intensity) * transfer).real
        return intensity

    # --------------------------------------------------------------- utilities
    def example_input(self, batch: int, generator: torch.Generator | None = None, dtype=torch.float64):
        """Random weak-phase volumes (batch, depth, H, W), phases uniform in [0, 0.3] rad."""
        return 0.3 * torch.rand((batch, *self.object_shape), generator=generator, dtype=dtype)

    @classmethod
    def from_params(cls, params, ctx=None):
        import attrs

        return cls(**attrs.asdict(params, recurse=False))

    def extra_repr(self) -> str:
        return (
            f"voltage_kv={self.voltage_kv}, semiangle_mrad={self.semiangle_mrad}, "
            f"object_shape={self.object_shape}, probe_gpts={self.probe_gpts}, "
            f"n_scan={self.n_scan}, sampling_angstrom={self.sampling_angstrom}, "
            f"slice_thickness_angstrom={self.slice_thickness_angstrom}, propagator={self.propagator_kind!r}, "
            f"probe_modes={self.probe_modes}"
        )


def _shifted_modes(modes: torch.Tensor, shifts: torch.Tensor, sampling: float) -> torch.Tensor:
    """Real-space probe modes (n, M, H, W) at each shift (n, 2) Å from Fourier modes (M, H, W)."""
    gpts = tuple(modes.shape[-2:])
    ramp = phase_ramp(shifts, gpts, sampling)  # (n, H, W)
    return torch.fft.ifft2(modes[None] * ramp[:, None], norm="ortho")


_EXAMPLES = {
    "voltage_kv": 300.0,
    "semiangle_mrad": 21.4,
    "sampling_angstrom": 0.2,
    "slice_thickness_angstrom": 1.6,
    "scan_step_angstrom": 0.512,
    "dose_e_per_angstrom2": 1e5,
}

__all__ = ["MultislicePtychography"]
