"""3D-ED reflection intensities by Bloch waves at arbitrary orientation (``bloch.ed3d``).

Functional API (what emverse-ed3d calls; every tensor argument may require grad)
=================================================================================

Two steps, so the beam bookkeeping (numpy, no gradients) is done once and the
differentiable part can be called in every optimisation step::

    from emverse_bloch.crystal import Crystal
    from emverse_bloch.structure_factors import StructureParameters
    from emverse_bloch.ed3d import plan_frames, frame_intensities, select_reflections

    crystal = Crystal.from_cif("quartz.cif")
    plan = plan_frames(
        crystal,
        orientations,              # (F, 3, 3) crystal Cartesian -> lab, beam along +z lab
        hkl, frame_index,          # (M, 3) int, (M,) int: the observed reflections, frame of each
        voltage_kv=200.0,
        g_max=1.5,                 # Å⁻¹, beams in the Bloch matrix: |g| <= g_max ...
        sg_max=0.02,               # Å⁻¹ ... and |S_g| <= sg_max at some sub-orientation
        rocking_semi_angle_deg=0.5, n_sub_orientations=5,   # rocking / precession integration
        quadrature="mean",         # or "trapezoid": half weight at the ends of the rocking range
        integration="rocking",     # or "precession"
        absorption=0.0,            # κ: U' = κ U (proportional absorption); needs method="expm"
        parametrization="lobato",  # or "kirkland"
        overrides=None,            # Overrides([(1, 0, 0), ...]) : free F of named reflections
    )
    intensities = frame_intensities(
        plan,
        thickness,                 # (F,) or (B, F) Å, a tensor (a network may supply it)
        structure=StructureParameters.from_crystal(crystal),  # positions (…,S,3), u_cif (…,S,3,3) Å², occupancy (…,S)
        orientations=None,         # (F, 3, 3) tensor to refine orientations; None: the planned ones
        scale=None,                # (F,) or (B, F) per-frame scale; None: 1
        override_values=None,      # (…, K) F in Å for plan.overrides
        mode="dynamical",          # or "kinematical"
        method="eig",              # or "expm"; with absorption "expm" (exact) or "eig_absorptive" (first order)
    )                              # -> (M,) or (B, M): integrated intensity of each observed reflection

Geometry: the orientation matrix R maps crystal Cartesian vectors (``Crystal.lattice``
rows, Å) to the lab frame in which the beam travels along +z, so g_lab = R g.
Sub-orientations are Q_k R with Q_k = R_x(θ_k), θ_k = linspace(−θ, θ, n)
(rocking about the lab x axis, the goniometer axis) or
Q_k = R_z(φ_k) R_x(θ) R_z(−φ_k), φ_k = 2πk/n (precession). The integrated
intensity is the *mean* over the n sub-orientations of |ψ_g|² (fractions of
the incident beam), times the frame's scale. The thickness is the path length
along the beam (Å); the surface normal is taken along the beam for every
sub-orientation. Each frame has its own beam set (padded to a common size with
decoupled dummy beams); every requested reflection is in its frame's beam set.

``mode="kinematical"`` gives the first-order (single-scattering) intensities with
the same geometry: (π t |U_g| M_g / K)² sinc²(π S_g M_g² t), sinc(x) = sin x / x.

:func:`select_reflections` picks, per frame, the reflections a 3D-ED
integration would keep (Klar et al. 2023): ΔS_g = |g⊥axis|·θ and keep when
|S_g|/ΔS_g < rsg and ΔS_g − |S_g| > dsg.

Units: Å, Å⁻¹ (no 2π), kV, degrees for angles in arguments named ``_deg``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from emverse.electron import potential_prefactor, wavelength_angstrom
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse.parameter_space import Parameter, ParameterSpace

from emverse_bloch.bloch import propagate, propagate_absorptive
from emverse_bloch.crystal import Crystal, load_structure
from emverse_bloch.geometry import (
    excitation_errors,
    hkl_sphere,
    metric_diagonal,
    rotation_x,
    rotation_z,
)
from emverse_bloch.structure_factors import Overrides, StructureParameters, structure_factors
from emverse_bloch.structure_matrix import unique_rows

INTEGRATIONS = ("rocking", "precession")
SOLVE_PRECISIONS = ("float64", "float32")
QUADRATURES = ("mean", "trapezoid")


@dataclass
class BetheGroup:
    """Sub-orientation problems of about the same strong-beam count, solved in one batch."""

    frame: np.ndarray  # (P,) frame of each problem
    sub: np.ndarray  # (P,) its sub-orientation
    strong: np.ndarray  # (P, m) beam slots (into FramePlan.beams[frame]); the direct beam first
    weak: np.ndarray  # (P, W) beam slots
    coupling_ss: np.ndarray  # (P, m, m) into the coupling table
    coupling_sw: np.ndarray  # (P, m, W) into the coupling table
    amplitude: np.ndarray  # (Q,) flat index p·m + slot of a requested reflection's amplitude ...
    reflection: np.ndarray  # (Q,) ... and which requested reflection it is


@dataclass
class BethePlan:
    """Strong and weak beams of every sub-orientation (built by :func:`plan_frames`).

    Each (frame, sub-orientation) is its own eigenproblem. Its strong beams are the direct
    beam, every requested reflection of the frame, and every beam with |S_g| ≤ ``bethe_sg``
    there; the others are weak, |S_w| > ``bethe_sg``, and are folded in by Bethe potentials
    (:func:`emverse_bloch.bethe.bethe_matrix`): the terms left out are of second order in
    U/(2K S_w) ≤ max|U| / (2K ``bethe_sg``). Problems are grouped by strong-beam count
    (within ``GROUP_RATIO``) and a group is filled up to its largest count with the next
    beams of smallest |S_g|. The split is made at ``orientations`` and kept while the
    orientations refined against it move no beam's S_g by more than ``SPLIT_DRIFT`` ×
    ``bethe_sg`` (so every weak beam keeps |S_w| ≥ (1 − ``SPLIT_DRIFT``) ``bethe_sg``); beyond
    that :func:`frame_intensities` splits again at the current orientations. Between splits
    the intensities are smooth functions of orientations and structure; a new split changes
    them by the order of the Bethe error."""

    groups: list[BetheGroup]
    bethe_sg: float
    orientations: torch.Tensor  # (F, 3, 3) float64, where the split was made
    g_max: torch.Tensor  # (F,) largest |g| (Å⁻¹) among each frame's beams

    @property
    def n_strong(self) -> np.ndarray:
        """Strong beams per problem, one entry per group."""
        return np.array([g.strong.shape[-1] for g in self.groups])


#: problems whose strong-beam counts differ by at most this factor share a padded batch
GROUP_RATIO = 1.1
#: the full solve (every beam) holds a few (frames, sub-orientations, N, N) complex arrays; it runs
#: over chunks of frames with frames × sub-orientations × N² below this (2**24 complex128 elements
#: = 256 MiB per array): a CsPbBr3 exact rescoring (59 frames, 49 samples, 257 beams) in one batch
#: ran out of 24 GiB. The numbers do not depend on it.
FULL_SOLVE_ELEMENTS = 2**24
#: split the beams again once refined orientations move some S_g by more than this × bethe_sg
SPLIT_DRIFT = 0.25


def size_groups(sizes, ratio: float) -> list[np.ndarray]:
    """Indices grouped (ascending inside each group) so that within a group the largest size
    is ≤ ``ratio`` × the smallest; ``ratio`` ≤ 1 gives one group. A batched eigensolve pads
    to the batch's largest size and costs ~N³, so grouping removes most of the padding."""
    sizes = np.asarray(sizes)
    if ratio <= 1.0:
        return [np.arange(len(sizes))]
    groups, current, smallest = [], [], None
    for i in np.argsort(sizes, kind="stable"):
        if current and sizes[i] > ratio * smallest:
            groups.append(np.sort(current))
            current = []
        if not current:
            smallest = max(int(sizes[i]), 1)
        current.append(int(i))
    groups.append(np.sort(current))
    return groups


