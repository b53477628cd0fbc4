"""Digital large-angle CBED (D-LACBED) discs by Bloch waves, with absorption.

A D-LACBED data set (Beanland et al., Acta Cryst. A 69 (2013) 427) holds one
disc image per reflection g; every image is a map of I_g over the *same* grid of
incident-beam directions. So one Bloch solve per pixel gives every disc at that
pixel (as in Felix): pixel (row i, column j) of an n × n image is the incident
direction with tangential wave vector (Å⁻¹, no 2π)

    k_t = δ R(φ) (−(i − c − Δ_row), (j − c − Δ_col))     in the lab (x, y) frame,

c = (n − 1)/2, δ the reciprocal pixel size (Å⁻¹/px), φ a small pattern
rotation, Δ the pattern centre offset (px). The lab frame is Felix's: z along
the zone axis [uvw] (the beam), x along the crystal direction ``x_direction``
(image up, −row), y = z × x (image right, +column). Disc g lights up where
S_g = −(2 k_t·g + |g|²)/(2K) = 0, on the line k_t·ĝ = −|g|/2.

The beams are the zero-order-Laue-zone reflections with |g| ≤ g_max (Felix's
``holz_flag = 0``), one set for all directions. The structure matrix is the
Hermitian one of :mod:`emverse_bloch.structure_matrix` plus iU' from
:mod:`emverse_bloch.absorption`; it is then not Hermitian, so propagation uses a
general eigendecomposition with its own backward pass (:class:`GeneralPropagation`).
The surface normal is the zone axis, so the metric M_g is 1 for every ZOLZ beam.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.electron import potential_prefactor, wavelength_angstrom
from emverse.errors import EmverseError

from emverse_bloch.absorption import bird_king_potential, check_model
from emverse_bloch.geometry import check_zone_axis, hkl_sphere
from emverse_bloch.structure_factors import StructureParameters, structure_factors
from emverse_bloch.structure_matrix import CouplingTable, structure_matrix


def _sin_over(z: torch.Tensor) -> torch.Tensor:
    """sin(z)/z for complex z, smooth through 0."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z * z / 6, torch.sin(safe) / safe)


class GeneralPropagation(torch.autograd.Function):
    """ψ[..., t, :] = V exp(i s_t Λ) V⁻¹ e_0 for a diagonalisable complex A (..., N, N).

    Backward: the Daleckii–Krein adjoint for non-normal A,
    grad_A = V⁻ᴴ [(a ⊗ c̄) ∘ D̄] Vᴴ with a = Vᴴ G, c = V⁻¹ e_0 and the divided
    differences D_ij = (e^{isλ_i} − e^{isλ_j})/(λ_i − λ_j)
    = is e^{is(λ_i+λ_j)/2} sin(s(λ_i−λ_j)/2)/(s(λ_i−λ_j)/2), finite at degeneracy.
    """

    @staticmethod
    def forward(ctx, matrix, s):
        eigenvalues, vectors = torch.linalg.eig(matrix)
        n = matrix.shape[-1]
        e0 = torch.zeros(*matrix.shape[:-2], n, 1, dtype=matrix.dtype, device=matrix.device)
        e0[..., 0, 0] = 1.0
        c = torch.linalg.solve(vectors, e0)[..., 0]  # V⁻¹ e_0, (..., N)
        phase = torch.exp(1j * s[..., :, None].to(matrix.dtype) * eigenvalues[..., None, :])
        psi = torch.einsum("...ij,...tj->...ti", vectors, phase * c[..., None, :])
        ctx.save_for_backward(eigenvalues, vectors, c, s)
        return psi

    @staticmethod
    def backward(ctx, grad_psi):
        eigenvalues, vectors, c, s = ctx.saved_tensors
        grad_matrix = grad_s = None
        st = s.to(vectors.dtype)
        if ctx.needs_input_grad[1]:
            exp = torch.exp(1j * st[..., :, None] * eigenvalues[..., None, :])
            dpsi = torch.einsum("...ij,...tj->...ti", vectors, 1j * eigenvalues[..., None, :] * exp
                                * c[..., None, :])
            grad_s = (grad_psi.conj() * dpsi).real.sum(-1)
        if ctx.needs_input_grad[0]:
            a = torch.einsum("...ji,...tj->...ti", vectors.conj(), grad_psi)  # Vᴴ G_t
            li = eigenvalues[..., None, :, None]
            lj = eigenvalues[..., None, None, :]
            s3 = st[..., :, None, None]
            divided = 1j * s3 * torch.exp(0.5j * s3 * (li + lj)) * _sin_over(0.5 * s3 * (li - lj))
            inner = (divided.conj() * a[..., :, :, None] * c.conj()[..., None, None, :]).sum(-3)
            inv_h = torch.linalg.inv(vectors).conj().transpose(-1, -2)
            grad_matrix = inv_h @ inner @ vectors.conj().transpose(-1, -2)
        return grad_matrix, grad_s


