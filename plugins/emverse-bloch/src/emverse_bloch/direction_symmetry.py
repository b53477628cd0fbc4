"""Incident directions related by a symmetry of the zone axis share one Bloch solve (exact).

A point operation of the crystal, x' = R x + t (fractional), that keeps the beam
direction maps beam h to h R (Miller row vectors) and acts in the lab frame as a
rotation or mirror L with L ẑ = ẑ. Since F(h) = e^{2πi h·t} F(h R), the structure
matrix of the incident direction L k̂ is the one of k̂ with its beams permuted (and a
diagonal phase, which no intensity sees): the excitation errors S_{Lg}(L k̂) = S_g(k̂)
and the metric (n̂ = ẑ) are unchanged. So I(L k̂)[Lg] = I(k̂)[g] exactly.

An operation is used only when it maps the beam set onto itself and the actual
potential table obeys U(h) = e^{2πi h·t} U(h R) to 1e-10 relative — displacement
parameters that break the symmetry (e.g. a free U12) switch it off. A CBED
detector grid centred on the zone axis (no crystal tilt) then needs about 1/|G| of
the solves (|G| = 4 for MgB2 [010]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emverse_bloch.crystal import Crystal

#: relative tolerance of the potential-table check and of matching direction images
TOLERANCE = 1e-10


@dataclass
class ZoneOperation:
    """In-plane lab action ``plane`` (2, 2) on (tan θx, tan θy) and the beam permutation
    ``permutation`` (N,): beam i goes to beam permutation[i]."""

    plane: np.ndarray
    permutation: np.ndarray


def zone_axis_operations(crystal: Crystal, zone_axis, orientation: np.ndarray, beams: np.ndarray,
                         coupling_hkl: np.ndarray, potential: torch.Tensor) -> list[ZoneOperation]:
    """The non-identity point operations that keep the zone axis [uvw] (the beam), map the
    beams onto themselves and leave the potential table ``potential`` (..., M) over
    ``coupling_hkl`` (M, 3) invariant up to its phase."""
    uvw = np.asarray(zone_axis, dtype=np.int64)
    beams = np.asarray(beams, dtype=np.int64)
    coupling_hkl = np.asarray(coupling_hkl, dtype=np.int64)
    index = {tuple(h): i for i, h in enumerate(beams)}
    table = {tuple(h): i for i, h in enumerate(coupling_hkl)}
    u = potential.detach().reshape(-1, potential.shape[-1]).to(torch.complex128).numpy()
    scale = max(float(np.abs(u).max()), 1e-300)
    g_lab = crystal.g_vectors(beams) @ np.asarray(orientation).T
    out, seen = [], set()
    for op in crystal.operations:
        rotation = np.rint(np.asarray(op.rotation)).astype(np.int64)
        key = rotation.tobytes()
        # h -> h R pairs with directions d -> R⁻¹ d, so R uvw = uvw keeps the beam
        if key in seen or np.array_equal(rotation, np.eye(3, dtype=np.int64)) \
                or not np.array_equal(rotation @ uvw, uvw):
            continue
        seen.add(key)
        permutation = np.array([index.get(tuple(h), -1) for h in beams @ rotation])
        if np.any(permutation < 0) or len(set(permutation.tolist())) != len(beams):
            continue
        plane, *_ = np.linalg.lstsq(g_lab[:, :2], g_lab[permutation, :2], rcond=None)
        plane = plane.T  # mapped g⊥ = plane @ g⊥
        size = np.abs(g_lab).max()
        if (np.abs(g_lab[:, :2] @ plane.T - g_lab[permutation, :2]).max() > 1e-9 * size
                or np.abs(g_lab[permutation, 2] - g_lab[:, 2]).max() > 1e-9 * size
                or not np.allclose(plane @ plane.T, np.eye(2), atol=1e-9)):
            continue
        where = np.array([table.get(tuple(h), -1) for h in coupling_hkl @ rotation])
        if np.any(where < 0):
            continue
        phase = np.exp(2j * np.pi * (coupling_hkl @ np.asarray(op.translation, dtype=float)))
        if np.abs(u - phase * u[:, where]).max() > TOLERANCE * scale:
            continue
        out.append(ZoneOperation(plane, permutation))
    return out


def share_directions(tan_x: np.ndarray, tan_y: np.ndarray, operations: list[ZoneOperation]):
    """Group directions (P,) given by (tan θx, tan θy) into symmetry orbits.

    Returns (representatives (R,), source (P,), permutation (P, N) or None): direction p
    takes the intensities of representative ``source[p]`` (an index into
    ``representatives``) with beams reordered, I_p = I_source[..., permutation[p]].
    """
    tan = np.stack([np.asarray(tan_x, dtype=float), np.asarray(tan_y, dtype=float)], -1)
    if not operations or len(tan) < 2:
        return np.arange(len(tan)), np.arange(len(tan)), None
    step = TOLERANCE * max(float(np.abs(tan).max()), 1e-3)
    keys = {tuple(np.round(t / step).astype(np.int64)): p for p, t in enumerate(tan)}
    n = len(operations[0].permutation)
    source = np.full(len(tan), -1)
    gather = np.tile(np.arange(n), (len(tan), 1))
    representatives = []
    for p in range(len(tan)):
        if source[p] >= 0:
            continue
        source[p] = len(representatives)
        representatives.append(p)
        for op in operations:
            q = keys.get(tuple(np.round(op.plane @ tan[p] / step).astype(np.int64)))
            if q is not None and source[q] < 0:
                source[q] = source[p]
                # I_q[perm[i]] = I_p[i]  ->  I_q = I_p[..., inverse(perm)]
                gather[q] = np.argsort(op.permutation)
    return np.asarray(representatives), source, gather
