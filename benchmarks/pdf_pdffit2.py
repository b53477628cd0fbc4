"""emverse periodic-crystal PDF fits beside PDFfit2 (diffpy.pdffit2, PDFgui's engine).

For every dataset of the committed recipes (Ag, Si, Si/Ni, rutile, LaMnO3, bulk
CdSe then four CdSe nanoparticles), both codes start from the same model (the
recipe's CIF and start values), fit the same data points over the same r
range with the same free parameters (PDFfit2 constraints are generated from
emverse's symmetry subspaces: lattice, coordinates as linear functions of the
site parameters, U_iso, scale, δ₂, Qdamp, Qbroad, sphere diameter), and each
code chains its own calibrant -> sample values. Printed per dataset:

* Rw of each code and the difference (target |ΔRw| <= 0.01);
* refined lattice constants of each (target: within 0.1 %);
* Rw between the two codes' G(r) of the *same fixed model* (emverse's refined
  one loaded into PDFfit2; target <= 1e-3);
* time per G(r) evaluation (emverse forward, no gradient, vs PDFfit2 ``calc``),
  interleaved (benchmarks/harness.py), with a RATIO line.

Run:  python benchmarks/pdf_pdffit2.py [--quick] [recipe ...]
(needs ``pip install diffpy.pdffit2``; one thread each).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import interleaved, pin_threads, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    "recipes/pdf-ag-periodic.toml",
    "recipes/pdf-si-periodic.toml",
    "recipes/pdf-rutile-periodic.toml",
    "recipes/pdf-lamno3-neutron.toml",
    "recipes/pdf-sini-two-phase.toml",
    "recipes/pdf-cdse-calibrant-nanoparticles.toml",
]


def _number(value) -> float:
    return float(value.detach())


def pdffit2_session():
    from diffpy.pdffit2 import PdfFit, redirect_stdout

    redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115 - PDFfit2 prints its banner and progress
    return PdfFit()


def _structure(phase):
    """diffpy.structure of a CrystalPhase's current state (every atom of the cell, U_cif per atom)."""
    import numpy as np
    import torch
    from diffpy.structure import Atom, Lattice, Structure
    from emverse_pdf.periodic import cell_parameters

    with torch.no_grad():
        a, b, c, alpha, beta, gamma = cell_parameters(phase.metric())
        lattice = Lattice(a, b, c, alpha, beta, gamma)
        positions = phase.atom_positions().numpy()
        occupancy = phase.occupancy().numpy()
        g = phase.metric().numpy()
        g_star = np.linalg.inv(g)
        recip = np.sqrt(np.diag(g_star))
        iso_shape = g_star / np.outer(recip, recip)  # U_cif of U_iso = 1 Å²
        if phase.adp != "isotropic":
            raise SystemExit("the PDFfit2 comparison covers isotropic ADPs only")
        u_site = phase.value("adp").numpy()
    atoms = []
    for k, site in enumerate(phase.crystal.atom_site):
        atom = Atom(phase.crystal.sites[site].element, positions[k], lattice=lattice,
                    occupancy=float(occupancy[k]))
        atom.anisotropy = True  # the U_cif of U_iso, written out (diffpy.structure would keep U_iso only)
        atom.U = u_site[site] * iso_shape
        atoms.append(atom)
    return Structure(atoms, lattice=lattice), iso_shape


