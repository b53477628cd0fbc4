"""The refinable hybrid model: structure (ASU) + thickness model + Bloch physics.

* :class:`RefinableStructure` — asymmetric-unit positions and ADPs with the
  space group kept. A position moves only inside its site-symmetry subspace
  (``x = x₀ + P δ`` with ``P = mean_{s ∈ site group} R_s``, the projector onto
  the fixed space), so atoms on special positions stay there. ADPs are
  ``U = L Lᵀ + εI`` (``L`` lower triangular, ε = 1e-6 Å², so ``U`` is
  positive definite), symmetrised over the site group
  (``mean R_c U R_cᵀ`` — an average of positive-definite matrices stays
  positive definite) and rotated onto every image in the cell.
  With ``hydrogens="riding"`` every H atom rides on its parent (the nearest
  non-H atom of the start model, symmetry images included): it moves with the
  parent's image (``x_H = x₀_H + P_H R (x_p − x₀_p)``, a fixed X–H vector) and
  takes ``U_iso(H) = k · U_eq(parent)``, k = 1.5 for O–H and methyl H, 1.2 otherwise
  (the usual SHELX/Olex2 riding constraint); its own position parameters are unused
  (its own ADP too, unless ``riding_adp=False``: then U(H) is refined freely).
* :class:`Ed3dForwardModel` — the physics as an emverse ForwardModel: the
  unknown is a batch of per-frame thicknesses (Å), the observation the
  reflections' tilt-integrated intensities (structure fixed).
* :class:`HybridEd3dModel` — what the refiners optimise: structure +
  thickness model t(θ) + per-frame scale (closed-form least squares on
  amplitudes) + optional per-frame orientation corrections.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse.parameter_space import Parameter, ParameterSpace
from torch import nn

from emverse_ed3d.metrics import amplitude_weights, optimal_frame_scale, wr_all

_TRIL = torch.tril_indices(3, 3)
ADP_FLOOR = 1e-6  # Å², keeps U strictly positive definite
HYDROGEN_MODES = ("free", "riding")
RIDING_MAX_BOND = 1.5  # Å: an H farther than this from every non-H atom has no parent to ride on
HYDROGEN_ELEMENTS = ("H", "D")


class SiteArrays:
    """Numpy view of a :class:`emverse.crystal.Crystal`'s asymmetric unit for the refinement:
    labels, elements, fractional positions (snapped onto their special positions), Cartesian U
    (Å²), occupancies, the operations as arrays and each site's site-symmetry operations."""

    def __init__(self, crystal: Crystal):
        self.crystal = crystal
        self.labels = tuple(s.label for s in crystal.sites)
        self.elements = tuple(s.element for s in crystal.sites)
        self.rotations = np.array([op.rotation for op in crystal.operations], dtype=float)
        self.translations = np.array([op.translation for op in crystal.operations], dtype=float)
        self.cell_matrix = crystal.lattice.T  # columns a, b, c (Å): r_cart = A @ x_frac
        self.site_ops = [crystal.site_symmetry(i) for i in range(len(crystal.sites))]
        frac = []
        for i, site in enumerate(crystal.sites):
            # the mean of the site-symmetry images lies exactly on the special position
            x = np.asarray(site.position, dtype=float)
            images = [self.rotations[k] @ x + self.translations[k] for k in self.site_ops[i]]
            frac.append(np.mean([y - np.round(y - x) for y in images], axis=0))
        self.frac = np.array(frac)
        self.u_cart = np.array([crystal.u_cartesian(s.u_cif) for s in crystal.sites])
        self.anisotropic = np.array([s.anisotropic for s in crystal.sites], dtype=bool)
        self.occupancy = np.array([s.occupancy for s in crystal.sites], dtype=float)

    @property
    def n_atoms(self) -> int:
        return len(self.labels)


