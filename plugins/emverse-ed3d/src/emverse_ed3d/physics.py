"""The Bloch-wave physics behind the refinement: emverse-bloch's ``bloch.ed3d`` solver.

One question — the tilt-integrated intensities of the observed reflections of
some frames, given the structure, a thickness per frame and optional
corrective rotations — answered by emverse-bloch's functional 3D-ED API
(:func:`emverse_bloch.ed3d.plan_frames` + :func:`~emverse_bloch.ed3d.frame_intensities`),
with its structure factors (abTEM's Lobato table) and structure matrix.

Geometry handed in: ``orientations`` (F, 3, 3) crystal-Cartesian -> lab with
the PETS2 lab frame (beam along −z), ``axes`` (F, 3) the goniometer axis of
each frame in the lab. emverse-bloch's frame has the beam along +z and rocks
about lab x, so its orientation is ``Q_f = diag(1, −1, −1) R_z(−ω_f) M_f``
(a proper rotation that maps the goniometer axis onto x and −z onto +z).
"""

from __future__ import annotations

import numpy as np
import torch
from emverse.errors import EmverseError


class BlochPhysics:
    """emverse-bloch's functional 3D-ED API (``plan_frames`` + ``frame_intensities``)."""

    name = "bloch"

    def __init__(self, structure, orientations, axes, voltage_kv, semi_angle_deg, hkl, frame_index, *,
                 g_max, sg_max, n_tilts, precession=False, method="eig", bucket_ratio=0.0, absorption=0.0,
                 bethe_sg=0.0, solve_precision="float64"):
        from emverse_bloch.ed3d import size_groups
        from emverse_bloch.geometry import rotation_z

        self._arguments = dict(structure=structure, orientations=orientations, axes=axes, voltage_kv=voltage_kv,
                               semi_angle_deg=semi_angle_deg, hkl=hkl, frame_index=frame_index, g_max=g_max,
                               sg_max=sg_max, n_tilts=n_tilts, precession=precession, method=method,
                               bucket_ratio=bucket_ratio, absorption=absorption, bethe_sg=bethe_sg,
                               solve_precision=solve_precision)
        self.structure = structure
        self.crystal = structure.crystal
        semi = np.unique(np.round(np.asarray(semi_angle_deg, float), 6))
        if semi.size != 1:
            raise EmverseError(
                f"the frames have different rocking semi-angles {semi.tolist()} (deg); emverse-bloch takes one "
                "for all frames: set forward_model.rocking_semi_angle_deg"
            )
        flip = np.diag([1.0, -1.0, -1.0])
        omega = torch.as_tensor(-np.arctan2(np.asarray(axes)[:, 1], np.asarray(axes)[:, 0]), dtype=torch.float64)
        self.q = flip @ rotation_z(omega).numpy()
        self.orientations = np.einsum("fij,fjk->fik", self.q, orientations)
        self.voltage_kv = float(voltage_kv)
        self.semi_angle_deg = float(semi[0])
        self.n_tilts = int(n_tilts)
        self.options = dict(voltage_kv=self.voltage_kv, g_max=g_max, sg_max=sg_max,
                            rocking_semi_angle_deg=self.semi_angle_deg, n_sub_orientations=self.n_tilts,
                            integration="precession" if precession else "rocking", absorption=float(absorption),
                            quadrature="trapezoid", bethe_sg=float(bethe_sg),
                            solve_precision=solve_precision)
        # with absorption the eigen-solve takes it to first order (exact route: method = "expm")
        self.method = "eig_absorptive" if absorption and method == "eig" else method
        self.hkl = np.asarray(hkl)
        self.frame_index = np.asarray(frame_index)
        self.n_frames = len(orientations)
        self._plans: dict[tuple, object] = {}
        self.plan = self._plan(tuple(range(self.n_frames)))
        self.n_beams = self.plan.beam_valid.sum(1)
        # the eigensolves cost ~N³ and a batch pads to its largest beam set: frames with similar
        # beam counts share a batch
        self.buckets = [tuple(int(f) for f in group) for group in size_groups(self.n_beams, bucket_ratio)]
        # reflections come out bucket by bucket; this puts them back in file order
        rows = np.concatenate([np.flatnonzero(np.isin(self.frame_index, b)) for b in self.buckets])
        self._bucket_order = torch.as_tensor(np.argsort(rows, kind="stable"))

    def replace(self, **changes) -> BlochPhysics:
        """The same physics with some constructor arguments changed, e.g. ``n_tilts`` (another
        number of sub-orientations), ``structure`` (the other hand), ``bethe_sg = 0`` and
        ``solve_precision = "float64"`` (every beam exactly)."""
        return BlochPhysics(**{**self._arguments, **changes})

    @property
    def approximate(self) -> bool:
        """True when weak beams are folded in (``bethe_sg``) or the solves run in float32."""
        return bool(self._arguments["bethe_sg"]) or self._arguments["solve_precision"] != "float64"

    def _plan(self, frames: tuple):
        if frames not in self._plans:
            from emverse_bloch.ed3d import plan_frames

            idx = np.asarray(frames)
            rows = np.flatnonzero(np.isin(self.frame_index, idx))
            local = np.searchsorted(idx, self.frame_index[rows])
            self._plans[frames] = plan_frames(self.crystal, self.orientations[idx], self.hkl[rows], local,
                                              **self.options)
        return self._plans[frames]

    def intensities(self, thickness, orientation_delta=None, frames=None, kinematical=False, absorption=None):
        """Intensities of the reflections of ``frames`` (all by default), in file order.

        All frames at once go through one padded batch, or with ``bucket_ratio`` > 0 through
        one batch per bucket of frames with similar beam counts (same numbers, less padding).
        ``absorption``: a refined κ (scalar tensor) in place of the constructor's.
        """
        if frames is None and len(self.buckets) > 1:
            parts = [self._intensities(thickness, orientation_delta, b, kinematical, absorption) for b in self.buckets]
            return torch.cat(parts)[self._bucket_order]
        return self._intensities(thickness, orientation_delta, frames, kinematical, absorption)

    def _intensities(self, thickness, orientation_delta, frames, kinematical, absorption=None):
        from emverse_bloch.ed3d import frame_intensities
        from emverse_bloch.structure_factors import StructureParameters

        frames = tuple(range(self.n_frames)) if frames is None else tuple(int(f) for f in frames)
        plan = self._plan(frames)
        st = self.structure
        frac = st.frac_asu()
        # Cartesian U -> CIF U: U_cif = N⁻¹ U N⁻ᵀ (see Crystal.u_cif)
        n_inv = torch.as_tensor(np.linalg.inv(self.crystal.u_cartesian_basis), dtype=frac.dtype)
        u_cif = n_inv @ st.u_asu() @ n_inv.T
        params = StructureParameters(frac, u_cif, st.occupancy)
        idx = list(frames)
        orient = None
        if orientation_delta is not None:
            q = torch.as_tensor(self.q[idx], dtype=frac.dtype)
            m = torch.as_tensor(np.einsum("fij,fjk->fik", np.transpose(self.q[idx], (0, 2, 1)),
                                          self.orientations[idx]), dtype=frac.dtype)
            orient = q @ orientation_delta[idx].to(frac.dtype) @ m
        return frame_intensities(plan, thickness[idx], params, orientations=orient,
                                 mode="kinematical" if kinematical else "dynamical", method=self.method,
                                 absorption=None if kinematical else absorption)
