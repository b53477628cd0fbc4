"""Differentiable Bloch-wave intensities of 3D-ED virtual frames (torch).

Physics (units Å, Å⁻¹; EQUATIONS.md §C):

* electron structure factor ``U_g = γ/(π Ω) Σ_j occ_j f_e,j(|g|) exp(−2π² gᵀU_j g) exp(−2πi g·r_j)``
  (Å⁻²), ``f_e`` from the Lobato–Van Dyck parametrisation, ``γ`` the Lorentz factor;
* beam along −z of the laboratory frame, ``K = 1/λ``; excitation error
  ``S_g = (K² − |K + g|²)/(2K) = (2K g_z − g²)/(2K)`` with ``g`` in the lab frame;
* Hermitian structure matrix ``A_ii = 2K S_gi``, ``A_ij = U_{g_i − g_j}``;
  amplitudes ``ψ(t) = exp(iπλt A) e₀`` (matrix exponential: robust against
  the degenerate eigenvalues of exact zone axes, unlike an ``eigh`` backward);
* a virtual frame integrates ``|ψ_g|²`` over ``n_tilts`` orientations spread
  uniformly over ``±θ_semi`` about the goniometer axis (the frame's
  ``R_z(ω) x``) for continuous rotation, or over a precession cone
  ``R_z(φ) R_x(θ) R_z(−φ)`` for precession data.

The beam set of a frame is fixed across its tilts: every g with
``|g| ≤ g_max`` whose excitation error gets below ``sg_max`` somewhere in the
frame's tilt range, plus every reflection observed in the frame. Frames are
padded to a common beam count with decoupled dummy beams (zero coupling), so
all frames and tilts are solved in one batched matrix exponential.

This module is the plugin's own Bloch engine. emverse-bloch (built in
parallel) is meant to provide the same functional API; ``tests`` compare
the two where both are installed.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

import numpy as np
import torch
from emverse.errors import EmverseError

ELECTRON_REST_KEV = 510.99895


def lorentz_factor_from_wavelength(wavelength_angstrom: float) -> float:
    # λ = h/p, γ = sqrt(1 + (p/(m0 c))²) ; h/(m0 c) = 0.0242631 Å (Compton wavelength)
    compton = 0.024263102367
    return math.sqrt(1.0 + (compton / wavelength_angstrom) ** 2)


@cache
def _lobato_table() -> dict:
    text = resources.files("emverse_ed3d").joinpath("data/lobato_subset.json").read_text()
    return json.loads(text)


def lobato_parameters(element: str) -> np.ndarray:
    table = _lobato_table()
    if element not in table:
        known = sorted(k for k in table if not k.startswith("_"))
        raise EmverseError(f"no electron scattering factor for element {element!r}; known: {', '.join(known)}")
    return np.asarray(table[element], dtype=float)  # (2, 5): rows a, b


def electron_scattering_factor(elements, g_norm: torch.Tensor) -> torch.Tensor:
    """f_e (Å) for each element at |g| (Å⁻¹): shape (n_elements, *g_norm.shape)."""
    params = torch.as_tensor(
        np.stack([lobato_parameters(e) for e in elements]), dtype=g_norm.dtype, device=g_norm.device
    )
    a = params[:, 0].reshape(len(elements), 5, *([1] * g_norm.dim()))
    b = params[:, 1].reshape(len(elements), 5, *([1] * g_norm.dim()))
    k2 = (g_norm**2).unsqueeze(0).unsqueeze(0)
    return (a * (2 + b * k2) / (1 + b * k2) ** 2).sum(dim=1)


def rotation_x(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*angle.shape, 3, 3)


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*angle.shape, 3, 3)


def rotation_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*angle.shape, 3, 3)


def structure_factors(
    hkl: torch.Tensor,
    reciprocal: torch.Tensor,
    frac: torch.Tensor,
    u_cart: torch.Tensor,
    elements: list[str],
    occupancy: torch.Tensor,
    volume: float,
    gamma: float,
) -> torch.Tensor:
    """Complex ``U_g`` (Å⁻²) for integer ``hkl`` (M, 3) from unit-cell atoms.

    ``frac`` (N, 3) fractional positions, ``u_cart`` (N, 3, 3) Cartesian ADPs
    (Å²), ``reciprocal`` (3, 3) with columns a*, b*, c* (Å⁻¹).
    """
    hkl_f = hkl.to(frac.dtype)
    g_cart = hkl_f @ reciprocal.T  # (M, 3)
    g_norm = g_cart.norm(dim=-1)
    species = sorted(set(elements))
    f_species = electron_scattering_factor(species, g_norm)  # (S, M)
    index = torch.tensor([species.index(e) for e in elements], device=frac.device)
    f_atoms = f_species[index]  # (N, M)
    debye_waller = torch.exp(-2 * math.pi**2 * torch.einsum("mi,nij,mj->nm", g_cart, u_cart, g_cart))
    phase = -2 * math.pi * (frac @ hkl_f.T)  # (N, M)
    amplitude = occupancy[:, None] * f_atoms * debye_waller
    real = (amplitude * torch.cos(phase)).sum(0)
    imag = (amplitude * torch.sin(phase)).sum(0)
    return torch.complex(real, imag) * (gamma / (math.pi * volume))


class FrameGeometry:
    """Beam sets and tilt rotations of a list of virtual frames (fixed, no grad).

    ``orientations`` (F, 3, 3): crystal-Cartesian -> lab rotation at each
    frame centre; ``axes`` (F, 3): the lab rotation axis of each frame.
    """

    def __init__(
        self,
        reciprocal: np.ndarray,
        orientations: np.ndarray,
        axes: np.ndarray,
        wavelength_angstrom: float,
        semi_angle_deg: np.ndarray,
        observed_hkl: list[np.ndarray],
        *,
        g_max: float = 1.6,
        sg_max: float = 0.01,
        n_tilts: int = 5,
        precession: bool = False,
        max_beams: int | None = None,
    ):
        self.reciprocal = np.asarray(reciprocal, float)
        self.wavelength = float(wavelength_angstrom)
        self.k0 = 1.0 / self.wavelength
        self.n_frames = len(orientations)
        self.n_tilts = int(n_tilts)
        self.precession = precession
        self.orientations = np.asarray(orientations, float)
        self.axes = np.asarray(axes, float)
        self.semi_angle = np.radians(np.asarray(semi_angle_deg, float))
        self.tilts = self._tilt_rotations()  # (F, T, 3, 3)
        lattice = self._lattice_points(g_max)
        beams_per_frame = []
        for f in range(self.n_frames):
            obs = np.asarray(observed_hkl[f], int).reshape(-1, 3)
            g_lab = np.einsum("tij,jk,nk->tni", self.tilts[f], self.orientations[f] @ self.reciprocal, lattice)
            s_g = (2 * self.k0 * g_lab[..., 2] - (g_lab**2).sum(-1)) / (2 * self.k0)
            near = (np.abs(s_g) < sg_max).any(axis=0)
            chosen = lattice[near]
            if max_beams is not None and len(chosen) > max_beams:
                order = np.argsort(np.abs(s_g).min(axis=0)[near])
                chosen = chosen[order[:max_beams]]
            beams = {tuple(h) for h in chosen.tolist()} | {tuple(h) for h in obs.tolist()}
            beams.discard((0, 0, 0))
            beams_per_frame.append(np.array([(0, 0, 0)] + sorted(beams), dtype=int))
        self.beams = beams_per_frame
        self.n_beams = np.array([len(b) for b in beams_per_frame])
        nb = int(self.n_beams.max())
        self.padded = np.zeros((self.n_frames, nb, 3), dtype=int)
        self.mask = np.zeros((self.n_frames, nb), dtype=bool)
        for f, b in enumerate(beams_per_frame):
            self.padded[f, : len(b)] = b
            self.mask[f, : len(b)] = True
        # every difference g_i - g_j a structure matrix needs, as one unique list
        diffs = self.padded[:, :, None, :] - self.padded[:, None, :, :]
        flat = diffs.reshape(-1, 3)
        self.unique_diff, inverse = np.unique(flat, axis=0, return_inverse=True)
        self.diff_index = inverse.reshape(self.n_frames, nb, nb)
        # lookup from an observed hkl to its beam slot in its frame
        self._slot = [{tuple(h): i for i, h in enumerate(b.tolist())} for b in beams_per_frame]

    def _lattice_points(self, g_max: float) -> np.ndarray:
        B = self.reciprocal
        limits = [int(math.ceil(g_max / (1.0 / np.linalg.norm(np.linalg.inv(B)[k])))) + 1 for k in range(3)]
        ranges = [np.arange(-n, n + 1) for n in limits]
        grid = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
        g = grid @ B.T
        return grid[np.linalg.norm(g, axis=1) <= g_max]

    def _tilt_rotations(self) -> np.ndarray:
        T = self.n_tilts
        out = np.zeros((self.n_frames, T, 3, 3))
        for f in range(self.n_frames):
            theta = self.semi_angle[f]
            if self.precession:
                phis = np.linspace(0, 2 * np.pi, T, endpoint=False)
                for t, phi in enumerate(phis):
                    rz = _np_rz(phi)
                    out[f, t] = rz @ _np_rx(theta) @ rz.T
            else:
                steps = np.linspace(-theta, theta, T) if T > 1 else np.zeros(1)
                for t, a in enumerate(steps):
                    out[f, t] = _axis_angle(self.axes[f], a)
        return out

    def slots(self, frame: int, hkl: np.ndarray) -> np.ndarray:
        table = self._slot[frame]
        return np.array([table[tuple(h)] for h in np.asarray(hkl, int).tolist()], dtype=int)


def _np_rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _np_rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _axis_angle(axis, angle):
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def frame_intensities(
    geometry: FrameGeometry,
    u_diff: torch.Tensor,
    thickness: torch.Tensor,
    *,
    frames: np.ndarray | None = None,
    orientation_delta: torch.Tensor | None = None,
    kinematical: bool = False,
) -> torch.Tensor:
    """Tilt-integrated intensities ``(F, n_beams_max)`` (incident beam = 1).

    ``u_diff`` holds ``U_g`` (complex, Å⁻²) for ``geometry.unique_diff``;
    ``thickness`` (F,) in Å; ``frames`` selects a subset of frames (rows);
    ``orientation_delta`` (F, 3, 3) optionally left-multiplies each frame's
    orientation (small corrective rotations from orientation refinement).
    ``kinematical=True`` returns ``|π λ t U_g|²·sinc²(π t S_g)``-free first
    Born amplitudes ``|πλ t U_g|²`` averaged over tilts with the excitation
    error — used only for testing the weak-scattering limit.
    """
    if frames is None:
        frames = np.arange(geometry.n_frames)
    frames = np.asarray(frames, dtype=int)
    dtype = u_diff.real.dtype
    device = u_diff.device
    B = torch.as_tensor(geometry.reciprocal, dtype=dtype, device=device)
    orient = torch.as_tensor(geometry.orientations[frames], dtype=dtype, device=device)
    if orientation_delta is not None:
        orient = orientation_delta.to(dtype) @ orient
    tilts = torch.as_tensor(geometry.tilts[frames], dtype=dtype, device=device)  # (F, T, 3, 3)
    hkl = torch.as_tensor(geometry.padded[frames], dtype=dtype, device=device)  # (F, nb, 3)
    mask = torch.as_tensor(geometry.mask[frames], device=device)
    g_lab = torch.einsum("ftij,fjk,kl,fnl->ftni", tilts, orient, B, hkl)
    k0 = geometry.k0
    s_g = (2 * k0 * g_lab[..., 2] - (g_lab**2).sum(-1)) / (2 * k0)  # (F, T, nb)
    coupling = u_diff[torch.as_tensor(geometry.diff_index[frames], device=device)]  # (F, nb, nb)
    pair_mask = (mask[:, :, None] & mask[:, None, :]).to(coupling.dtype)
    eye = torch.eye(coupling.shape[-1], dtype=torch.bool, device=device)
    coupling = torch.where(eye, torch.zeros_like(coupling), coupling * pair_mask)
    t = thickness.to(dtype).reshape(-1, 1, 1, 1)
    if kinematical:
        # first-order (Born) amplitude with excitation error: ψ_g = iπλ U_g t sinc(π t S_g)·e^{...}
        arg = math.pi * thickness.to(dtype)[:, None, None] * s_g
        sinc = torch.where(arg.abs() < 1e-8, torch.ones_like(arg), torch.sin(arg) / arg)
        amp = (math.pi * geometry.wavelength * thickness.to(dtype)[:, None, None]) * coupling[:, None, :, 0].abs() * sinc
        intensity = amp**2
    else:
        diag = torch.diag_embed((2 * k0 * s_g * mask[:, None, :]).to(coupling.dtype))
        A = coupling[:, None] + diag  # (F, T, nb, nb)
        propagator = torch.linalg.matrix_exp(1j * math.pi * geometry.wavelength * t * A)
        intensity = propagator[..., :, 0].abs() ** 2
    return intensity.mean(dim=1) * mask
