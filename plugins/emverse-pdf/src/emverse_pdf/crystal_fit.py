"""Parametrisation of periodic-crystal PDF fits: phases and a dataset as ``nn.Module``.

:class:`CrystalPhase` holds one phase's refinable quantities, each constrained
by the space group: the metric tensor in the subspace the rotations allow
(cubic: one number, hexagonal: two, ...), site coordinates in
``Crystal.position_basis`` subspaces, isotropic U or anisotropic U in
``Crystal.adp_basis`` subspaces, occupancies, scale, δ₁, δ₂ and the particle
envelope's diameter(s). :class:`CrystalPDFModel` adds the instrument (Q_damp,
Q_broad, Q_max) and the data grid; its ``forward()`` returns G(r) (Å⁻²) on the
fit points and ``loss(prediction, observation)`` is Rw², so the core refiners
(``core.lbfgs``, ``core.adam``: ``model.loss(model(), observation)``) fit it.

Every refinable quantity is ``start + unit × t`` with a trainable offset t
starting at 0 and a ``unit`` of the size of a typical refinement step, so
that the optimiser sees parameters of comparable sensitivity. A quantity
that is not refined keeps its offset frozen (``requires_grad=False``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from emverse.crystal import Crystal, isotropic_u_cif
from emverse.errors import EmverseError
from torch import nn

from emverse_pdf.envelope import sphere_envelope, spheroid_envelope
from emverse_pdf.periodic import (
    GAUSSIAN_CUTOFF_SIGMAS,
    cell_parameters,
    check_uniform_grid,
    find_pairs,
    phase_pdf,
    qmax_ripples,
    termination_extension,
)
from emverse_pdf.scattering_lengths import pair_weights

__all__ = ["CrystalPDFModel", "CrystalPhase", "PHASE_PARAMETERS", "DATASET_PARAMETERS"]

PHASE_PARAMETERS = ("scale", "lattice", "xyz", "adp", "occupancy", "delta1", "delta2", "diameter")
DATASET_PARAMETERS = ("qdamp", "qbroad")
ENVELOPES = ("none", "sphere", "spheroid")

_METRIC_INDEX = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def _metric_basis(crystal: Crystal) -> np.ndarray:
    """(6, k) orthonormal basis of metric 6-vectors (g11, g22, g33, g12, g13, g23) with Rᵀ g R = g."""
    blocks = []
    for op in crystal.operations:
        r = op.rotation.astype(float)
        columns = []
        for k in range(6):
            g = np.zeros((3, 3))
            i, j = _METRIC_INDEX[k]
            g[i, j] = g[j, i] = 1.0
            columns.append((r.T @ g @ r - g).reshape(-1))
        blocks.append(np.asarray(columns).T)
    _, s, vt = np.linalg.svd(np.concatenate(blocks, axis=0))
    rank = int(np.sum(s > 1e-8))
    return vt[rank:].T.copy()


def metric_from_vector(g6: torch.Tensor) -> torch.Tensor:
    g11, g22, g33, g12, g13, g23 = g6.unbind()
    return torch.stack([torch.stack([g11, g12, g13]), torch.stack([g12, g22, g23]),
                        torch.stack([g13, g23, g33])])


def _u6(u: np.ndarray) -> np.ndarray:
    return np.array([u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2]])


class _Refinable(nn.Module):
    """Named quantities ``start + unit × offset``; only the free ones get gradients."""

    def __init__(self):
        super().__init__()
        self.offsets = nn.ParameterDict()
        self._units: dict[str, float] = {}

    def add(self, name: str, start, unit: float, free: bool) -> None:
        start = torch.as_tensor(np.asarray(start, dtype=float), dtype=torch.float64)
        self.register_buffer(f"start_{name}", start)
        self.offsets[name] = nn.Parameter(torch.zeros_like(start), requires_grad=free)
        self._units[name] = float(unit)

    def value(self, name: str) -> torch.Tensor:
        return getattr(self, f"start_{name}") + self._units[name] * self.offsets[name]

    def rescale(self, name: str, factor: float) -> None:
        """Multiply a quantity's start value and its unit by ``factor`` (offset unchanged)."""
        getattr(self, f"start_{name}").mul_(factor)
        self._units[name] *= abs(factor)

    def is_free(self, name: str) -> bool:
        return bool(self.offsets[name].requires_grad) and self.offsets[name].numel() > 0