def riding_parents(asu: SiteArrays) -> list[tuple[int, int, int, np.ndarray, float]]:
    """For every H atom of ``asu``: ``(h, parent, op, rotation, distance)`` — the nearest
    non-H atom over all space-group images and lattice translations (start model),
    the operation whose image is nearest, its rotation and the X–H distance (Å)."""
    A = asu.cell_matrix
    heavy = [j for j, el in enumerate(asu.elements) if el not in HYDROGEN_ELEMENTS]
    out = []
    for h, el in enumerate(asu.elements):
        if el not in HYDROGEN_ELEMENTS:
            continue
        if not heavy:
            raise EmverseError(f"atom {asu.labels[h]}: hydrogens = 'riding' needs non-H atoms to ride on")
        best = (np.inf, -1, -1)
        for j in heavy:
            images = np.einsum("sij,j->si", asu.rotations, asu.frac[j]) + asu.translations  # (S, 3)
            d = images - asu.frac[h]
            d = d - np.round(d)
            dist = np.linalg.norm(d @ A.T, axis=1)
            s = int(np.argmin(dist))
            if dist[s] < best[0]:
                best = (float(dist[s]), j, s)
        dist, j, s = best
        if dist > RIDING_MAX_BOND:
            raise EmverseError(
                f"atom {asu.labels[h]}: nearest non-H atom ({asu.labels[j]}) is {dist:.2f} Å away "
                f"(> {RIDING_MAX_BOND} Å), so it has no parent to ride on; fix the H position or set "
                "hydrogens = 'free'"
            )
        out.append((h, j, s, asu.rotations[s], dist))
    return out