@dataclass
class FramePlan:
    """Beam bookkeeping for a set of frames (built by :func:`plan_frames`)."""

    crystal: Crystal
    voltage_kv: float
    wavenumber: float  # K (Å⁻¹) used in the structure matrix
    orientations: torch.Tensor  # (F,3,3) float64, as planned
    sub_rotations: torch.Tensor  # (n_sub,3,3) float64
    beams: np.ndarray  # (F, N, 3) int; padded rows are 0 with beam_valid False
    beam_valid: np.ndarray  # (F, N) bool
    table_hkl: np.ndarray  # (M_table, 3) distinct differences
    coupling_index: np.ndarray  # (F, N, N) into table (M_table = the zero pad entry)
    hkl: np.ndarray  # (M, 3) requested reflections
    frame_index: np.ndarray  # (M,)
    beam_index: np.ndarray  # (M,) position of each requested reflection in its frame's beams
    absorption: float = 0.0
    parametrization: str = "lobato"
    overrides: Overrides | None = None
    override_plan: object = None
    u0: float = 0.0
    extras: dict = field(default_factory=dict)
    sub_weights: torch.Tensor | None = None  # (n_sub,) quadrature weights summing to 1
    bethe: BethePlan | None = None  # weak beams folded in (plan_frames(bethe_sg=...))
    solve_precision: str = "float64"  # the eigensolves in "float64" (complex128) or "float32" (complex64)

    @property
    def n_frames(self) -> int:
        return self.beams.shape[0]

    @property
    def n_beams(self) -> int:
        return self.beams.shape[1]


def sub_orientation_rotations(
    semi_angle_deg: float, n: int, integration: str = "rocking", dtype=torch.float64
) -> torch.Tensor:
    """Q_k (n, 3, 3) for rocking about lab x or precession about the beam."""
    if integration not in INTEGRATIONS:
        raise EmverseError(f"integration {integration!r} is unknown; use 'rocking' or 'precession'")
    if n < 1:
        raise EmverseError(f"n_sub_orientations {n} must be >= 1")
    theta = math.radians(semi_angle_deg)
    if integration == "rocking":
        angles = torch.linspace(-theta, theta, n, dtype=dtype) if n > 1 else torch.zeros(1, dtype=dtype)
        return rotation_x(angles)
    phi = torch.arange(n, dtype=dtype) * (2 * math.pi / n)
    tilt = rotation_x(torch.full((n,), theta, dtype=dtype))
    return rotation_z(phi) @ tilt @ rotation_z(-phi)


