"""Bloch-wave engines behind the refinement: emverse-bloch (default) or the native one.

Both answer one question — the tilt-integrated intensities of the observed
reflections of some frames, given the structure, a thickness per frame and
optional corrective rotations — and are interchangeable (the tests check
they agree).

Geometry handed in: ``orientations`` (F, 3, 3) crystal-Cartesian -> lab with
the PETS2 lab frame (beam along −z), ``axes`` (F, 3) the goniometer axis of
each frame in the lab. emverse-bloch's frame has the beam along +z and rocks
about lab x, so its orientation is ``Q_f = diag(1, −1, −1) R_z(−ω_f) M_f``
(a proper rotation that maps the goniometer axis onto x and −z onto +z).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError

from emverse_ed3d import dynamical
from emverse_ed3d.crystal import cell_volume, direct_matrix, reciprocal_matrix

BACKENDS = ("bloch", "native")


def bloch_available() -> bool:
    try:
        import emverse_bloch.ed3d  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


class NativePhysics:
    """The plugin's own engine (:mod:`emverse_ed3d.dynamical`)."""

    name = "native"

    def __init__(self, structure, orientations, axes, wavelength, semi_angle_deg, hkl, frame_index, *,
                 g_max, sg_max, n_tilts, precession=False, method="expm"):
        self.structure = structure
        n_frames = len(orientations)
        obs = [hkl[frame_index == f] for f in range(n_frames)]
        self.geometry = dynamical.FrameGeometry(
            reciprocal_matrix(structure.asu.cell), orientations, axes, wavelength, semi_angle_deg, obs,
            g_max=g_max, sg_max=sg_max, n_tilts=n_tilts, precession=precession,
        )
        self.gamma = dynamical.lorentz_factor_from_wavelength(wavelength)
        self.frame_index = np.asarray(frame_index)
        slots = np.empty(len(frame_index), dtype=int)
        for f in np.unique(frame_index):
            rows = np.flatnonzero(frame_index == f)
            slots[rows] = self.geometry.slots(int(f), hkl[rows])
        self.slots = slots
        self.n_frames = n_frames
        self.n_beams = self.geometry.n_beams

    def _u_table(self):
        frac, U, occ = self.structure.cell_atoms()
        B = torch.as_tensor(self.geometry.reciprocal, dtype=frac.dtype)
        hkl = torch.as_tensor(self.geometry.unique_diff, dtype=frac.dtype)
        return dynamical.structure_factors(hkl, B, frac, U, self.structure.cell_elements, occ,
                                           cell_volume(self.structure.asu.cell), self.gamma)

    def intensities(self, thickness, orientation_delta=None, frames=None, kinematical=False):
        """Intensities of the reflections of ``frames`` (all by default), in file order."""
        frames = np.arange(self.n_frames) if frames is None else np.asarray(frames)
        delta = None if orientation_delta is None else orientation_delta[frames]
        beam = dynamical.frame_intensities(self.geometry, self._u_table(), thickness[frames], frames=frames,
                                           orientation_delta=delta, kinematical=kinematical)
        rows = np.flatnonzero(np.isin(self.frame_index, frames))
        local = np.searchsorted(frames, self.frame_index[rows])
        return beam[torch.as_tensor(local), torch.as_tensor(self.slots[rows])]