class CrystalPhase(nn.Module):
    """One crystalline phase of a PDF fit (see the module docstring).

    ``radiation``: "xray" (weights Z) or "neutron" (b_c, Sears 1992).
    ``adp``: "isotropic" (one U_iso per site, Å²; a CIF's anisotropic U becomes U_eq)
    or "anisotropic" (U tensors in the site-symmetry subspace).
    ``uiso``: start U_iso (Å²) for every site, overriding the CIF (None keeps it).
    ``envelope``: "none", "sphere" (``diameter`` Å) or "spheroid" (``diameter`` =
    equatorial, ``polar_diameter`` Å). ``refine``: names from :data:`PHASE_PARAMETERS`.
    """

    def __init__(self, crystal: Crystal, *, radiation: str = "xray", adp: str = "isotropic",
                 scale: float = 1.0, delta1: float = 0.0, delta2: float = 0.0,
                 uiso: float | None = None, envelope: str = "none", diameter: float | None = None,
                 polar_diameter: float | None = None, refine: Iterable[str] = (), name: str = ""):
        super().__init__()
        refine = set(refine)
        unknown = refine - set(PHASE_PARAMETERS)
        if unknown:
            raise EmverseError(f"phase {name or crystal.name!r}: cannot refine {sorted(unknown)}; "
                               f"choose from {', '.join(PHASE_PARAMETERS)}")
        if adp not in ("isotropic", "anisotropic"):
            raise EmverseError(f"adp {adp!r} is unknown; use 'isotropic' or 'anisotropic'")
        if envelope not in ENVELOPES:
            raise EmverseError(f"envelope {envelope!r} is unknown; use one of {', '.join(ENVELOPES)}")
        if envelope != "none" and not (diameter and diameter > 0):
            raise EmverseError(f"phase {name or crystal.name!r}: envelope {envelope!r} needs diameter > 0 Å")
        if envelope == "spheroid" and not (polar_diameter and polar_diameter > 0):
            raise EmverseError(f"phase {name or crystal.name!r}: a spheroid needs polar_diameter > 0 Å")
        if "diameter" in refine and envelope == "none":
            raise EmverseError(f"phase {name or crystal.name!r}: 'diameter' is refined but envelope = 'none'; "
                               "set envelope = 'sphere' or 'spheroid' or drop 'diameter'")
        self.crystal = crystal
        self.name = name or crystal.name
        self.radiation = radiation
        self.adp = adp
        self.envelope = envelope
        self.refined = refine
        n_sites = len(crystal.sites)

        # symmetry-constrained subspaces, assembled into one linear map per quantity
        self.metric_basis_np = _metric_basis(crystal)
        g0 = crystal.lattice @ crystal.lattice.T
        metric_start = self.metric_basis_np.T @ _u6(g0)
        position_blocks, position_starts = [], []
        for s in range(n_sites):
            x0, basis = crystal.position_basis(s)
            position_starts.append(x0)
            position_blocks.append(basis)
        position_map = np.zeros((3 * n_sites, sum(b.shape[1] for b in position_blocks)))
        column = 0
        for s, basis in enumerate(position_blocks):
            position_map[3 * s:3 * s + 3, column:column + basis.shape[1]] = basis
            column += basis.shape[1]

        recip = np.diag(np.linalg.norm(crystal.reciprocal_lattice, axis=1))
        u_eq = np.array([np.trace(recip @ site.u_cif @ recip @ g0) / 3 for site in crystal.sites])
        if uiso is not None:
            u_eq = np.full(n_sites, float(uiso))
        if adp == "anisotropic":
            adp_blocks = [crystal.adp_basis(s) for s in range(n_sites)]
            u_start = []
            for s, site in enumerate(crystal.sites):
                u = site.u_cif if uiso is None else isotropic_u_cif(uiso, crystal.cell_lengths, crystal.cell_angles)
                u_start.append(adp_blocks[s].T @ _u6(u))
            adp_map = np.zeros((6 * n_sites, sum(b.shape[1] for b in adp_blocks)))
            column = 0
            for s, basis in enumerate(adp_blocks):
                adp_map[6 * s:6 * s + 6, column:column + basis.shape[1]] = basis
                column += basis.shape[1]
            adp_start = np.concatenate(u_start)
            self.register_buffer("adp_map", torch.as_tensor(adp_map))
        else:
            adp_start = u_eq
        if np.any(u_eq <= 0):
            bad = [crystal.sites[s].label for s in np.nonzero(u_eq <= 0)[0]]
            raise EmverseError(f"phase {self.name!r}: sites {bad} have no displacement parameter (U = 0 Å²); "
                               "give U_iso in the CIF or uiso = 0.005 (Å²) in the phase options")

        cell_size = float(max(crystal.cell_lengths))
        self.values = _Refinable()
        add = self.values.add
        add("metric", metric_start, 0.002 * float(np.mean(np.diag(g0))), "lattice" in refine)
        add("xyz", np.zeros(position_map.shape[1]), 0.01 / cell_size, "xyz" in refine)
        add("adp", adp_start, 0.001, "adp" in refine)
        add("occupancy", [site.occupancy for site in crystal.sites], 0.01, "occupancy" in refine)
        add("scale", scale, 0.01 * max(abs(scale), 1e-3), "scale" in refine)
        add("delta1", delta1, 0.01, "delta1" in refine)
        add("delta2", delta2, 0.1, "delta2" in refine)
        add("diameter", diameter or 0.0, 1.0, "diameter" in refine)
        add("polar_diameter", polar_diameter or 0.0, 1.0, "diameter" in refine and envelope == "spheroid")

        self.register_buffer("metric_basis", torch.as_tensor(self.metric_basis_np))
        self.register_buffer("position_start", torch.as_tensor(np.concatenate(position_starts)))
        self.register_buffer("position_map", torch.as_tensor(position_map))
        self.register_buffer("atom_rotation", torch.as_tensor(crystal.atom_rotation))
        self.register_buffer("atom_translation", torch.as_tensor(crystal.atom_translation))
        self.register_buffer("atom_site", torch.as_tensor(crystal.atom_site))
        self.register_buffer("atom_weight", torch.as_tensor(pair_weights(crystal.atom_elements, radiation),
                                                            dtype=torch.float64))
        centres = np.array([int(np.nonzero(crystal.atom_site == s)[0][0]) for s in range(n_sites)])
        multiplicity = np.zeros(crystal.n_atoms)
        multiplicity[centres] = [crystal.multiplicity(s) for s in range(n_sites)]
        self.centres = centres
        self.register_buffer("multiplicity", torch.as_tensor(multiplicity))
        # rotations of the operations that fix each centre atom: its equivalent pairs are merged
        self.centre_rotations = {}
        for i in centres:
            x = crystal.atom_positions[i]
            fixing = [op.rotation.astype(float) for op in crystal.operations
                      if np.all(np.abs(np.mod(op.apply(x) - x + 0.5, 1.0) - 0.5) < 1e-6)]
            self.centre_rotations[int(i)] = np.asarray(fixing)
        self._pairs_cache = None

    def pairs(self, metric: torch.Tensor, positions: torch.Tensor, r_lo: float, r_hi: float):
        """Pairs within [r_lo, r_hi] Å, reused while no distance can have moved by 0.2 Å."""
        g = metric.detach().cpu().numpy()
        x = positions.detach().cpu().numpy()
        cache = self._pairs_cache
        if cache is not None and cache[2] <= r_lo and cache[3] >= r_hi:
            g0, x0 = cache[0], cache[1]
            stretch = r_hi * float(np.abs(g - g0).max()) / (2 * float(np.diag(g0).min()))
            moved = 2 * float(np.abs(x - x0).max()) * math.sqrt(float(np.diag(g).max()))
            if stretch + moved < 0.2:
                return cache[4]
        margin = 0.5  # found a little wider, so that small steps reuse the list
        pairs = find_pairs(metric, positions, self.centres, max(0.0, r_lo - margin), r_hi + margin,
                           atom_site=self.crystal.atom_site, centre_rotations=self.centre_rotations)
        self._pairs_cache = (g, x, max(0.0, r_lo - margin), r_hi + margin, pairs)
        return pairs

    # ----------------------------------------------------------- quantities
    def metric(self) -> torch.Tensor:
        return metric_from_vector(self.metric_basis @ self.values.value("metric"))

    def site_positions(self) -> torch.Tensor:
        flat = self.position_start + self.position_map @ self.values.value("xyz")
        return flat.reshape(-1, 3)

    def atom_positions(self) -> torch.Tensor:
        sites = self.site_positions()[self.atom_site]
        return torch.einsum("nij,nj->ni", self.atom_rotation, sites) + self.atom_translation

    def site_u6(self) -> torch.Tensor:
        """(n_sites, 6) anisotropic U_cif (Å²); only for adp = 'anisotropic'."""
        return (self.adp_map @ self.values.value("adp")).reshape(-1, 6)

    def occupancy(self) -> torch.Tensor:
        return self.values.value("occupancy")[self.atom_site]

    def value(self, name: str) -> torch.Tensor:
        return self.values.value(name)

    def max_msd(self) -> float:
        """Largest mean-square displacement of any site (Å², no gradient), for pair ranges."""
        with torch.no_grad():
            if self.adp == "isotropic":
                return float(self.values.value("adp").abs().max())
            u6 = self.site_u6()
            g = self.metric()
            recip = torch.sqrt(torch.diag(torch.linalg.inv(g)))
            worst = 0.0
            for row in u6:
                u = metric_from_vector(row)
                cart = torch.linalg.eigvals((recip[:, None] * u * recip[None, :]) @ g).real
                worst = max(worst, float(cart.abs().max()))
            return worst

    def msd_function(self, metric: torch.Tensor):
        """σ'²(pair) = r̂ᵀ(U_i + U_j)r̂ (Å²) as a function of the pair geometry."""
        if self.adp == "isotropic":
            u_atom = self.values.value("adp")[self.atom_site]

            def isotropic(i, j, d_frac, dist):
                return u_atom[i] + u_atom[j]

            return isotropic
        recip = torch.sqrt(torch.diag(torch.linalg.inv(metric)))
        u_site = torch.stack([metric_from_vector(row) for row in self.site_u6()])  # (s, 3, 3)
        sigma_site = recip[None, :, None] * u_site * recip[None, None, :]  # fractional covariance
        rot = self.atom_rotation
        sigma_atom = rot @ sigma_site[self.atom_site] @ rot.transpose(1, 2)

        def anisotropic(i, j, d_frac, dist):
            v = d_frac @ metric
            proj_i = torch.einsum("pi,pij,pj->p", v, sigma_atom[i], v)
            proj_j = torch.einsum("pi,pij,pj->p", v, sigma_atom[j], v)
            return (proj_i + proj_j) / dist**2

        return anisotropic

    def envelope_values(self, r: torch.Tensor) -> torch.Tensor | None:
        if self.envelope == "sphere":
            return sphere_envelope(r, self.values.value("diameter"))
        if self.envelope == "spheroid":
            return spheroid_envelope(r, self.values.value("diameter"), self.values.value("polar_diameter"))
        return None

    def summary(self) -> dict[str, float]:
        """Refined values for reports: lattice (Å, °), scale, δ's, U's, diameters."""
        out: dict[str, float] = {}
        with torch.no_grad():
            for key, val in zip(("a", "b", "c", "alpha", "beta", "gamma"), cell_parameters(self.metric()),
                                strict=True):
                out[key] = val
            for key in ("scale", "delta1", "delta2"):
                out[key] = float(self.value(key))
            if self.envelope != "none":
                out["diameter"] = float(self.value("diameter"))
            if self.envelope == "spheroid":
                out["polar_diameter"] = float(self.value("polar_diameter"))
            if self.adp == "isotropic":
                for site, u in zip(self.crystal.sites, self.value("adp").tolist(), strict=True):
                    out[f"uiso_{site.label}"] = u
            for site, o in zip(self.crystal.sites, self.value("occupancy").tolist(), strict=True):
                if "occupancy" in self.refined:
                    out[f"occupancy_{site.label}"] = o
            positions = self.site_positions()
            if "xyz" in self.refined:
                for site, x in zip(self.crystal.sites, positions.tolist(), strict=True):
                    for axis, v in zip("xyz", x, strict=True):
                        out[f"{axis}_{site.label}"] = v
        return out