class RefinableStructure(nn.Module):
    """The asymmetric unit of a :class:`~emverse.crystal.Crystal` as refinable tensors (see the
    module docstring); ``crystal`` keeps the cell, symmetry and expansion."""

    def __init__(self, crystal: Crystal, *, anisotropic: bool | None = None, hydrogens: str = "free",
                 riding_adp: bool = True, dtype=torch.float64):
        super().__init__()
        if hydrogens not in HYDROGEN_MODES:
            raise EmverseError(f"hydrogens = {hydrogens!r} is unknown; use one of {HYDROGEN_MODES}")
        asu = SiteArrays(crystal)
        self.crystal = crystal
        self.asu = asu
        self.elements = list(asu.elements)
        A = asu.cell_matrix
        A_inv = np.linalg.inv(A)
        self.register_buffer("A", torch.as_tensor(A, dtype=dtype))
        self.register_buffer("x0", torch.as_tensor(asu.frac, dtype=dtype))
        max_site = max(len(ops) for ops in asu.site_ops)
        site_stack = np.zeros((asu.n_atoms, max_site, 3, 3))
        site_count = np.zeros(asu.n_atoms)
        projectors = []
        for i, site in enumerate(asu.site_ops):
            projectors.append(np.mean([asu.rotations[s] for s in site], axis=0))
            for k, s in enumerate(site):
                site_stack[i, k] = A @ asu.rotations[s] @ A_inv
            site_count[i] = len(site)
        # the expansion of the crystal: atom m = R_m x_{site(m)} + t_m
        op_rot = crystal.atom_rotation
        self.register_buffer("projector", torch.as_tensor(np.array(projectors), dtype=dtype))
        self.register_buffer("site_rot_cart", torch.as_tensor(site_stack, dtype=dtype))
        self.register_buffer("site_count", torch.as_tensor(site_count, dtype=dtype))
        self.register_buffer("op_rot", torch.as_tensor(op_rot, dtype=dtype))
        self.register_buffer("op_rot_cart", torch.as_tensor(np.array([A @ R @ A_inv for R in op_rot]), dtype=dtype))
        self.register_buffer("op_trans", torch.as_tensor(crystal.atom_translation, dtype=dtype))
        self.register_buffer("op_atom", torch.as_tensor(crystal.atom_site, dtype=torch.long))
        self.register_buffer("occupancy", torch.as_tensor(asu.occupancy, dtype=dtype))
        self.cell_elements = list(crystal.atom_elements)
        self.anisotropic = bool(asu.anisotropic.any()) if anisotropic is None else bool(anisotropic)
        self.delta = nn.Parameter(torch.zeros(asu.n_atoms, 3, dtype=dtype))
        self.hydrogens = hydrogens
        self.riding_adp = bool(riding_adp)
        self._setup_riding(asu, hydrogens, projectors, dtype)
        self.set_adp(torch.as_tensor(asu.u_cart, dtype=dtype))

    def _setup_riding(self, asu, hydrogens, projectors, dtype) -> None:
        rides = riding_parents(asu) if hydrogens == "riding" else []
        self.riding = [(asu.labels[h], asu.labels[p], dist) for h, p, _s, _R, dist in rides]
        h_per_parent = np.bincount([r[1] for r in rides], minlength=asu.n_atoms)
        factors = []
        for _h, p, _s, _R, _d in rides:
            methyl = asu.elements[p] == "C" and h_per_parent[p] >= 3
            factors.append(1.5 if asu.elements[p] == "O" or methyl else 1.2)
        self.register_buffer("ride_h", torch.as_tensor([r[0] for r in rides], dtype=torch.long))
        self.register_buffer("ride_parent", torch.as_tensor([r[1] for r in rides], dtype=torch.long))
        # x_H = x₀_H + P_H R (x_p − x₀_p): P_H keeps an H on a special position on it
        ride_map = np.array([projectors[h] @ R for h, _p, _s, R, _d in rides]).reshape(-1, 3, 3)
        self.register_buffer("ride_map", torch.as_tensor(ride_map, dtype=dtype))
        self.register_buffer("ride_u_factor", torch.as_tensor(factors, dtype=dtype))
        free = torch.ones(asu.n_atoms, dtype=torch.bool)
        free[self.ride_h] = False
        self.register_buffer("free_atoms", free)

    def refined_crystal(self, name: str | None = None) -> Crystal:
        """The current parameters as a :class:`~emverse.crystal.Crystal` (positions, U; the
        sites keep their anisotropic flag when the refinement is anisotropic)."""
        from dataclasses import replace

        frac = self.frac_asu().detach().cpu().numpy()
        u_cif = self.crystal.u_cif(self.u_asu().detach().cpu().numpy())
        sites = tuple(replace(s, position=frac[i], u_cif=u_cif[i], anisotropic=self.anisotropic)
                      for i, s in enumerate(self.crystal.sites))
        return Crystal(self.crystal.cell_lengths, self.crystal.cell_angles, sites, self.crystal.operations,
                       name=name or self.crystal.name, spacegroup=self.crystal.spacegroup)

    # ------------------------------------------------------------------ ADPs
    def set_adp(self, u_cart: torch.Tensor) -> None:
        """Set the ADP parameters from Cartesian tensors (N, 3, 3) (Å²)."""
        u_cart = 0.5 * (u_cart + u_cart.transpose(-1, -2))
        eye = torch.eye(3, dtype=u_cart.dtype, device=u_cart.device)
        u_cart = u_cart - ADP_FLOOR * eye
        if self.anisotropic:
            L = torch.linalg.cholesky(u_cart)
            self.adp = nn.Parameter(L[:, _TRIL[0], _TRIL[1]].clone())
        else:
            u_iso = torch.diagonal(u_cart, dim1=-2, dim2=-1).mean(-1).clamp_min(0)
            self.adp = nn.Parameter(torch.sqrt(u_iso).unsqueeze(-1))

    def u_asu(self) -> torch.Tensor:
        """Site-symmetric, positive-definite Cartesian ADPs of the ASU atoms (N, 3, 3), Å².

        ``U = L Lᵀ + ε I`` (ε = 1e-6 Å² keeps it strictly positive definite), averaged over
        the site-symmetry group (``mean R_c U R_cᵀ``, still positive definite).
        """
        n = self.x0.shape[0]
        eye = torch.eye(3, dtype=self.adp.dtype, device=self.adp.device)
        if self.anisotropic:
            L = torch.zeros(n, 3, 3, dtype=self.adp.dtype, device=self.adp.device)
            L[:, _TRIL[0], _TRIL[1]] = self.adp
            U = L @ L.transpose(-1, -2) + ADP_FLOOR * eye
            sym = torch.einsum("nkij,njl,nkml->nkim", self.site_rot_cart, U, self.site_rot_cart)
            U = sym.sum(1) / self.site_count[:, None, None]
        else:
            U = (self.adp**2 + ADP_FLOOR)[:, :, None] * eye
        if self.ride_h.numel() and self.riding_adp:
            u_eq = torch.diagonal(U[self.ride_parent], dim1=-2, dim2=-1).mean(-1)
            U = U.index_copy(0, self.ride_h, (self.ride_u_factor * u_eq)[:, None, None] * eye)
        return U

    # ------------------------------------------------------------ positions
    def frac_asu(self) -> torch.Tensor:
        x = self.x0 + torch.einsum("nij,nj->ni", self.projector, self.delta)
        if self.ride_h.numel():
            shift = torch.einsum("hij,hj->hi", self.ride_map, x[self.ride_parent] - self.x0[self.ride_parent])
            x = x.index_copy(0, self.ride_h, self.x0[self.ride_h] + shift)
        return x

    def cell_atoms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit-cell fractional positions (M, 3), Cartesian ADPs (M, 3, 3), occupancies (M,)."""
        x = self.frac_asu()[self.op_atom]
        frac = torch.einsum("mij,mj->mi", self.op_rot, x) + self.op_trans
        U = self.u_asu()[self.op_atom]
        U = self.op_rot_cart @ U @ self.op_rot_cart.transpose(-1, -2)
        return frac, U, self.occupancy[self.op_atom]

    @torch.no_grad()
    def perturb(self, max_shift_angstrom: float, generator: torch.Generator) -> None:
        """Move every atom by a random shift, uniform in [−Δ, Δ] Å per Cartesian
        component, projected onto its site-symmetry subspace (special positions kept).
        Riding H atoms move with their parents (their own shifts are drawn but unused)."""
        n = self.x0.shape[0]
        shift_cart = (torch.rand(n, 3, generator=generator, dtype=self.x0.dtype) * 2 - 1) * max_shift_angstrom
        shift_frac = torch.linalg.solve(self.A, shift_cart.T).T
        shift = torch.einsum("nij,nj->ni", self.projector, shift_frac) * self.free_atoms[:, None]
        self.delta.add_(shift)

    def parameters_dict(self) -> dict[str, torch.Tensor]:
        return {"frac_asu": self.frac_asu().detach(), "u_asu": self.u_asu().detach()}


class Ed3dForwardModel(ForwardModel):
    """Bloch-wave 3D-ED intensities of fixed atoms as a function of per-frame thickness.

    ``forward(x)``: ``x`` (batch, F) thicknesses in Å -> (batch, N) tilt-integrated
    intensities of the N observed reflections (incident beam = 1, unscaled).
    The structure is held by ``physics.structure`` (refined by :class:`HybridEd3dModel`).
    """

    def __init__(self, physics=None, *, t_min: float = 10.0, t_max: float = 2000.0, settings=None):
        super().__init__()
        #: the recipe's ``[forward_model]`` table (:class:`~emverse_ed3d.params.DynamicalParams`)
        self.settings = settings
        self.physics = None
        if physics is not None:
            self.bind(physics, t_min=t_min, t_max=t_max)

    @classmethod
    def from_params(cls, params, ctx=None) -> Ed3dForwardModel:
        """``ed3d.dynamical``: the settings, bound to data by the task (:meth:`bind`)."""
        return cls(settings=params)

    def physics_options(self, *, synthetic: bool) -> dict:
        """The settings as :func:`~emverse_ed3d.problem.build_model` keywords (``n_tilts`` and
        the rocking thickness are the task's to resolve: they depend on the data)."""
        p = self.settings
        return dict(absorption=p.absorption, g_max=p.g_max, sg_max=p.sg_max, rocking_target=p.rocking_target,
                    rocking_semi_angle_deg=p.rocking_semi_angle_deg or None,
                    rsg_max=None if synthetic else (p.rsg_max or None), method=p.method,
                    bucket_ratio=p.bucket_ratio, bethe_sg=p.bethe_sg,
                    solve_precision=p.solve_precision)

    def bind(self, physics, *, t_min: float = 10.0, t_max: float = 2000.0) -> Ed3dForwardModel:
        """Attach the physics built for the data's frames and the refined structure."""
        self.physics = physics
        self.structure = physics.structure
        self.parameter_space = ParameterSpace(
            [Parameter(f"thickness_{f}", "Å", t_min, t_max) for f in range(physics.n_frames)]
        )
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.physics is None:
            raise RuntimeError("this ed3d.dynamical forward model is not bound to data yet; call bind(physics)")
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[1] != self.physics.n_frames:
            raise ValueError(
                f"thickness batch has shape {tuple(x.shape)}; give (batch, {self.physics.n_frames}) in Å"
            )
        return torch.stack([self.physics.intensities(t) for t in x]).to(x.dtype)


class HybridEd3dModel(nn.Module):
    """Structure + thickness model + physics + per-frame scale, refined against (I, σ).

    ``theta_rad`` (F,) is the goniometer angle of each frame (the ThicknessNN input);
    ``frame_index`` (N,) the frame of each reflection (0-based).
    """

    def __init__(self, physics, thickness_model: nn.Module, theta_rad: np.ndarray, frame_index: np.ndarray,
                 intensity: np.ndarray, sigma: np.ndarray, *, instability: float = 0.01,
                 kinematical: bool = False):
        super().__init__()
        self.physics = physics
        self.structure = physics.structure
        self.thickness_model = thickness_model
        self.kinematical = kinematical
        dtype = self.structure.x0.dtype
        self.register_buffer("theta", torch.as_tensor(theta_rad, dtype=dtype))
        self.register_buffer("frame_index", torch.as_tensor(frame_index, dtype=torch.long))
        self.register_buffer("i_obs", torch.as_tensor(intensity, dtype=dtype))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=dtype))
        self.instability = instability
        f_obs, w = amplitude_weights(self.i_obs, self.sigma, instability)
        self.register_buffer("f_obs", f_obs)
        self.register_buffer("weight", w)
        self.n_frames = physics.n_frames
        # per-frame corrective rotations, left-multiplied onto the PETS2 orientation (lab frame):
        # a fixed part (Nelder–Mead prepass, earlier refinement stages) times small rotations by
        # refinable angles (α, β, ω) about lab x, y, z (rad; no gradient unless requires_grad is set)
        self.register_buffer("orientation_delta", torch.eye(3, dtype=dtype).repeat(self.n_frames, 1, 1))
        self.orientation_angles = nn.Parameter(torch.zeros(self.n_frames, 3, dtype=dtype), requires_grad=False)
        # log κ of the proportional absorption, when the physics has one (no gradient unless requires_grad is set)
        kappa = float(getattr(physics, "options", {}).get("absorption", 0.0))
        self.log_absorption = (nn.Parameter(torch.tensor(math.log(kappa), dtype=dtype), requires_grad=False)
                               if kappa > 0 else None)

    def absorption(self) -> torch.Tensor | None:
        """κ = U'/U (dimensionless), or None without absorption."""
        return None if self.log_absorption is None else self.log_absorption.exp()

    def thickness(self) -> torch.Tensor:
        return self.thickness_model(self.theta)

    def orientation_correction(self) -> torch.Tensor:
        """(F, 3, 3) corrective rotations: R(angles) · orientation_delta."""
        return small_rotations(self.orientation_angles) @ self.orientation_delta

    def unscaled(self) -> torch.Tensor:
        return self.physics.intensities(self.thickness(), orientation_delta=self.orientation_correction(),
                                        kinematical=self.kinematical, absorption=self.absorption())

    def scales(self, i_calc: torch.Tensor) -> torch.Tensor:
        return optimal_frame_scale(self.f_obs, torch.sqrt(i_calc.clamp_min(0)), self.weight,
                                   self.frame_index, self.n_frames)

    def calculated(self) -> torch.Tensor:
        """Scaled calculated intensities of every reflection (N,)."""
        i_calc = self.unscaled()
        return self.scales(i_calc)[self.frame_index] ** 2 * i_calc

    def loss(self, i_calc: torch.Tensor | None = None) -> torch.Tensor:
        if i_calc is None:
            i_calc = self.calculated()
        return wr_all(i_calc, self.i_obs, self.sigma, self.instability)

    def frame_wr(self, frame: int, rotation: torch.Tensor | None = None) -> float:
        """wR(all) of one frame with an optional corrective rotation (no gradients)."""
        with torch.no_grad():
            delta = self.orientation_correction().clone()
            if rotation is not None:
                delta[frame] = rotation.to(delta.dtype)
            i_calc = self.physics.intensities(self.thickness(), orientation_delta=delta, frames=[frame],
                                              kinematical=self.kinematical, absorption=self.absorption())
            rows = self.frame_index == frame
            f_calc = torch.sqrt(i_calc.clamp_min(0))
            w2 = self.weight[rows] ** 2
            k = (w2 * self.f_obs[rows] * f_calc).sum() / (w2 * f_calc**2).sum().clamp_min(1e-30)
            return float(wr_all(k**2 * i_calc, self.i_obs[rows], self.sigma[rows], self.instability))