class BlochPhysics:
    """emverse-bloch's functional 3D-ED API (``plan_frames`` + ``frame_intensities``)."""

    name = "bloch"

    def __init__(self, structure, orientations, axes, wavelength, semi_angle_deg, hkl, frame_index, *,
                 g_max, sg_max, n_tilts, precession=False, method="eig", bucket_ratio=0.0):
        from emverse_bloch.crystal import Crystal

        from emverse_ed3d.pets import wavelength_to_voltage_kv

        self.structure = structure
        asu = structure.asu
        semi = np.unique(np.round(np.asarray(semi_angle_deg, float), 6))
        if semi.size != 1:
            raise EmverseError(
                f"emverse-bloch takes one rocking semi-angle for all frames, the data has {semi.tolist()}; "
                "use physics_backend = 'native'"
            )
        sites = [
            {"label": lab, "element": el, "position": pos, "occupancy": float(occ), "u_iso": 0.01}
            for lab, el, pos, occ in zip(asu.labels, asu.elements, asu.frac, asu.occupancy, strict=False)
        ]
        ops = []
        for R, t in zip(asu.rotations, asu.translations, strict=False):
            ops.append(",".join(_op_row(R[k], t[k]) for k in range(3)))
        self.crystal = Crystal.from_sites(asu.cell[:3], asu.cell[3:], sites, spacegroup=ops, name=asu.space_group)
        flip = np.diag([1.0, -1.0, -1.0])
        self.q = np.array([flip @ dynamical._np_rz(-math.atan2(a[1], a[0])) for a in axes])
        self.orientations = np.einsum("fij,fjk->fik", self.q, orientations)
        self.voltage_kv = wavelength_to_voltage_kv(wavelength)
        self.options = dict(voltage_kv=self.voltage_kv, g_max=g_max, sg_max=sg_max,
                            rocking_semi_angle_deg=float(semi[0]), n_sub_orientations=n_tilts,
                            integration="precession" if precession else "rocking")
        self.method = method
        self.hkl = np.asarray(hkl)
        self.frame_index = np.asarray(frame_index)
        self.n_frames = len(orientations)
        self._plans: dict[tuple, object] = {}
        self.plan = self._plan(tuple(range(self.n_frames)))
        self.n_beams = self.plan.beam_valid.sum(1)
        self.buckets = beam_buckets(self.n_beams, bucket_ratio)
        # reflections come out bucket by bucket; this puts them back in file order
        rows = np.concatenate([np.flatnonzero(np.isin(self.frame_index, b)) for b in self.buckets])
        self._bucket_order = torch.as_tensor(np.argsort(rows, kind="stable"))
        A = direct_matrix(asu.cell)
        norm = A @ np.diag(np.linalg.norm(reciprocal_matrix(asu.cell), axis=0))
        self.register_norm_inv = np.linalg.inv(norm)

    def _plan(self, frames: tuple):
        if frames not in self._plans:
            from emverse_bloch.ed3d import plan_frames

            idx = np.asarray(frames)
            rows = np.flatnonzero(np.isin(self.frame_index, idx))
            local = np.searchsorted(idx, self.frame_index[rows])
            self._plans[frames] = plan_frames(self.crystal, self.orientations[idx], self.hkl[rows], local,
                                              **self.options)
        return self._plans[frames]

    def intensities(self, thickness, orientation_delta=None, frames=None, kinematical=False):
        """Intensities of the reflections of ``frames`` (all by default), in file order.

        All frames at once go through one padded batch, or with ``bucket_ratio`` > 0 through
        one batch per bucket of frames with similar beam counts (same numbers, less padding).
        """
        if frames is None and len(self.buckets) > 1:
            parts = [self._intensities(thickness, orientation_delta, b, kinematical) for b in self.buckets]
            return torch.cat(parts)[self._bucket_order]
        return self._intensities(thickness, orientation_delta, frames, kinematical)

    def _intensities(self, thickness, orientation_delta, frames, kinematical):
        from emverse_bloch.ed3d import frame_intensities
        from emverse_bloch.structure_factors import StructureParameters

        frames = tuple(range(self.n_frames)) if frames is None else tuple(int(f) for f in frames)
        plan = self._plan(frames)
        st = self.structure
        frac = st.frac_asu()
        n_inv = torch.as_tensor(self.register_norm_inv, dtype=frac.dtype)
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
                                 mode="kinematical" if kinematical else "dynamical", method=self.method)


def beam_buckets(n_beams, ratio: float) -> list[tuple[int, ...]]:
    """Group frames (ascending index inside each group) so that within a group the largest
    beam count is ≤ ``ratio`` × the smallest; ``ratio`` ≤ 1 (e.g. 0) gives one group.

    emverse-bloch pads every frame of a batch to the batch's largest beam set and the
    eigen-decomposition costs ~N³, so a few zone-axis frames with many beams make every
    frame expensive; grouping removes most of that padding.
    """
    n_beams = np.asarray(n_beams)
    if ratio <= 1.0:
        return [tuple(range(len(n_beams)))]
    groups, current, smallest = [], [], None
    for f in np.argsort(n_beams, kind="stable"):
        if current and n_beams[f] > ratio * smallest:
            groups.append(tuple(sorted(current)))
            current = []
        if not current:
            smallest = max(int(n_beams[f]), 1)
        current.append(int(f))
    groups.append(tuple(sorted(current)))
    return groups


def _op_row(r, t) -> str:
    terms = []
    for coeff, var in zip(r, "xyz", strict=False):
        if abs(coeff) < 1e-9:
            continue
        sign = "-" if coeff < 0 else "+"
        mag = "" if abs(abs(coeff) - 1) < 1e-9 else f"{abs(coeff):g}*"
        terms.append(f"{sign}{mag}{var}")
    from fractions import Fraction

    frac = Fraction(float(t)).limit_denominator(12)
    if frac != 0:
        terms.append(f"{'+' if frac > 0 else '-'}{abs(frac)}")
    text = "".join(terms)
    return text[1:] if text.startswith("+") else text


def make_physics(backend: str, *args, **kwargs):
    if backend not in BACKENDS:
        raise EmverseError(f"physics_backend {backend!r} is unknown; use one of {BACKENDS}")
    if backend == "bloch":
        if not bloch_available():
            raise EmverseError(
                "physics_backend 'bloch' needs emverse-bloch installed (pip install -e plugins/emverse-bloch); "
                "or set physics_backend = 'native'"
            )
        return BlochPhysics(*args, **kwargs)
    kwargs.pop("bucket_ratio", None)  # the native engine loops over frames: nothing is padded across frames
    return NativePhysics(*args, **kwargs)
