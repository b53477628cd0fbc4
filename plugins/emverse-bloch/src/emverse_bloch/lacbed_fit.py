"""The LACBED fit as a refinable module: parametrization + forward model + likelihood.

:class:`LacbedFit` is what the core refiners (``core.adam``, ``core.lbfgs``)
optimise: ``forward()`` returns the simulated discs (D, n, n) after the detector
blur, ``loss(prediction, observation)`` the chosen likelihood. Per-disc scale and
background are profiled out (solved in closed form at every evaluation), so the
likelihoods are invariant to them and they need no parameters of their own:

* ``"ncc"``: 1 − mean over discs of the normalised cross-correlation (Felix's
  Pearson figure of merit);
* ``"gaussian"``: the profile negative log-likelihood per pixel for independent
  Gaussian pixel noise with a per-disc σ (see
  :func:`emverse_bloch.lacbed.profile_negative_log_likelihood`).

Parameters are held as one raw vector with physical = start + step · raw (steps
below), so an optimiser sees numbers of order one; fixed parameters have their
gradient masked to zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from emverse_bloch.lacbed import (
    LacbedSimulator,
    disc_correlation,
    gaussian_blur,
    incident_tangential,
    pixel_grid,
    profile_negative_log_likelihood,
)

#: typical step of each parameter (its unit): raw changes of 1 are this much
STEPS = {"thickness": 100.0, "centre_row": 1.0, "centre_col": 1.0, "rotation": 1.0,
         "pixel_scale": 0.02, "blur": 0.5, "B": 0.1, "xyz": 0.002}
UNITS = {"thickness": "Å", "centre_row": "px", "centre_col": "px", "rotation": "deg",
         "pixel_scale": "1", "blur": "px", "B": "Å²", "xyz": "fractional"}
LIKELIHOODS = ("ncc", "gaussian")


def _group(name: str) -> str:
    """``B_<element>`` -> B; ``xyz_<label>_<k>`` (shift along the k-th symmetry-allowed
    direction of site <label>, fractional) -> xyz; else the name itself."""
    return "B" if name.startswith("B_") else "xyz" if name.startswith("xyz_") else name


def step_of(name: str) -> float:
    return STEPS[_group(name)]


def unit_of(name: str) -> str:
    return UNITS[_group(name)]


def coordinate_names(crystal, labels) -> list[str]:
    """Names of the symmetry-allowed coordinate shifts of the sites ``labels``."""
    names = []
    for i, site in enumerate(crystal.sites):
        if site.label in labels:
            names += [f"xyz_{site.label}_{k}" for k in range(crystal.position_basis(i)[1].shape[1])]
    return names


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on (..., n, n): k = 0..3 rotations by k·90°,
    k = 4..7 the same after a transpose. k = 0 is the identity."""
    if k >= 4:
        images = images.transpose(-1, -2)
    return torch.rot90(images, k % 4, dims=(-2, -1))


