"""Bloch waves, MgB2 [010] at 200 kV: emverse-bloch vs abTEM's BlochWaves, equal beams.

    python benchmarks/bloch_solver.py [--repeats 9] [--batch 16] [--thickness 2800]

Beam sets: |g| ≤ g_max and |S_g| ≤ sg_max at the zone axis, selected by each code
from the same two numbers — 117 beams (g_max 2.0 Å⁻¹, sg_max 0.05 Å⁻¹: the CBED
demo's set) and 269 beams (3.0 Å⁻¹, 0.2 Å⁻¹) — and the script stops if the two
sets differ. (The old script picked emverse's N beams as the N nearest the origin
and gave abTEM g_max = |g_N|: the N-th beam splits a shell of equal |g|, so abTEM
took the whole shell, N + 1 beams.) Lobato f_e, the CIF's U_iso = 0.005 Å² on both
sides (abTEM: thermal_sigma = √U_iso), hard coupling cutoff at 2 g_max, K = 1/λ
(abTEM's convention), one thickness (Å).

Both sides get their structure factors computed once (abTEM: a built
``StructureFactorArray``; emverse: the coupling table U(h)); what is timed per
incident direction is what changes with it: the structure matrix, its
eigendecomposition and the beam intensities.

* "one direction per call": ``BlochWaves.calculate_diffraction_patterns`` vs
  emverse's ``structure_matrix`` + ``intensities`` for a single direction;
* "N directions batched": abTEM called once per direction (it has no batch) with the
  zone-axis beam set (tilting its crystal re-selects beams: 113–116 instead of 117,
  so its calls stay on the zone axis, which costs the same), vs one emverse call for
  N directions within 3 mrad of it (the printed times are for all N; the ratio is
  the same per direction).

emverse picks the real symmetric ``eigh`` (MgB2 is centrosymmetric with the origin
on the inversion centre, so every U_g is real). Figures: the largest intensity
difference of each fast path against emverse's full complex128 solve (the exact
reference), against abTEM, of float32, and of Bethe potentials; the peak memory of
a forward + backward pass with and without the chunked backward.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import interleaved, peak_memory, pin_threads, record, report  # noqa: E402

pin_threads(1)  # before numpy/torch work and before abTEM is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from emverse.electron import potential_prefactor, wavelength_angstrom  # noqa: E402
from emverse_bloch import bloch  # noqa: E402
from emverse_bloch.bethe import propagate_bethe  # noqa: E402
from emverse_bloch.bloch import intensities  # noqa: E402
from emverse_bloch.crystal import mgb2  # noqa: E402
from emverse_bloch.geometry import (  # noqa: E402
    excitation_errors,
    incident_direction,
    metric_diagonal,
    select_beams,
    zone_axis_orientation,
)
from emverse_bloch.structure_factors import structure_factors  # noqa: E402
from emverse_bloch.structure_matrix import CouplingTable, structure_matrix  # noqa: E402

CASES = ((117, 2.0, 0.05), (269, 3.0, 0.2))  # expected beams, g_max (Å⁻¹), sg_max (Å⁻¹)
VOLTAGE_KV = 200.0
BETHE_STRONG = {117: 80, 269: 120}


class EmverseSolver:
    """The per-direction part of the emverse solve, with the structure factors done once."""

    def __init__(self, crystal, orientation, beams, dtype, real=True):
        self.k = 1.0 / wavelength_angstrom(VOLTAGE_KV)
        table = CouplingTable(beams)
        f = structure_factors(crystal, table.hkl)
        u = table.gather(f * (potential_prefactor(VOLTAGE_KV) / crystal.volume))
        self.couplings = u.real.to(dtype) if real else u.to(torch.complex(torch.zeros(1, dtype=dtype),
                                                                          torch.zeros(1, dtype=dtype)).dtype)
        g_lab = torch.as_tensor(crystal.g_vectors(beams) @ orientation.T, dtype=dtype)
        self.g_lab = g_lab
        self.metric = metric_diagonal(g_lab, torch.tensor([0.0, 0.0, 1.0], dtype=dtype), self.k)
        self.dtype = dtype

    def matrix(self, tilt_x, tilt_y):
        direction = incident_direction(torch.as_tensor(tilt_x, dtype=self.dtype),
                                       torch.as_tensor(tilt_y, dtype=self.dtype))
        s = excitation_errors(self.g_lab, direction, self.k)
        return structure_matrix(self.couplings, s, self.k, self.metric)

    def __call__(self, tilt_x, tilt_y, thickness, bethe=0):
        matrix = self.matrix(tilt_x, tilt_y)
        t = torch.tensor([thickness], dtype=self.dtype).expand(*matrix.shape[:-2], 1)
        if bethe:
            psi = propagate_bethe(matrix, t, self.k, bethe, self.metric)
            return psi.real**2 + psi.imag**2
        return intensities(matrix, t, self.k, "eig", self.metric)


def abtem_blochwaves(crystal, orientation, g_max, sg_max):
    from abtem.bloch import BlochWaves, StructureFactor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # isotropic sites: the diagonal of u_cif is U_iso (Å²); abTEM's thermal_sigma = √U_iso
        sigma = {site.element: math.sqrt(float(site.u_cif[0, 0])) for site in crystal.sites}
        sf = StructureFactor(crystal.to_ase(), g_max=2 * g_max, parametrization="lobato", cutoff="hard",
                             thermal_sigma=sigma)
        array = sf.build(lazy=False)
        return BlochWaves(array, energy=VOLTAGE_KV * 1e3, sg_max=sg_max, g_max=g_max,
                          orientation_matrix=orientation)


def abtem_intensities(bw, thickness):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bw.calculate_diffraction_patterns(thickness, lazy=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=16, help="incident directions per batch")
    parser.add_argument("--thickness", type=float, default=2800.0, help="Å")
    parser.add_argument("--memory-directions", type=int, default=1024)
    parser.add_argument("--memory-only", action="store_true", help="skip the timings and accuracy figures")
    args = parser.parse_args(argv)

    crystal = mgb2()
    orientation = zone_axis_orientation(crystal, (0, 1, 0))
    k = 1.0 / wavelength_angstrom(VOLTAGE_KV)
    gen = torch.Generator().manual_seed(0)
    tilt = 3e-3 * (2 * torch.rand(2, args.batch, generator=gen, dtype=torch.float64) - 1)  # rad
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, MgB2 [010], {VOLTAGE_KV} kV, "
          f"t = {args.thickness} Å, {args.batch} directions within 3 mrad, {args.repeats} repeats")
    for expected, g_max, sg_max in () if args.memory_only else CASES:
        beams = select_beams(crystal, orientation, k, g_max, sg_max)
        bw = abtem_blochwaves(crystal, orientation, g_max, sg_max)
        if sorted(map(tuple, beams)) != sorted(map(tuple, bw.hkl)) or len(beams) != expected:
            raise SystemExit(f"beam sets differ: emverse {len(beams)}, abTEM {len(bw)} (expected {expected})")
        n = len(beams)
        print(f"\n{n} beams (g_max {g_max} Å⁻¹, sg_max {sg_max} Å⁻¹), the same set on both sides")
        f64 = EmverseSolver(crystal, orientation, beams, torch.float64)
        f32 = EmverseSolver(crystal, orientation, beams, torch.float32)
        exact = EmverseSolver(crystal, orientation, beams, torch.float64, real=False)

        # accuracy first: every fast path against the full complex128 solve
        with torch.no_grad():
            reference = exact(tilt[0], tilt[1], args.thickness)
            record(f"{n} beams: max |I - I_exact|, real symmetric float64", (f64(tilt[0], tilt[1], args.thickness)
                                                                             - reference).abs().max().item(), "")
            record(f"{n} beams: max |I - I_exact|, float32", (f32(tilt[0].float(), tilt[1].float(), args.thickness)
                                                              .double() - reference).abs().max().item(), "")
            bethe = BETHE_STRONG[n]
            record(f"{n} beams: max |I - I_exact|, Bethe {bethe} strong", (f64(tilt[0], tilt[1], args.thickness, bethe)
                                                                        - reference).abs().max().item(), "")
            on_axis = f64(0.0, 0.0, args.thickness)[0].numpy()
        patterns = abtem_intensities(bw, args.thickness)
        order = {tuple(h): i for i, h in enumerate(beams)}
        ours = on_axis[[order[tuple(h)] for h in patterns.miller_indices]]
        record(f"{n} beams: max |I_emverse - I_abTEM| on the zone axis",
               float(np.abs(ours - np.asarray(patterns.array)).max()), "")

        with torch.no_grad():
            for label, solver, tx, ty in (("float64", f64, tilt[0], tilt[1]),
                                          ("float32", f32, tilt[0].float(), tilt[1].float())):
                one = interleaved(lambda s=solver, x=tx, y=ty: s(x[0], y[0], args.thickness),
                                  lambda bw=bw: abtem_intensities(bw, args.thickness), args.repeats)
                report(f"{n} beams {label}, one direction per call", *one, "abTEM BlochWaves", "ms")
                batched = interleaved(lambda s=solver, x=tx, y=ty: s(x, y, args.thickness),
                                      lambda bw=bw: [abtem_intensities(bw, args.thickness) for _ in range(args.batch)],
                                      args.repeats)
                report(f"{n} beams {label}, {args.batch} directions batched", *batched, "abTEM BlochWaves", "ms")
            folded = interleaved(lambda f64=f64, bethe=bethe: f64(tilt[0], tilt[1], args.thickness, bethe),
                                 lambda bw=bw: [abtem_intensities(bw, args.thickness) for _ in range(args.batch)],
                                 args.repeats)
            report(f"{n} beams float64 Bethe {bethe} strong, {args.batch} directions batched", *folded,
                   "abTEM BlochWaves", "ms")

    # memory of the eig backward pass: a CBED-sized batch of directions, gradient w.r.t. U
    beams = select_beams(crystal, orientation, k, 2.0, 0.05)
    solver = EmverseSolver(crystal, orientation, beams, torch.float64)
    angles = 3e-3 * (2 * torch.rand(2, args.memory_directions, generator=gen, dtype=torch.float64) - 1)

    def forward_backward():
        couplings = solver.couplings.clone().requires_grad_(True)
        direction = incident_direction(angles[0], angles[1])
        s = excitation_errors(solver.g_lab, direction, solver.k)
        matrix = structure_matrix(couplings, s, solver.k, solver.metric)
        t = torch.tensor([args.thickness], dtype=torch.float64).expand(len(angles[0]), 1)
        intensities(matrix, t, solver.k, "eig", solver.metric).sum().backward()

    chunked = peak_memory(forward_backward)
    default_chunk = bloch.BACKWARD_CHUNK_ELEMENTS
    bloch.BACKWARD_CHUNK_ELEMENTS = 2**62  # one chunk: the unbounded backward
    unchunked = peak_memory(forward_backward)
    bloch.BACKWARD_CHUNK_ELEMENTS = default_chunk
    case = f"{len(beams)} beams, {args.memory_directions} directions, forward + backward"
    record(f"peak memory, {case}, unchunked backward", unchunked, "MiB")
    record(f"peak memory, {case}, chunked backward (default)", chunked, "MiB")


if __name__ == "__main__":
    main()