def propagate_general(matrix: torch.Tensor, thickness: torch.Tensor, wavenumber: float) -> torch.Tensor:
    """Beam amplitudes (..., T, N) at thicknesses (..., T) Å for a complex (absorbing) matrix."""
    thickness = torch.as_tensor(thickness, dtype=matrix.real.dtype, device=matrix.device)
    if torch.any(thickness.detach() < 0):
        raise EmverseError(f"thickness {thickness.detach().min().item():.4g} Å is negative; give >= 0 Å")
    s = thickness * (math.pi / wavenumber)
    batch = torch.broadcast_shapes(matrix.shape[:-2], s.shape[:-1])
    return GeneralPropagation.apply(matrix.expand(*batch, *matrix.shape[-2:]), s.expand(*batch, s.shape[-1]))


def lab_frame(crystal: Crystal, zone_axis, x_direction) -> np.ndarray:
    """Rows x, y, z (3, 3): z ∥ [uvw] (beam), x ∥ ``x_direction`` [uvw] made ⊥ z, y = z × x."""
    z = crystal.direction_vector(check_zone_axis(zone_axis))
    z = z / np.linalg.norm(z)
    x = crystal.direction_vector(check_zone_axis(x_direction))
    x = x - (x @ z) * z
    if np.linalg.norm(x) < 1e-6:
        raise EmverseError(f"x_direction {list(x_direction)} is parallel to zone_axis {list(zone_axis)}; "
                           "give a direction in the image plane (Felix's x_direction)")
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def zolz_beams(crystal: Crystal, zone_axis, g_max: float, include=()) -> np.ndarray:
    """Zero-order-Laue-zone reflections (N, 3) with |g| ≤ g_max Å⁻¹, 000 first, ``include`` added."""
    uvw = np.asarray(check_zone_axis(zone_axis))
    hkl = hkl_sphere(crystal, g_max)
    hkl = hkl[hkl @ uvw == 0]
    include = [tuple(int(v) for v in h) for h in include]
    for h in include:
        if int(np.dot(h, uvw)) != 0:
            raise EmverseError(f"reflection {list(h)} is not in the zero-order Laue zone of "
                               f"[{' '.join(map(str, uvw))}] (h·uvw = {int(np.dot(h, uvw))}); remove it")
    known = {tuple(h) for h in hkl}
    extra = [h for h in include if h not in known and h != (0, 0, 0)]
    if extra:
        hkl = np.concatenate([hkl, np.asarray(extra, dtype=np.int64)])
    g2 = np.einsum("ij,ij->i", crystal.g_vectors(hkl), crystal.g_vectors(hkl))
    order = np.argsort(g2, kind="stable")
    return hkl[order].astype(np.int64)