def _check_orientations(orientations) -> torch.Tensor:
    r = torch.as_tensor(orientations, dtype=torch.float64).detach()
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[-2:] != (3, 3):
        raise EmverseError(f"orientations have shape {tuple(r.shape)}; give (F, 3, 3) rotation matrices")
    err = (r @ r.transpose(-1, -2) - torch.eye(3, dtype=r.dtype)).abs().amax()
    if err > 1e-4:
        raise EmverseError(
            f"orientations are not rotation matrices (|R Rᵀ − I| = {err:.2g}); orthonormalise them"
        )
    return r


def plan_frames(
    crystal: Crystal,
    orientations,
    hkl,
    frame_index,
    *,
    voltage_kv: float = 200.0,
    g_max: float = 1.5,
    sg_max: float = 0.02,
    rocking_semi_angle_deg: float = 0.0,
    n_sub_orientations: int = 1,
    integration: str = "rocking",
    absorption: float = 0.0,
    parametrization: str = "lobato",
    overrides: Overrides | None = None,
    mip_corrected: bool = True,
    quadrature: str = "mean",
    bethe_sg: float = 0.0,
    solve_precision: str = "float64",
) -> FramePlan:
    """Choose each frame's beams and index the couplings (see the module docstring).

    ``bethe_sg`` > 0 (Å⁻¹) solves exactly only the direct beam, the requested reflections
    and the beams with |S_g| ≤ ``bethe_sg`` at each sub-orientation, and folds the others in
    by Bethe potentials (:class:`BethePlan`; approximate, second order in U/(2K S_w)).
    ``solve_precision = "float32"`` assembles the matrices and runs the eigensolves in complex64
    (1.8× faster on a quartz 3D-ED epoch; intensities are returned in the structure's dtype)."""
    rots = _check_orientations(orientations)
    n_frames = rots.shape[0]
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    frame_index = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    if len(frame_index) != len(hkl):
        raise EmverseError(
            f"frame_index has {len(frame_index)} entries but hkl has {len(hkl)}; give one frame per reflection"
        )
    if len(frame_index) and (frame_index.min() < 0 or frame_index.max() >= n_frames):
        raise EmverseError(
            f"frame_index holds {frame_index.min()}..{frame_index.max()} but there are {n_frames} frames"
        )
    if np.any(np.all(hkl == 0, axis=1)):
        raise EmverseError("hkl contains (0, 0, 0); request diffracted reflections only")
    lam = wavelength_angstrom(voltage_kv)
    u0 = 0.0
    if mip_corrected:
        f0 = structure_factors(crystal, np.zeros((1, 3)), parametrization=parametrization)
        u0 = float(f0.real[0]) * potential_prefactor(voltage_kv) / crystal.volume
    wavenumber = math.sqrt(1.0 / lam**2 + u0)
    sub = sub_orientation_rotations(rocking_semi_angle_deg, n_sub_orientations, integration)

    candidates = hkl_sphere(crystal, g_max)
    candidates = candidates[~np.all(candidates == 0, axis=1)]
    g_c = crystal.g_vectors(candidates)
    g2 = np.einsum("ij,ij->i", g_c, g_c)
    per_frame = []
    beam_index = np.zeros(len(hkl), dtype=np.int64)
    for f in range(n_frames):
        full = (sub @ rots[f]).numpy()  # (n_sub,3,3)
        g_lab = np.einsum("kij,mj->kmi", full, g_c)
        s = -g_lab[..., 2] - g2 / (2 * wavenumber)
        keep = np.any(np.abs(s) <= sg_max, axis=0)
        chosen = [tuple(h) for h in candidates[keep]]
        chosen_set = set(chosen)
        mine = np.flatnonzero(frame_index == f)
        for m in mine:
            h = tuple(int(v) for v in hkl[m])
            if h not in chosen_set:
                chosen.append(h)
                chosen_set.add(h)
        beams = [(0, 0, 0), *chosen]
        lookup = {h: i for i, h in enumerate(beams)}
        for m in mine:
            beam_index[m] = lookup[tuple(int(v) for v in hkl[m])]
        per_frame.append(np.asarray(beams, dtype=np.int64))
    if max(len(b) for b in per_frame) < 2:
        raise EmverseError(
            f"g_max = {g_max} Å⁻¹ and sg_max = {sg_max} Å⁻¹ leave only the direct beam in every frame; "
            "raise g_max or sg_max"
        )
    n = max(len(b) for b in per_frame)
    beams = np.zeros((n_frames, n, 3), dtype=np.int64)
    valid = np.zeros((n_frames, n), dtype=bool)
    for f, b in enumerate(per_frame):
        beams[f, : len(b)] = b
        valid[f, : len(b)] = True
    diff = beams[:, None, :, :] - beams[:, :, None, :]  # [f, i, j] = h_j - h_i
    table, inverse = unique_rows(diff.reshape(-1, 3))
    index = inverse.reshape(n_frames, n, n)
    pair_valid = valid[:, :, None] & valid[:, None, :]
    index = np.where(pair_valid, index, len(table))  # pads couple through an exact zero
    plan = FramePlan(
        crystal=crystal,
        voltage_kv=float(voltage_kv),
        wavenumber=wavenumber,
        orientations=rots,
        sub_rotations=sub,
        beams=beams,
        beam_valid=valid,
        table_hkl=table,
        coupling_index=index,
        hkl=hkl,
        frame_index=frame_index,
        beam_index=beam_index,
        absorption=float(absorption),
        parametrization=parametrization,
        overrides=overrides,
        u0=u0,
        sub_weights=quadrature_weights(len(sub), quadrature, integration),
    )
    if overrides is not None:
        plan.override_plan = overrides.plan(crystal, table)
    if not (math.isfinite(bethe_sg) and bethe_sg >= 0):
        raise EmverseError(f"bethe_sg {bethe_sg!r} Å⁻¹ must be >= 0 (0: every beam solved exactly), e.g. 0.005")
    if bethe_sg:
        plan.bethe = _bethe_plan(plan, bethe_sg, plan.orientations)
    if solve_precision not in SOLVE_PRECISIONS:
        raise EmverseError(f"solve_precision {solve_precision!r} is unknown; use one of {SOLVE_PRECISIONS}")
    plan.solve_precision = solve_precision
    return plan


