"""Synthetic 3D-ED data sets with a known structure and thickness profile (paper §4.4).

Recipe: take the frame geometry of a real PETS2 file (orientations, rocking
range), choose the reflections each frame would integrate (|g| ≤ g_max and
``|S_g| < rsg·ΔS_g`` at the frame centre), simulate tilt-integrated Bloch-wave
intensities of the true structure with thickness t(θ) (constant, smooth
random or sinusoidal), scale so the brightest reflection of the whole data set
equals ``dynamic_range`` counts, drop reflections below one count, draw
Poisson counts (``torch.poisson`` with the recipe's generator), and set
σ = √I. Reflections that come out with zero counts (σ = 0) are dropped and
counted in ``skipped`` — they would otherwise carry zero weight σ.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.errors import EmverseError

from emverse_ed3d.model import frame_orientations, reciprocal_columns
from emverse_ed3d.pets import PetsData
from emverse_ed3d.problem import build_model, frame_theta, semi_angle_deg
from emverse_ed3d.thickness import ProfileThickness

PROFILES = ("constant", "sinusoidal", "smooth_random")


def thickness_profile(kind: str, theta_rad: np.ndarray, *, mean_angstrom: float, amplitude_angstrom: float,
                      rng: np.random.Generator, cycles: float = 1.0) -> np.ndarray:
    """t(θ) in Å at the frames' goniometer angles."""
    theta = np.asarray(theta_rad, float)
    span = max(float(np.ptp(theta)), 1e-6)
    u = (theta - theta.min()) / span
    if kind == "constant":
        t = np.full_like(theta, mean_angstrom)
    elif kind == "sinusoidal":
        t = mean_angstrom + amplitude_angstrom * np.sin(2 * math.pi * cycles * u)
    elif kind == "smooth_random":
        t = np.full_like(theta, mean_angstrom)
        for k in range(1, 4):
            a = rng.uniform(-1, 1) * amplitude_angstrom / k
            phase = rng.uniform(0, 2 * math.pi)
            t += a * np.sin(math.pi * k * u + phase)
    else:
        raise EmverseError(f"thickness profile {kind!r} is unknown; use one of {PROFILES}")
    if (t <= 0).any():
        raise EmverseError(
            f"thickness profile {kind} with mean {mean_angstrom} Å and amplitude {amplitude_angstrom} Å goes "
            "below 0 Å; lower the amplitude"
        )
    return t


def candidate_reflections(data: PetsData, g_max: float, rsg_max: float, semi_angle: np.ndarray,
                          dsg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(hkl, frame_index) of the reflections each frame integrates (Rsg criterion)."""
    B = reciprocal_columns(data.cell)
    orientations, axes = frame_orientations(data, data.cell)
    k0 = 1.0 / data.wavelength_angstrom
    n = [int(math.ceil(g_max * np.linalg.norm(np.linalg.inv(B)[i]))) + 1 for i in range(3)]
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in n], indexing="ij"), -1).reshape(-1, 3)
    grid = grid[(np.linalg.norm(grid @ B.T, axis=1) <= g_max) & np.any(grid != 0, axis=1)]
    hkl, frames = [], []
    for f in range(data.n_frames):
        g = grid @ (orientations[f] @ B).T
        s_g = (2 * k0 * g[:, 2] - (g**2).sum(1)) / (2 * k0)
        g_perp = np.linalg.norm(g - np.outer(g @ axes[f], axes[f]), axis=1)
        delta = g_perp * math.radians(semi_angle[f])
        keep = (np.abs(s_g) < rsg_max * delta) & (delta - np.abs(s_g) > dsg)
        hkl.append(grid[keep])
        frames.append(np.full(int(keep.sum()), f))
    return np.concatenate(hkl), np.concatenate(frames)


def make_synthetic(
    geometry: PetsData,
    truth: Crystal,
    *,
    profile: str = "sinusoidal",
    mean_angstrom: float = 600.0,
    amplitude_angstrom: float = 200.0,
    dynamic_range: float = 1e6,
    g_max: float = 1.4,
    sg_max: float = 0.01,
    rsg_max: float = 0.66,
    n_tilts: int = 5,
    rocking_semi_angle_deg: float | None = None,
    method: str = "eig",
    generator: torch.Generator,
    rng: np.random.Generator,
) -> tuple[PetsData, np.ndarray]:
    """A synthetic data set on ``geometry``'s frames, and the true t(θ) (Å) per frame."""
    semi = semi_angle_deg(geometry, rocking_semi_angle_deg)
    hkl, frame_index = candidate_reflections(geometry, g_max, rsg_max, semi)
    if len(hkl) == 0:
        raise EmverseError("no reflection satisfies the excitation criterion; raise g_max or rsg_max")
    counts = np.bincount(frame_index, minlength=geometry.n_frames)
    template = attrs.evolve(geometry, hkl=hkl, intensity=np.ones(len(hkl)), sigma=np.ones(len(hkl)),
                            frame_index=frame_index, skipped={})
    template = template.select_frames(np.flatnonzero(counts > 0))
    theta = frame_theta(template)
    t_true = thickness_profile(profile, theta, mean_angstrom=mean_angstrom, amplitude_angstrom=amplitude_angstrom,
                               rng=rng)
    model = build_model(template, truth, thickness_model="single", g_max=g_max, sg_max=sg_max,
                        n_tilts=n_tilts, rocking_semi_angle_deg=rocking_semi_angle_deg, method=method,
                        check_cell=False)
    model.thickness_model = ProfileThickness(t_true)
    with torch.no_grad():
        clean = model.unscaled().double()
    scaled = clean * (dynamic_range / clean.max())
    bright = scaled >= 1.0
    noisy = torch.poisson(scaled[bright], generator=generator)
    positive = noisy > 0
    keep_rows = np.flatnonzero(bright.numpy())[positive.numpy()]
    intensity = noisy[positive].numpy()
    data = attrs.evolve(
        template, hkl=template.hkl[keep_rows], intensity=intensity, sigma=np.sqrt(intensity),
        frame_index=template.frame_index[keep_rows], source=f"synthetic({geometry.source})",
        skipped={"below_one_count": int((~bright).sum()), "zero_counts_after_poisson": int((~positive).sum())},
    )
    counts = np.bincount(data.frame_index, minlength=data.n_frames)
    if (counts == 0).any():
        rows = np.flatnonzero(counts > 0)
        data = data.select_frames(rows)
        t_true = t_true[rows]
    return data, t_true