class Pdffit2Model:
    """A PDFfit2 session holding the same model, data, range and free parameters as a CrystalPDFModel."""

    def __init__(self, model, r, g, radiation: str, constrain: bool = True):
        import numpy as np
        import torch
        from emverse_pdf.scattering_lengths import NEUTRON_COHERENT_LENGTH_FM

        self.model = model
        self.fit = pdffit2_session()
        fit = self.fit
        self.iso_shapes = []
        for phase in model.phases:
            structure, iso_shape = _structure(phase)
            fit.add_structure(structure)
            self.iso_shapes.append(iso_shape)
            if radiation == "neutron":  # the same b_c as emverse (Sears 1992), not PDFfit2's own table
                for element in phase.crystal.elements:
                    fit.set_scat("N", element, NEUTRON_COHERENT_LENGTH_FM[element])
        stype = "N" if radiation == "neutron" else "X"
        positive = np.asarray(r) > 0  # as emverse: no r = 0 point (PDFfit2's G(0) would be NaN)
        r, g = np.asarray(r)[positive], np.asarray(g)[positive]
        fit.read_data_lists(stype, model.qmax, _number(model.value("qdamp")), list(map(float, r)),
                            list(map(float, g)))
        fit.pdfrange(1, float(model.r[0]), float(model.r[-1]))
        fit.setvar(fit.qbroad(), _number(model.value("qbroad")))
        self.parameters = 0
        self.np = np
        self.torch = torch
        for index, phase in enumerate(model.phases, start=1):
            fit.setphase(index)
            fit.setvar(fit.pscale(), _number(phase.value("scale")))
            fit.setvar(fit.delta1(), _number(phase.value("delta1")))
            fit.setvar(fit.delta2(), _number(phase.value("delta2")))
            if phase.envelope == "sphere":
                fit.setvar(fit.spdiameter(), _number(phase.value("diameter")))
            elif phase.envelope != "none":
                raise SystemExit("PDFfit2 has only the spherical envelope")
        if not constrain:  # a fixed model: values only, no free parameters
            return
        if "qdamp" in model.refined:
            self._free(fit.qdamp(), _number(model.value("qdamp")))
        if "qbroad" in model.refined:
            self._free(fit.qbroad(), _number(model.value("qbroad")))
        for index, phase in enumerate(model.phases, start=1):
            fit.setphase(index)
            for name, ref in (("scale", fit.pscale()), ("delta1", fit.delta1()), ("delta2", fit.delta2()),
                              ("diameter", fit.spdiameter())):
                if name in phase.refined:
                    self._free(ref, _number(phase.value(name)))
            if "lattice" in phase.refined:
                self._lattice(phase)
            if "adp" in phase.refined:
                self._adps(phase, self.iso_shapes[index - 1])
            if "xyz" in phase.refined:
                self._positions(phase)
            if "occupancy" in phase.refined:
                raise SystemExit("occupancy refinement is not mapped to PDFfit2 here")

    def _free(self, ref, value) -> int:
        self.parameters += 1
        self.fit.constrain(ref, f"@{self.parameters}")
        self.fit.setpar(self.parameters, value)
        return self.parameters

    def _lattice(self, phase):
        import numpy as np
        import torch
        from emverse_pdf.crystal_fit import metric_from_vector
        from emverse_pdf.periodic import cell_parameters

        basis = phase.metric_basis_np  # rows g11, g22, g33, g12, g13, g23
        g0 = phase.metric().detach()
        angles = np.array(cell_parameters(g0)[3:])
        for column in basis.T:  # the symmetry must hold the angles (cubic ... orthorhombic, hexagonal)
            moved = g0 + 1e-3 * float(g0.diagonal().mean()) * metric_from_vector(torch.as_tensor(column))
            if np.abs(np.array(cell_parameters(moved)[3:]) - angles).max() > 1e-6:
                raise SystemExit("refined cell angles are not mapped to PDFfit2 here")
        lengths = [math.sqrt(_number(phase.metric()[k, k])) for k in range(3)]
        seen: list[tuple[np.ndarray, int]] = []
        for k in range(3):
            row = basis[k] / max(np.linalg.norm(basis[k]), 1e-12)
            match = next((n for other, n in seen if np.allclose(row, other)), None)
            if match is None:
                match = self._free(self.fit.lat(k + 1), lengths[k])
                seen.append((row, match))
            else:
                self.fit.constrain(self.fit.lat(k + 1), f"@{match}")

    def _adps(self, phase, iso_shape):
        fit = self.fit
        site_parameter = {}
        for s, u in enumerate(phase.value("adp").tolist()):
            site_parameter[s] = self._free_value(u)
        for k, s in enumerate(phase.crystal.atom_site, start=1):
            n = site_parameter[int(s)]
            for ref, (i, j) in ((fit.u11(k), (0, 0)), (fit.u22(k), (1, 1)), (fit.u33(k), (2, 2)),
                                (fit.u12(k), (0, 1)), (fit.u13(k), (0, 2)), (fit.u23(k), (1, 2))):
                coefficient = iso_shape[i, j]
                if abs(coefficient) > 1e-12:
                    fit.constrain(ref, f"({coefficient:.12f})*@{n}")

    def _free_value(self, value) -> int:
        self.parameters += 1
        self.fit.setpar(self.parameters, value)
        return self.parameters

    def _positions(self, phase):
        crystal = phase.crystal
        p_map = phase.position_map.numpy()
        columns = [self._free_value(0.0) for _ in range(p_map.shape[1])]
        start = phase.position_start.numpy().reshape(-1, 3)
        for k, s in enumerate(crystal.atom_site):
            rotation = crystal.atom_rotation[k]
            offset = rotation @ start[s] + crystal.atom_translation[k]
            coupling = rotation @ p_map[3 * s:3 * s + 3]  # (3, n_columns)
            for axis, ref in enumerate((self.fit.x(k + 1), self.fit.y(k + 1), self.fit.z(k + 1))):
                terms = [f"({coupling[axis, c]:.12f})*@{columns[c]}" for c in range(len(columns))
                         if abs(coupling[axis, c]) > 1e-12]
                if terms:
                    self.fit.constrain(ref, f"{offset[axis]:.12f} + " + " + ".join(terms))
        self.position_columns = columns

    def refine(self):
        self.fit.refine(1e-8)

    def rw(self, g_obs) -> float:
        np = self.np
        calc = np.asarray(self.fit.getpdf_fit())
        obs = np.asarray(g_obs)
        return float(np.sqrt(np.sum((obs - calc) ** 2) / np.sum(obs**2)))

    def lattice(self, index: int = 1) -> tuple[float, float, float]:
        """a, b, c (Å) of phase ``index`` (1-based)."""
        self.fit.setphase(index)
        return tuple(float(self.fit.getvar(self.fit.lat(k))) for k in (1, 2, 3))

    def value(self, name: str) -> float:
        return float(self.fit.getvar(getattr(self.fit, name)()))