def _bethe_plan(plan: FramePlan, bethe_sg: float, orientations: torch.Tensor) -> BethePlan:
    """Split each sub-orientation's beams at ``orientations`` (F, 3, 3) into strong and weak
    (see :class:`BethePlan`)."""
    n_frames, n = plan.beams.shape[:2]
    orientations = orientations.detach().to("cpu", torch.float64)
    full = (plan.sub_rotations[None] @ orientations[:, None]).numpy()  # (F, K, 3, 3)
    n_sub = full.shape[1]
    g = plan.crystal.g_vectors(plan.beams)  # (F, N, 3)
    s = -np.einsum("fkj,fnj->fkn", full[:, :, 2, :], g) - (g**2).sum(-1)[:, None, :] / (2 * plan.wavenumber)
    forced = np.zeros((n_frames, n), dtype=bool)
    forced[:, 0] = True
    forced[plan.frame_index, plan.beam_index] = True
    # rank: the direct beam, the requested reflections, then by |S_g|; pads last
    key = np.where(forced[:, None, :], -1.0, np.where(plan.beam_valid[:, None, :], np.abs(s), np.inf))
    key[:, :, 0] = -2.0
    ranked = np.argsort(key, axis=-1, kind="stable").reshape(n_frames * n_sub, n)
    counts = (key <= bethe_sg).sum(-1).reshape(-1)
    frame, sub = np.divmod(np.arange(n_frames * n_sub), n_sub)
    rows = [np.flatnonzero(plan.frame_index == f) for f in range(n_frames)]
    wanted = np.flatnonzero(np.isin(frame, plan.frame_index))  # a frame without requested reflections is skipped
    groups = []
    for part in size_groups(counts[wanted], GROUP_RATIO):
        members = wanted[part]
        m = int(counts[members].max())
        strong, weak = ranked[members, :m], ranked[members, m:]
        f = frame[members]
        amplitude, reflection = [], []
        for p, (fp, order) in enumerate(zip(f, strong, strict=True)):
            slot = {int(b): i for i, b in enumerate(order)}
            reflection.append(rows[fp])
            amplitude.append(p * m + np.array([slot[int(b)] for b in plan.beam_index[rows[fp]]], dtype=np.int64))
        index = plan.coupling_index[f]
        groups.append(BetheGroup(
            frame=f, sub=sub[members], strong=strong, weak=weak,
            coupling_ss=np.take_along_axis(np.take_along_axis(index, strong[:, :, None], 1), strong[:, None, :], 2),
            coupling_sw=np.take_along_axis(np.take_along_axis(index, strong[:, :, None], 1), weak[:, None, :], 2),
            amplitude=np.concatenate(amplitude), reflection=np.concatenate(reflection),
        ))
    g_max = np.where(plan.beam_valid, np.linalg.norm(g, axis=-1), 0.0).max(-1)
    return BethePlan(groups=groups, bethe_sg=float(bethe_sg), orientations=orientations,
                     g_max=torch.as_tensor(g_max))


def _follow_orientations(plan: FramePlan, orientations: torch.Tensor) -> BethePlan:
    """The plan's strong/weak split, made again if ``orientations`` moved some S_g by more than
    ``SPLIT_DRIFT`` × bethe_sg since it was made: |ΔS_g| = |Δ(R g)_z| ≤ ‖ΔR‖_F |g|."""
    bethe = plan.bethe
    current = orientations.detach().to("cpu", torch.float64)
    drift = torch.linalg.matrix_norm(current - bethe.orientations) * bethe.g_max
    if drift.max() > SPLIT_DRIFT * bethe.bethe_sg:
        plan.bethe = _bethe_plan(plan, bethe.bethe_sg, current)
    return plan.bethe