class LacbedSimulator(torch.nn.Module):
    """Physics only: (thickness, B per element, incident k_t) -> I_g of the listed discs.

    ``reflections``: the disc hkl (D, 3) in output order; ``absorption``: "none",
    "proportional" (U' = κU, κ = ``absorption_fraction``) or "bird_king".
    ``forward(thickness (T,) Å, b_iso {element: Å²}, k_t (P, 2) Å⁻¹, positions (S, 3) or None)
    -> (P, T, D)``.
    The beams must lie in the zero-order Laue zone (g_z = 0 in the lab frame).
    ``n_strong_beams`` > 0: per direction, only the beams of the pool (|g| ≤ g_max) with the
    smallest |S_g| enter the matrix, the direct beam and the disc reflections always (Felix's
    strong-beam selection, without its Bethe correction of the weak ones); 0: the whole pool.
    """

    def __init__(self, crystal: Crystal, voltage_kv: float, zone_axis, x_direction, reflections,
                 g_max: float = 2.0, absorption: str = "bird_king", absorption_fraction: float = 0.1,
                 parametrization: str = "lobato", beams=None, frame=None, n_strong_beams: int = 0):
        super().__init__()
        self.n_strong_beams = int(n_strong_beams)
        self.fixed_selection: torch.Tensor | None = None
        self.crystal = crystal
        self.voltage_kv = float(voltage_kv)
        self.absorption = check_model(absorption)
        self.absorption_fraction = float(absorption_fraction)
        self.parametrization = parametrization
        self.reflections = np.asarray(reflections, dtype=np.int64).reshape(-1, 3)
        # ``beams``/``frame`` (optional) impose another code's beam set and lab frame, for comparisons
        self.beams = (np.asarray(beams, dtype=np.int64) if beams is not None
                      else zolz_beams(crystal, zone_axis, g_max, include=self.reflections))
        index = {tuple(h): i for i, h in enumerate(self.beams)}
        self.disc_beam = torch.as_tensor([index[tuple(h)] for h in self.reflections])
        self.couplings = CouplingTable(self.beams)
        wavelength = wavelength_angstrom(voltage_kv)
        f0 = structure_factors(crystal, np.zeros((1, 3)), parametrization=parametrization)
        u0 = float(f0.real[0]) * potential_prefactor(voltage_kv) / crystal.volume
        self.wavenumber = math.sqrt(1.0 / wavelength**2 + u0)  # mean-inner-potential corrected K (Å⁻¹)
        frame = np.asarray(frame) if frame is not None else lab_frame(crystal, zone_axis, x_direction)
        g_lab = crystal.g_vectors(self.beams) @ frame.T
        self.register_buffer("g_plane", torch.as_tensor(g_lab[:, :2], dtype=torch.float64))
        self.frame = frame

    @property
    def n_beams(self) -> int:
        return len(self.beams)

    def potential(self, b_iso: dict[str, torch.Tensor], positions: torch.Tensor | None = None):
        """(U + iU' table (M,) complex Å⁻², U'_0 real Å⁻²) for isotropic B per element (Å²) and
        asymmetric-unit fractional ``positions`` (S, 3) (default: the crystal's)."""
        ref = next(iter(b_iso.values()))
        dtype = ref.dtype
        base = StructureParameters.from_crystal(self.crystal, dtype=dtype)
        if positions is not None:
            base = StructureParameters(positions, base.u_cif, base.occupancy)
        b_site = torch.stack([b_iso[s.element] for s in self.crystal.sites])
        u_cif = StructureParameters.isotropic_u(self.crystal, b_site / (8 * math.pi**2))
        structure = StructureParameters(base.positions, u_cif, base.occupancy)
        f = structure_factors(self.crystal, self.couplings.hkl, structure, self.parametrization)
        u = f * (potential_prefactor(self.voltage_kv) / self.crystal.volume)
        zero = self.couplings.zero
        if self.absorption == "none":
            return u, torch.zeros((), dtype=dtype)
        if self.absorption == "proportional":
            u_abs = self.absorption_fraction * u
        else:
            u_abs = bird_king_potential(self.crystal, self.couplings.hkl, base.positions, b_iso,
                                        self.voltage_kv, self.parametrization)
        return u + 1j * u_abs, u_abs[zero].real

    def forward(self, thickness: torch.Tensor, b_iso: dict[str, torch.Tensor], k_t: torch.Tensor,
                positions: torch.Tensor | None = None):
        dtype = k_t.dtype
        table, u_abs0 = self.potential(b_iso, positions)
        couplings = self.couplings.gather(table)  # (N, N)
        g = self.g_plane.to(dtype)
        excitation = -(2 * k_t @ g.T + (g**2).sum(-1)) / (2 * self.wavenumber)  # (P, N) Å⁻¹
        thickness = torch.as_tensor(thickness, dtype=dtype).reshape(1, -1).expand(len(k_t), -1)
        if 0 < self.n_strong_beams < self.n_beams:
            selected = self.fixed_selection
            if selected is None or selected.shape[0] != len(k_t):
                selected = self.strong_beams(excitation.detach())  # (P, n), direct beam first
            rows = selected[:, :, None].expand(-1, -1, selected.shape[1])
            cols = selected[:, None, :].expand(-1, selected.shape[1], -1)
            sub = couplings[rows, cols]
            matrix = structure_matrix(sub, excitation.gather(1, selected), self.wavenumber, None,
                                      u_abs0.expand(len(k_t)))
            psi = propagate_general(matrix, thickness, self.wavenumber)  # (P, T, n)
            intensity = psi.real**2 + psi.imag**2
            full = torch.zeros(*intensity.shape[:2], self.n_beams, dtype=dtype)
            full = full.scatter(-1, selected[:, None, :].expand(-1, intensity.shape[1], -1), intensity)
            return full[..., self.disc_beam]
        matrix = structure_matrix(couplings[None], excitation, self.wavenumber, None,
                                  u_abs0.expand(len(k_t)))
        psi = propagate_general(matrix, thickness, self.wavenumber)  # (P, T, N)
        picked = psi[..., self.disc_beam]
        return picked.real**2 + picked.imag**2

    def fix_strong_beams(self, k_t: torch.Tensor | None) -> None:
        """Keep the strong-beam sets chosen at directions ``k_t`` (P, 2) Å⁻¹ for later calls (None:
        choose per call again). A refinement fixes them so the loss stays smooth when small
        geometry changes would swap a beam in or out."""
        if k_t is None:
            self.fixed_selection = None
            return
        g = self.g_plane.to(k_t.dtype)
        excitation = -(2 * k_t.detach() @ g.T + (g**2).sum(-1)) / (2 * self.wavenumber)
        self.fixed_selection = self.strong_beams(excitation)

    def strong_beams(self, excitation: torch.Tensor) -> torch.Tensor:
        """Indices (P, n_strong_beams) of the beams nearest the Ewald sphere per direction, the
        direct beam first and every disc reflection included."""
        priority = excitation.abs().clone()
        priority[:, self.disc_beam] = -1.0
        priority[:, 0] = -2.0
        order = torch.argsort(priority, dim=-1)[:, : self.n_strong_beams]
        return torch.sort(order, dim=-1).values  # beam 0 stays first