def fixed_model_gr(model, r, g, radiation):
    """PDFfit2's G(r) of ``model``'s current state on its fit points (no refinement)."""
    import numpy as np

    peer = Pdffit2Model(model, r, g, radiation, constrain=False)
    peer.fit.calc()
    return np.asarray(peer.fit.getpdf_fit()), peer


def run_recipe(path: Path, quick: bool, rows: list):
    import numpy as np
    import torch
    from emverse.recipe import load_recipe
    from emverse.run import RunContext
    from emverse_pdf.crystal_data import load_dataset
    from emverse_pdf.tasks import _crystal_model

    recipe = load_recipe(path)
    options = recipe.task.params
    ctx = RunContext(recipe, Path("/tmp"), progress=False)
    refiner = ctx.build("refiner")
    jobs = ([("options.calibrant", options.calibrant, True)] if options.calibrant else [])
    jobs += [(f"options.samples[{k}]", d, False) for k, d in enumerate(options.samples)]
    ours_instrument: dict[str, float] = {}
    peer_instrument: dict[str, float] = {}
    for field, dataset, is_calibrant in jobs:
        loaded = load_dataset(dataset, ctx.resolve_path, field)
        carried = {} if is_calibrant else {k: v for k, v in ours_instrument.items() if k in options.carry}
        model, g_obs = _crystal_model(loaded, carried, ctx)
        peer_carried = {} if is_calibrant else {k: v for k, v in peer_instrument.items() if k in options.carry}
        peer_model, _ = _crystal_model(loaded, peer_carried, ctx)  # same start, the peer's own carried values
        peer = Pdffit2Model(peer_model, loaded.data.r, loaded.data.g, dataset.radiation)

        start = time.perf_counter()
        refiner.refine(model, g_obs)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        peer.refine()
        peer_seconds = time.perf_counter() - start
        with torch.no_grad():
            g_ours = model()
            rw_ours = math.sqrt(float(model.loss(g_ours, g_obs)))
        rw_peer = peer.rw(g_obs.numpy())
        if is_calibrant:
            ours_instrument = {"qdamp": _number(model.value("qdamp")), "qbroad": _number(model.value("qbroad"))}
            peer_instrument = {"qdamp": peer.value("qdamp"), "qbroad": peer.value("qbroad")}
        lattice_ours = [phase.summary() for phase in model.phases]
        deviations = []
        for index, summary in enumerate(lattice_ours, start=1):
            peer_abc = peer.lattice(index)
            for key, value in zip("abc", peer_abc, strict=True):
                deviations.append(100 * (summary[key] - value) / value)
        # the same fixed model (emverse's refined one) in both codes
        g_fixed_peer, fixed_peer = fixed_model_gr(model, loaded.data.r, loaded.data.g, dataset.radiation)
        g_fixed_ours = g_ours.numpy()
        rw_fixed = float(np.sqrt(np.sum((g_fixed_ours - g_fixed_peer) ** 2) / np.sum(g_fixed_peer**2)))

        def ours_eval(model=model):
            with torch.no_grad():
                model()

        timing_ours, timing_peer = interleaved(ours_eval, fixed_peer.fit.calc, repeats=5 if quick else 9)
        label = f"{path.stem}:{loaded.name}"
        rows.append((label, rw_ours, rw_peer, deviations, rw_fixed, timing_ours.min, timing_peer.min,
                     ours_seconds, peer_seconds, model.summary(), peer))
        print(f"{label}: Rw emverse {rw_ours:.4f}  PDFfit2 {rw_peer:.4f}  dRw {rw_ours - rw_peer:+.4f}  "
              f"lattice dev % {', '.join(f'{d:+.3f}' for d in deviations)}  fixed-model Rw {rw_fixed:.1e}  "
              f"G(r) eval {1e3 * timing_ours.min:.1f} ms vs {1e3 * timing_peer.min:.1f} ms  "
              f"fit {ours_seconds:.1f} s vs {peer_seconds:.1f} s", flush=True)
        report(f"pdf G(r) evaluation {label}", timing_ours, timing_peer, "PDFfit2", unit="ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=RECIPES)
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    args = parser.parse_args(argv)
    pin_threads(1)
    import torch

    torch.set_default_dtype(torch.float64)
    rows: list = []
    for recipe in args.recipes:
        run_recipe(ROOT / recipe, args.quick, rows)
    print()
    print("| dataset | Rw emverse | Rw PDFfit2 | ΔRw | lattice Δ (%) | fixed-model Rw | G(r) eval emverse / PDFfit2 (ms) | "
          "fit emverse / PDFfit2 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    failures = []
    for label, rw_ours, rw_peer, dev, rw_fixed, t_ours, t_peer, fit_ours, fit_peer, *_ in rows:
        print(f"| {label} | {rw_ours:.4f} | {rw_peer:.4f} | {rw_ours - rw_peer:+.4f} | "
              f"{max(abs(d) for d in dev):.3f} | {rw_fixed:.1e} | {1e3 * t_ours:.1f} / {1e3 * t_peer:.1f} | "
              f"{fit_ours:.1f} / {fit_peer:.1f} |")
        if abs(rw_ours - rw_peer) > 0.01 or max(abs(d) for d in dev) > 0.1 or rw_fixed > 1e-3:
            failures.append(label)
    print("all within targets" if not failures else f"OUTSIDE TARGETS: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