class CrystalPDFModel(nn.Module):
    """G(r) of one dataset: phases + instrument on the data's r grid (see the module docstring).

    ``r``: the data's uniform grid (Å); the fit uses fit_rmin <= r <= fit_rmax.
    ``qmax`` (Å⁻¹): termination (0 = none); ``qdamp``/``qbroad`` (Å⁻¹) start values;
    ``refine``: names from :data:`DATASET_PARAMETERS`. ``weights``: per fit point
    (None = 1, as PDFfit2 without dG).
    """

    def __init__(self, phases: list[CrystalPhase], r, *, fit_rmin: float, fit_rmax: float, qmax: float,
                 qdamp: float = 0.0, qbroad: float = 0.0, refine: Iterable[str] = (), source: str = "data",
                 weights=None):
        super().__init__()
        refine = set(refine)
        unknown = refine - set(DATASET_PARAMETERS)
        if unknown:
            raise EmverseError(f"{source}: cannot refine {sorted(unknown)} per dataset; "
                               f"choose from {', '.join(DATASET_PARAMETERS)}")
        if not phases:
            raise EmverseError(f"{source}: a dataset needs at least one phase")
        r = np.asarray(r, dtype=float)
        self.step = check_uniform_grid(r, source)
        self.r0 = float(r[0])
        self.fit_first = int(round((fit_rmin - self.r0) / self.step))
        self.fit_last = int(round((fit_rmax - self.r0) / self.step))
        if self.fit_first < 0 or self.fit_last >= r.size or self.fit_last <= self.fit_first:
            raise EmverseError(f"{source}: fit range {fit_rmin}-{fit_rmax} Å is not inside the data "
                               f"({r[0]:.3f}-{r[-1]:.3f} Å); choose fit_rmin/fit_rmax within it")
        self.qmax = float(qmax)
        extension = termination_extension(self.qmax)
        # like PDFfit2: extend below the fit range only down to the data's first point, here the
        # first with r > 0 (the pair sum's G(0) is 0/0; PDFfit2 would carry that NaN everywhere)
        first_positive = int(np.argmax(r > 0))
        self.calc_first = max(first_positive,
                              int(round((max(self.r0, fit_rmin - extension) - self.r0) / self.step)))
        self.calc_last = int(round((fit_rmax + extension - self.r0) / self.step))
        self.phases = nn.ModuleList(phases)
        self.instrument = _Refinable()
        self.instrument.add("qdamp", qdamp, 0.001, "qdamp" in refine)
        self.instrument.add("qbroad", qbroad, 0.001, "qbroad" in refine)
        self.refined = refine
        self.source = source
        r_fit = self.r0 + self.step * np.arange(self.fit_first, self.fit_last + 1)
        self.register_buffer("r", torch.as_tensor(r_fit))
        self.register_buffer("weights", None if weights is None else torch.as_tensor(weights, dtype=torch.float64))

    @property
    def calc_r(self) -> torch.Tensor:
        n = self.calc_last - self.calc_first + 1
        return self.r0 + self.step * (self.calc_first + torch.arange(n, dtype=torch.float64))

    def value(self, name: str) -> torch.Tensor:
        return self.instrument.value(name)

    def phase_curves(self) -> list[torch.Tensor]:
        """Each phase's scaled, damped, enveloped G(r) on the calculation grid (before Qmax)."""
        r_calc = self.calc_r.to(self.r.device)
        start = self.r0 + self.step * self.calc_first
        n_points = r_calc.numel()
        qdamp = self.value("qdamp")
        qbroad = self.value("qbroad")
        curves = []
        for phase in self.phases:
            metric = phase.metric()
            positions = phase.atom_positions()
            reach = GAUSSIAN_CUTOFF_SIGMAS * math.sqrt(2 * phase.max_msd()) * math.sqrt(
                1 + float(qbroad.detach()) ** 2 * float(r_calc[-1]) ** 2) + 0.5
            pairs = phase.pairs(metric, positions, max(0.0, float(r_calc[0]) - reach), float(r_calc[-1]) + reach)
            g = phase_pdf(
                start, self.step, n_points, metric=metric, positions=positions,
                msd_of_pair=phase.msd_function(metric), occupancy=phase.occupancy(),
                weights=phase.atom_weight, pairs=pairs, multiplicity=phase.multiplicity,
                delta1=phase.value("delta1"), delta2=phase.value("delta2"), qbroad=qbroad,
            )
            g = g * torch.exp(-0.5 * (qdamp * r_calc) ** 2)
            envelope = phase.envelope_values(r_calc)
            if envelope is not None:
                g = g * envelope
            curves.append(phase.value("scale") * g)
        return curves

    def forward(self) -> torch.Tensor:
        total = torch.stack(self.phase_curves()).sum(0)
        total = qmax_ripples(total, self.step, self.qmax)
        lo = self.fit_first - self.calc_first
        return total[lo:lo + self.fit_last - self.fit_first + 1]

    def loss(self, prediction: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        """Rw² = Σ w (G_obs − G_calc)² / Σ w G_obs² (PDFfit2's Rw, squared)."""
        w = torch.ones_like(observation) if self.weights is None else self.weights
        return (w * (observation - prediction) ** 2).sum() / (w * observation**2).sum()

    def summary(self) -> dict[str, float]:
        out = {"qdamp": float(self.value("qdamp").detach()), "qbroad": float(self.value("qbroad").detach())}
        for phase in self.phases:
            for key, val in phase.summary().items():
                out[f"{phase.name}.{key}"] = val
        return out