def small_rotations(angles_rad: torch.Tensor) -> torch.Tensor:
    """R = R_z(ω) R_y(β) R_x(α) for angles (..., 3) = (α, β, ω) in rad (paper §4.3)."""
    from emverse_bloch.geometry import rotation_x, rotation_y, rotation_z

    return rotation_z(angles_rad[..., 2]) @ rotation_y(angles_rad[..., 1]) @ rotation_x(angles_rad[..., 0])


def check_reflections_in_range(hkl: np.ndarray, reciprocal: np.ndarray, g_max: float) -> np.ndarray:
    """Mask of reflections with |g| ≤ g_max (Å⁻¹)."""
    g = np.linalg.norm(np.asarray(hkl) @ np.asarray(reciprocal).T, axis=1)
    return g <= g_max + 1e-9


def frame_orientations(data, cell) -> tuple[np.ndarray, np.ndarray]:
    """Crystal-Cartesian -> lab rotations of each PETS frame, and the lab rotation axes.

    ``M_i = R_z(ω) R_x(α) R_y(β) U₀`` with ``U₀`` the rotation part (polar
    decomposition) of ``UB·B⁻¹``; the goniometer axis of frame i is ``R_z(ω) x̂``.
    Checked in the tests against the zone axes the file lists.
    """
    from emverse_bloch.geometry import rotation_x, rotation_y, rotation_z

    B = reciprocal_columns(cell)
    M0 = data.ub @ np.linalg.inv(B)
    u, _, vt = np.linalg.svd(M0)
    U0 = u @ vt
    if np.linalg.det(U0) < 0:
        raise EmverseError(f"{data.source}: UB·B⁻¹ is not a proper rotation; the UB matrix or cell is wrong")
    fr = data.frames
    rz = rotation_z(torch.as_tensor(np.radians(fr.omega_deg), dtype=torch.float64)).numpy()
    rx = rotation_x(torch.as_tensor(np.radians(fr.alpha_deg), dtype=torch.float64)).numpy()
    ry = rotation_y(torch.as_tensor(np.radians(fr.beta_deg), dtype=torch.float64)).numpy()
    orientations = rz @ rx @ ry @ U0
    axes = rz[:, :, 0]
    return orientations, axes


def cell_columns(cell) -> np.ndarray:
    """Direct basis a, b, c as columns (Å), a along x and b in the xy plane (ASE's setting,
    as :class:`emverse.crystal.Crystal`): r_cart = A @ x_frac."""
    from ase.geometry import cellpar_to_cell

    return np.asarray(cellpar_to_cell(list(cell)), dtype=float).T


def reciprocal_columns(cell) -> np.ndarray:
    """Reciprocal basis a*, b*, c* as columns (Å⁻¹, no 2π): g_cart = B @ hkl."""
    return np.linalg.inv(cell_columns(cell)).T