def potential_table(
    plan: FramePlan,
    structure: StructureParameters | None = None,
    override_values: torch.Tensor | None = None,
    dtype=torch.float64,
) -> torch.Tensor:
    """U(h) (Å⁻², complex) of the elastic potential for the plan's coupling table, with a trailing
    zero entry. The plan's proportional absorption U' = κU is applied by the solver."""
    crystal = plan.crystal
    if structure is None:
        structure = StructureParameters.from_crystal(crystal, dtype=dtype)
    f = structure_factors(crystal, plan.table_hkl, structure, plan.parametrization)
    if plan.overrides is not None:
        if override_values is None:
            raise EmverseError(
                "the plan has structure-factor overrides but no override_values were given; "
                "pass F values (Å), one per overridden reflection"
            )
        f = plan.override_plan.apply(f, override_values.to(f.real.dtype))
    u = f * (potential_prefactor(plan.voltage_kv) / crystal.volume)
    zero = torch.zeros(*u.shape[:-1], 1, dtype=u.dtype, device=u.device)
    return torch.cat([u, zero], dim=-1)


def frame_intensities(
    plan: FramePlan,
    thickness: torch.Tensor,
    structure: StructureParameters | None = None,
    *,
    orientations: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    override_values: torch.Tensor | None = None,
    mode: str = "dynamical",
    method: str = "eig",
    return_beams: bool = False,
    absorption: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrated intensities (..., M) of the plan's requested reflections.

    thickness: (F,) or (B, F) Å. structure: :class:`StructureParameters` with
    optional batch axes (B, ...) broadcasting with thickness. orientations:
    (F, 3, 3) or None. scale: (F,) or (B, F). With ``return_beams`` the
    per-frame beam intensities (..., F, N) are returned instead. ``absorption``: κ as a
    (differentiable) scalar tensor in place of the plan's (which must then be > 0: it chooses
    the absorptive solvers).
    """
    if mode not in ("dynamical", "kinematical"):
        raise EmverseError(f"mode {mode!r} is unknown; use 'dynamical' or 'kinematical'")
    if absorption is not None and not plan.absorption:
        raise EmverseError("absorption given at call time needs a plan made with absorption > 0 (its start value)")
    kappa = plan.absorption if absorption is None else absorption
    if plan.absorption and method == "eig" and mode == "dynamical":
        raise EmverseError(
            "absorption makes the structure matrix non-Hermitian; use method='expm' (exact) or "
            "'eig_absorptive' (first order) with absorption"
        )
    real = structure.positions.dtype if structure is not None else torch.as_tensor(thickness).dtype
    if not real.is_floating_point:
        real = torch.float64
    thickness = torch.as_tensor(thickness, dtype=real)
    if thickness.shape[-1] != plan.n_frames:
        raise EmverseError(
            f"thickness has {thickness.shape[-1]} entries in its last axis but there are "
            f"{plan.n_frames} frames; give one thickness (Å) per frame"
        )
    if torch.any(thickness.detach() < 0):
        raise EmverseError(
            f"thickness {thickness.detach().min().item():.4g} Å is negative; give thicknesses >= 0 Å"
        )
    device = thickness.device
    rots = plan.orientations.to(device, real) if orientations is None else orientations.to(device, real)
    full = plan.sub_rotations.to(device, real)[None] @ rots[:, None]  # (F, K, 3, 3)
    g_c = torch.as_tensor(plan.crystal.g_vectors(plan.beams), dtype=real, device=device)  # (F,N,3)
    g_lab = torch.einsum("fkij,fnj->fkni", full, g_c)
    k = plan.wavenumber
    beam_dir = torch.tensor([0.0, 0.0, 1.0], dtype=real, device=device)
    s = excitation_errors(g_lab, beam_dir, k)  # (F,K,N)
    valid = torch.as_tensor(plan.beam_valid, device=device)[:, None, :]
    # dummy (padding) beams far from the Ewald sphere, uncoupled, at distinct S so that no two are
    # degenerate (eigh's own backward, used with absorption, is NaN at exact degeneracies)
    dummy = 1.0 + 0.01 * torch.arange(s.shape[-1], dtype=real, device=device)
    s = torch.where(valid, s, dummy)
    metric = metric_diagonal(g_lab, beam_dir, k)

    u = potential_table(plan, structure, override_values, dtype=real)  # (..., M+1)
    index = torch.as_tensor(plan.coupling_index, device=device)

    if mode == "kinematical":
        couplings = u[..., index]  # (..., F, N, N)
        u_g0 = couplings[..., :, None, :, 0].abs()  # U(h_0 - h_g) = U(-h_g), (..., F, 1, N)
        t = thickness[..., :, None, None]
        amp = math.pi * t * u_g0 * metric / k
        x = math.pi * s * metric**2 * t
        beam_int = (amp * torch.sinc(x / math.pi)) ** 2
        beam_int = beam_int * valid
        beam_int[..., 0] = 0.0
        beam_int = _integrate(beam_int, plan)
    else:
        if plan.solve_precision == "float32":  # the assembly and the eigen-solves in single precision
            u, s, metric, thickness = (u.to(torch.complex64), s.to(torch.float32), metric.to(torch.float32),
                                       thickness.to(torch.float32))
            if torch.is_tensor(kappa):
                kappa = kappa.to(torch.float32)
        if plan.bethe is not None:  # (it gathers its own strong and weak couplings)
            if method not in ("eig", "eig_absorptive") or return_beams:
                raise EmverseError(
                    "bethe_sg (Bethe potentials) works with method='eig' (or 'eig_absorptive' with "
                    "absorption) and the requested reflections only; plan with bethe_sg = 0 for this call"
                )
            _follow_orientations(plan, rots)
            out = _bethe_intensities(plan, u, s, metric, thickness, real, kappa)
            if scale is not None:
                out = out * torch.as_tensor(scale, dtype=real, device=device)[..., plan.frame_index]
            return out
        n_frames, n_sub, n = s.shape
        size = max(1, FULL_SOLVE_ELEMENTS // (n_sub * n * n))
        parts = []
        for rows in (slice(f, f + size) for f in range(0, n_frames, size)):  # bounded batches of frames
            psi = _full_solve(plan, u[..., index[rows]], s[rows], metric[rows], thickness[..., rows], method, kappa)
            parts.append((psi.real**2 + psi.imag**2).to(real))
        beam_int = _integrate(torch.cat(parts, dim=-3), plan)
    if scale is not None:
        beam_int = beam_int * torch.as_tensor(scale, dtype=real, device=device)[..., None]
    if return_beams:
        return beam_int
    fi = torch.as_tensor(plan.frame_index, device=device)
    bi = torch.as_tensor(plan.beam_index, device=device)
    return beam_int[..., fi, bi]


def _full_solve(plan: FramePlan, couplings, excitation_error, metric, thickness, method, kappa):
    """ψ (..., F, K, N) at the exit surface with every beam solved: ``couplings`` (..., F, N, N),
    ``excitation_error`` and ``metric`` (F, K, N), ``thickness`` (..., F) Å; absorption κ to first
    order (``method = "eig_absorptive"``) or exactly (``"expm"``)."""
    from emverse_bloch.structure_matrix import structure_matrix

    k, device = plan.wavenumber, excitation_error.device
    t = thickness[..., :, None, None].expand(*thickness.shape, excitation_error.shape[1], 1)
    couplings = couplings[..., :, None, :, :]
    if method == "eig_absorptive":
        matrix = structure_matrix(couplings, excitation_error, k, metric)
        potential = structure_matrix(couplings, torch.zeros_like(excitation_error), k, metric)
        absorptive = kappa * (potential + torch.diag_embed((plan.u0 * metric**2).to(potential.dtype)))
        return propagate_absorptive(matrix, absorptive, t, k, metric)[..., 0, :]
    absorption0 = None
    if plan.absorption:
        couplings = couplings * (1.0 + 1j * torch.as_tensor(kappa, dtype=excitation_error.dtype, device=device))
        absorption0 = (kappa * plan.u0) * torch.ones((), dtype=excitation_error.dtype, device=device)
    matrix = structure_matrix(couplings, excitation_error, k, metric, absorption0)
    return propagate(matrix, t, k, method, metric)[..., 0, :]


def _bethe_intensities(plan: FramePlan, u, excitation_error, metric, thickness, dtype, kappa=0.0):
    """Integrated intensities (..., M) of the requested reflections, the weak beams folded in
    by Bethe potentials; each group's m × m problems go through
    :func:`emverse_bloch.bloch.propagate` (exact gradients, also at degeneracies).

    With A = M (U + diag(2K S)) M the fold A_sw A_ww⁻¹ A_ws = M_s U_sw diag(1/(2K S_w)) U_ws M_s:
    the weak beams' metric cancels, so the fold is built on U and scaled by M_s once. The
    intensities come back in ``dtype``. ``kappa``: proportional absorption (float or scalar tensor)."""
    from emverse_bloch.bethe import bethe_matrix
    from emverse_bloch.structure_matrix import structure_matrix

    device, k = excitation_error.device, plan.wavenumber
    weights = plan.sub_weights.to(device, dtype)
    out = torch.zeros(*torch.broadcast_shapes(u.shape[:-1], thickness.shape[:-1]), len(plan.hkl),
                      dtype=dtype, device=device)
    for group in plan.bethe.groups:
        frame, sub = torch.as_tensor(group.frame, device=device), torch.as_tensor(group.sub, device=device)

        def take(values, slots, frame=frame, sub=sub):  # (F, K, N) -> (P, slots)
            return values[frame, sub].gather(-1, torch.as_tensor(slots, device=device))

        s_s, m_s, s_w = take(excitation_error, group.strong), take(metric, group.strong), take(excitation_error, group.weak)
        u_ss = u[..., torch.as_tensor(group.coupling_ss, device=device)]
        u_sw = u[..., torch.as_tensor(group.coupling_sw, device=device)]
        d_w = 2.0 * k * s_w
        h_ss = structure_matrix(u_ss, s_s, k)
        metric_ss = m_s[..., :, None] * m_s[..., None, :]
        matrix = bethe_matrix(h_ss, u_sw, d_w) * metric_ss
        t = thickness[..., frame, None]
        if plan.absorption:  # first order in κ of (1 + iκ)U with iκU_0 on every diagonal, weak ones too
            w_ss = structure_matrix(u_ss, torch.zeros_like(s_s), k) + torch.diag_embed(
                torch.full_like(s_s, plan.u0).to(u_ss.dtype))
            absorptive = bethe_matrix(w_ss, u_sw, d_w / (2.0 - plan.u0 / d_w)) * (kappa * metric_ss)
            psi = propagate_absorptive(matrix, absorptive, t, k, m_s)[..., 0, :]
        else:
            psi = propagate(matrix, t, k, "eig", m_s)[..., 0, :]  # (..., P, m)
        intensity = (psi.real**2 + psi.imag**2).to(dtype) * weights[sub, None]
        out = out.index_add(-1, torch.as_tensor(group.reflection, device=device),
                            intensity.flatten(-2)[..., torch.as_tensor(group.amplitude, device=device)])
    return out


def quadrature_weights(n: int, quadrature: str, integration: str = "rocking") -> torch.Tensor:
    """Weights (n,) summing to 1 over the sub-orientations: ``"mean"`` (equal), or ``"trapezoid"``
    (half weight at the two ends of a rocking range: the exact mean of a function that is linear
    between samples, the continuous-rotation frame's integral; precession points lie on a circle,
    equal weights)."""
    if quadrature not in QUADRATURES:
        raise EmverseError(f"quadrature {quadrature!r} is unknown; use one of {QUADRATURES}")
    weights = torch.ones(n, dtype=torch.float64)
    if quadrature == "trapezoid" and integration == "rocking" and n > 1:
        weights[0] = weights[-1] = 0.5
    return weights / weights.sum()


def _integrate(beam_intensity: torch.Tensor, plan: FramePlan) -> torch.Tensor:
    """Weighted mean over the sub-orientation axis (-2) with the plan's quadrature weights."""
    weights = plan.sub_weights.to(beam_intensity.device, beam_intensity.dtype)
    return (beam_intensity * weights[:, None]).sum(-2)