class LacbedFit(torch.nn.Module):
    """Discs of ``simulator`` on an n × n pixel grid of ``pixel_size`` Å⁻¹/px.

    ``start``: physical start values by name (``thickness``, ``B_<element>``,
    ``centre_row``, ``centre_col``, ``rotation``, ``pixel_scale``, ``blur``);
    ``refine``: the names to fit; ``transform``: a :func:`dihedral` index mapping the
    simulated image axes to the data's.
    """

    def __init__(self, simulator: LacbedSimulator, n: int, pixel_size: float, start: dict[str, float],
                 refine, likelihood: str = "ncc", transform: int = 0, dtype=torch.float64):
        super().__init__()
        unknown = set(refine) - set(start)
        if unknown:
            raise ValueError(f"refine names {sorted(unknown)} are not parameters; use {sorted(start)}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {likelihood!r} is unknown; use one of {LIKELIHOODS}")
        self.simulator = simulator
        self.n = int(n)
        self.pixel_size = float(pixel_size)
        self.names = list(start)
        self.likelihood = likelihood
        self.transform = int(transform)
        self.register_buffer("start", torch.tensor([start[k] for k in self.names], dtype=dtype))
        self.register_buffer("step", torch.tensor([step_of(k) for k in self.names], dtype=dtype))
        self.register_buffer("mask", torch.tensor([k in refine for k in self.names], dtype=dtype))
        self.register_buffer("pixels", pixel_grid(self.n, dtype))
        self.raw = torch.nn.Parameter(torch.zeros(len(self.names), dtype=dtype))
        self.raw.register_hook(lambda grad: grad * self.mask)
        crystal = simulator.crystal
        self.register_buffer("x0", torch.tensor(np.array([s.position for s in crystal.sites]), dtype=dtype))
        # shift k of site <label> moves the site along column k of its position basis
        self.coordinate_map = []
        for i, site in enumerate(crystal.sites):
            basis = crystal.position_basis(i)[1]
            for k in range(basis.shape[1]):
                name = f"xyz_{site.label}_{k}"
                if name in self.names:
                    self.coordinate_map.append((name, i, torch.tensor(basis[:, k], dtype=dtype)))

    # ------------------------------------------------------------------ parametrization
    def physical(self, raw: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        values = self.start + self.step * (self.raw if raw is None else raw)
        return dict(zip(self.names, values, strict=True))

    def set_physical(self, **values: float) -> None:
        with torch.no_grad():
            for name, value in values.items():
                i = self.names.index(name)
                self.raw[i] = (value - self.start[i]) / self.step[i]

    def incident(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        centre = torch.stack([p["centre_row"], p["centre_col"]])
        return incident_tangential(self.pixels, self.pixel_size * p["pixel_scale"], centre,
                                   torch.deg2rad(p["rotation"]))

    def b_iso(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # B below 0.01 Å² is unphysical and would make the Debye–Waller factor grow with g
        return {name[2:]: torch.clamp(v, min=0.01) for name, v in p.items() if name.startswith("B_")}

    def positions(self, p: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Asymmetric-unit fractional positions (S, 3), or None when no coordinate is a parameter."""
        if not self.coordinate_map:
            return None
        x = self.x0
        for name, site, direction in self.coordinate_map:
            shift = torch.zeros_like(x)
            shift[site] = direction * p[name]
            x = x + shift
        return x

    # ------------------------------------------------------------------ forward model
    def simulate(self, p: dict[str, torch.Tensor], thickness: torch.Tensor | None = None) -> torch.Tensor:
        """Unblurred discs (T, D, n, n) for thicknesses (T,) Å (default: p's thickness)."""
        t = p["thickness"].reshape(1) if thickness is None else thickness
        intensity = self.simulator(t, self.b_iso(p), self.incident(p), self.positions(p))  # (P, T, D)
        images = intensity.permute(1, 2, 0).reshape(len(t), -1, self.n, self.n)
        return dihedral(images, self.transform)

    def forward(self, raw: torch.Tensor | None = None) -> torch.Tensor:
        p = self.physical(raw)
        return gaussian_blur(self.simulate(p)[0], p["blur"])

    # ------------------------------------------------------------------ likelihood
    def loss(self, prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "ncc":
            return 1 - disc_correlation(prediction, observation).mean()
        return profile_negative_log_likelihood(prediction, observation) / observation.numel()


def curvature_uncertainty(fit: LacbedFit, observation: torch.Tensor, relative_step: float = 1e-3):
    """Standard uncertainties of the refined parameters from the curvature of the profile
    negative log-likelihood (independent Gaussian pixel noise, per-disc σ/scale/background
    profiled out): covariance = H⁻¹, H by central differences of the exact gradient.

    Returns (names, values, su, hessian). Pixels of processed, blurred LACBED images are
    correlated, so these are lower bounds on the true uncertainty.
    """
    index = [i for i, name in enumerate(fit.names) if fit.mask[i] > 0]
    raw0 = fit.raw.detach().clone()

    def gradient(raw):
        raw = raw.clone().requires_grad_(True)
        nll = profile_negative_log_likelihood(fit(raw), observation)
        (g,) = torch.autograd.grad(nll, raw)
        return g[index] / fit.step[index]  # d(nll)/d(physical)

    hessian = np.zeros((len(index), len(index)))
    for column, i in enumerate(index):
        h = relative_step * 10  # in raw units: 1 % of a typical step
        plus, minus = raw0.clone(), raw0.clone()
        plus[i] += h
        minus[i] -= h
        hessian[:, column] = ((gradient(plus) - gradient(minus)) / (2 * h * fit.step[i])).numpy()
    hessian = 0.5 * (hessian + hessian.T)
    try:
        covariance = np.linalg.inv(hessian)
        su = np.sqrt(np.where(np.diag(covariance) > 0, np.diag(covariance), math.nan))
    except np.linalg.LinAlgError:
        su = np.full(len(index), math.nan)
    p = fit.physical()
    names = [fit.names[i] for i in index]
    return names, [float(p[k]) for k in names], su.tolist(), hessian