def pixel_grid(n: int, dtype=torch.float64) -> torch.Tensor:
    """(n², 2) image coordinates (row, column) relative to the image centre (n − 1)/2, in px."""
    axis = torch.arange(n, dtype=dtype) - (n - 1) / 2
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], -1)


def incident_tangential(pixels: torch.Tensor, pixel_size: torch.Tensor, centre: torch.Tensor,
                        rotation_rad: torch.Tensor) -> torch.Tensor:
    """k_t (P, 2) Å⁻¹ in the lab (x, y) frame for pixels (P, 2) (row, column) px; see module doc."""
    rel = pixels - centre
    x, y = -rel[:, 0], rel[:, 1]
    c, s = torch.cos(rotation_rad), torch.sin(rotation_rad)
    return pixel_size * torch.stack([c * x - s * y, s * x + c * y], -1)


def gaussian_blur(images: torch.Tensor, sigma_px: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """Separable Gaussian blur of (D, n, n) images with σ (px), reflect padding; σ → 0 is identity."""
    radius = min(radius, images.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    sigma = torch.clamp(sigma_px, min=1e-3)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = images[:, None]
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.reshape(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(x, kernel.reshape(1, 1, -1, 1))
    return x[:, 0]


def disc_correlation(prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation (Pearson r) per disc, (D,), of (D, n, n) images."""
    p = prediction.reshape(len(prediction), -1)
    o = observation.reshape(len(observation), -1)
    p = p - p.mean(-1, keepdim=True)
    o = o - o.mean(-1, keepdim=True)
    return (p * o).sum(-1) / torch.sqrt((p * p).sum(-1) * (o * o).sum(-1) + 1e-300)


def scale_and_background(prediction: torch.Tensor, observation: torch.Tensor):
    """Per-disc least-squares scale a and background b (D,) with observation ≈ a·prediction + b."""
    p = prediction.reshape(len(prediction), -1)
    o = observation.reshape(len(observation), -1)
    pm, om = p.mean(-1, keepdim=True), o.mean(-1, keepdim=True)
    a = ((p - pm) * (o - om)).sum(-1) / ((p - pm) ** 2).sum(-1).clamp_min(1e-300)
    return a, om[:, 0] - a * pm[:, 0]


def profile_negative_log_likelihood(prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    """−log L with independent Gaussian pixel noise, per-disc σ, scale and background profiled out:
    Σ_d (N_d/2) log(RSS_d/N_d), RSS_d = N_d var(y_d)(1 − r_d²)."""
    n = prediction[0].numel()
    r = disc_correlation(prediction, observation)
    o = observation.reshape(len(observation), -1)
    var = o.var(-1, unbiased=False)
    return (0.5 * n * torch.log(var * (1 - r**2).clamp_min(1e-12))).sum()


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` × ``factor`` blocks (the image side must be a multiple of ``factor``)."""
    n0, n1 = image.shape
    return image.reshape(n0 // factor, factor, n1 // factor, factor).mean((1, 3))