def ed3d_intensities(
    crystal: Crystal,
    orientations: torch.Tensor,
    thickness: torch.Tensor,
    hkl,
    frame_index,
    structure: StructureParameters | None = None,
    *,
    scale: torch.Tensor | None = None,
    mode: str = "dynamical",
    method: str = "eig",
    **plan_options,
) -> torch.Tensor:
    """One-call form: :func:`plan_frames` then :func:`frame_intensities`."""
    orientations_t = torch.as_tensor(orientations)
    plan = plan_frames(crystal, orientations_t.detach(), hkl, frame_index, **plan_options)
    return frame_intensities(
        plan, thickness, structure,
        orientations=orientations_t if orientations_t.requires_grad else None,
        scale=scale, mode=mode, method=method,
    )


def select_reflections(
    crystal: Crystal,
    orientations,
    *,
    voltage_kv: float = 200.0,
    g_max: float = 1.5,
    rocking_semi_angle_deg: float = 0.5,
    integration: str = "rocking",
    rsg: float = 0.66,
    dsg: float = 0.0015,
    exclude_forbidden: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(hkl (M, 3), frame_index (M,)) of the reflections kept by the Rsg/Dsg criteria."""
    from emverse_bloch.structure_factors import forbidden

    rots = _check_orientations(orientations).numpy()
    lam = wavelength_angstrom(voltage_kv)
    k = 1.0 / lam
    theta = math.radians(rocking_semi_angle_deg)
    candidates = hkl_sphere(crystal, g_max)
    candidates = candidates[~np.all(candidates == 0, axis=1)]
    if exclude_forbidden:
        candidates = candidates[~forbidden(crystal, candidates)]
    g_c = crystal.g_vectors(candidates)
    g2 = np.einsum("ij,ij->i", g_c, g_c)
    out_h, out_f = [], []
    for f, r in enumerate(rots):
        g_lab = g_c @ r.T
        s = -g_lab[:, 2] - g2 / (2 * k)
        if integration == "rocking":
            delta = np.hypot(g_lab[:, 1], g_lab[:, 2]) * theta
        else:
            delta = np.hypot(g_lab[:, 0], g_lab[:, 1]) * theta
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = (np.abs(s) / delta < rsg) & (delta - np.abs(s) > dsg)
        out_h.append(candidates[keep])
        out_f.append(np.full(int(keep.sum()), f))
    return np.concatenate(out_h).astype(np.int64), np.concatenate(out_f).astype(np.int64)


def rotation_series(
    crystal: Crystal,
    n_frames: int,
    step_deg: float,
    start_zone_axis=(0, 0, 1),
    axis: str = "x",
) -> torch.Tensor:
    """Orientations (F, 3, 3) of a continuous-rotation series: frame f is the start
    orientation ([uvw] along the beam) rotated by f·step about the lab ``axis``."""
    from emverse_bloch.geometry import zone_axis_orientation

    start = torch.as_tensor(zone_axis_orientation(crystal, start_zone_axis), dtype=torch.float64)
    angles = torch.arange(n_frames, dtype=torch.float64) * math.radians(step_deg)
    if axis == "x":
        rot = rotation_x(angles)
    else:
        rot = rotation_z(angles)
    return rot @ start


class BlochED3D(ForwardModel):
    """``bloch.ed3d``: asymmetric-unit parameters -> integrated 3D-ED intensities.

    The unknown x (B, P) holds, for every site of the structure, its three
    fractional coordinates then its isotropic U (Å²): P = 4·S (a small, generic
    parameter vector for the conformance kit and for synthetic tests; a
    refinement with constraints calls :func:`frame_intensities` directly).
    The frames are a rotation series about lab x; thickness (Å) and scale are
    fixed attributes (``thickness`` may be replaced by a tensor). Output
    (B, M): the intensities of the reflections chosen by :func:`select_reflections`.
    """

    def __init__(
        self,
        structure: str = "MgB2",
        voltage_kv: float = 200.0,
        thickness_angstrom: float = 300.0,
        n_frames: int = 4,
        rotation_step_deg: float = 1.0,
        start_zone_axis: tuple[int, int, int] = (0, 1, 0),
        g_max: float = 1.2,
        sg_max: float = 0.03,
        rocking_semi_angle_deg: float = 0.3,
        n_sub_orientations: int = 3,
        integration: str = "rocking",
        rsg: float = 0.66,
        dsg: float = 0.0015,
        mode: str = "dynamical",
        method: str = "eig",
        parametrization: str = "lobato",
        position_half_range: float = 0.01,
        u_iso_range: tuple[float, float] = (0.002, 0.02),
        crystal: Crystal | None = None,
        noise=None,
    ):
        super().__init__(noise)
        self.crystal = crystal if crystal is not None else load_structure(structure)
        self.mode, self.method = mode, method
        rots = rotation_series(self.crystal, n_frames, rotation_step_deg, start_zone_axis)
        hkl, frames = select_reflections(
            self.crystal, rots, voltage_kv=voltage_kv, g_max=g_max,
            rocking_semi_angle_deg=rocking_semi_angle_deg, integration=integration,
            rsg=rsg, dsg=dsg,
        )
        if len(hkl) == 0:
            raise EmverseError(
                "no reflection passes the rsg/dsg selection in any frame; raise g_max, "
                "rocking_semi_angle_deg or rsg"
            )
        self.plan = plan_frames(
            self.crystal, rots, hkl, frames, voltage_kv=voltage_kv, g_max=g_max, sg_max=sg_max,
            rocking_semi_angle_deg=rocking_semi_angle_deg, n_sub_orientations=n_sub_orientations,
            integration=integration, parametrization=parametrization,
        )
        self.register_buffer("thickness", torch.full((n_frames,), float(thickness_angstrom),
                                                     dtype=torch.float64))
        params = []
        for site in self.crystal.sites:
            for axis, value in zip("xyz", site.position, strict=True):
                params.append(Parameter.centred(f"{site.label}_{axis}", "fractional", float(value),
                                                position_half_range))
            params.append(Parameter(f"{site.label}_Uiso", "Å^2", *u_iso_range))
        self.parameter_space = ParameterSpace(params)

    @classmethod
    def from_params(cls, params, ctx=None):
        import attrs

        kwargs = attrs.asdict(params, recurse=False)
        structure = kwargs.get("structure", "MgB2")
        crystal = load_structure(structure, ctx.resolve_path if ctx is not None else None)
        kwargs["start_zone_axis"] = tuple(kwargs["start_zone_axis"])
        kwargs["u_iso_range"] = tuple(kwargs["u_iso_range"])
        return cls(**kwargs, crystal=crystal)

    @property
    def hkl(self) -> np.ndarray:
        return self.plan.hkl

    @property
    def frame_index(self) -> np.ndarray:
        return self.plan.frame_index

    def structure_from_vector(self, x: torch.Tensor) -> StructureParameters:
        s = len(self.crystal.sites)
        if x.shape[-1] != 4 * s:
            raise EmverseError(
                f"x has {x.shape[-1]} parameters per row; {self.crystal.name} needs {4 * s} "
                "(x, y, z, U_iso for each site)"
            )
        v = x.reshape(*x.shape[:-1], s, 4)
        positions = v[..., :3]
        u = StructureParameters.isotropic_u(self.crystal, v[..., 3])
        occupancy = torch.tensor([site.occupancy for site in self.crystal.sites], dtype=x.dtype,
                                 device=x.device)
        return StructureParameters(positions, u, occupancy.expand(*x.shape[:-1], s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        structure = self.structure_from_vector(x)
        thickness = self.thickness.to(x.device, x.dtype).expand(*x.shape[:-1], -1)
        return frame_intensities(self.plan, thickness, structure, mode=self.mode, method=self.method)
