"""Benchmark the emverse-bloch solver: eig vs expm, float32 vs float64, N beams, vs abTEM.

For MgB2 [010] at 200 kV, the N beams nearest the origin (|S_g| ≤ 0.05 Å⁻¹ at the
zone axis) are solved for one thickness (2800 Å):

* "one": one incident direction (structure matrix assembly + solve);
* "batch": ``--batch`` incident directions at once (tilts within 3 mrad), the
  CBED/3D-ED workload; the structure factors are computed once;
* abTEM: ``abtem.BlochWaves(...).calculate_diffraction_patterns(t, lazy=False)``
  with the same beams (eig route), timed per direction (looped for the batch,
  extrapolated from ``--abtem-repeats`` directions); the ratio is abTEM / ours.

Usage: OMP_NUM_THREADS=1 python benchmarks/bloch_solver.py [--sizes 50 100 200 400]
       [--batch 1000] [--repeats 3]
Times are wall-clock seconds (median of repeats) on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from emverse_bloch.crystal import mgb2
from emverse_bloch.geometry import select_beams, zone_axis_orientation
from emverse_bloch.simulate import wavenumber_for, zone_axis_intensities


def nearest_beams(crystal, orientation, k, n):
    beams = select_beams(crystal, orientation, k, g_max=6.0, sg_max=0.2)
    g = np.linalg.norm(crystal.g_vectors(beams), axis=1)
    return beams[np.argsort(g, kind="stable")[:n]], float(np.sort(g)[n - 1])


def timed(fn, repeats):
    fn()  # warm-up (first-call allocations, abTEM's numba jit)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--abtem-repeats", type=int, default=5)
    parser.add_argument("--thickness", type=float, default=2800.0)
    args = parser.parse_args(argv)

    crystal = mgb2()
    za = (0, 1, 0)
    orientation = zone_axis_orientation(crystal, za)
    k_vac = wavenumber_for(crystal, 200.0, mip_corrected=False)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    header = f"{'N':>4} {'method':>6} {'dtype':>8} {'one (s)':>9} {'batch (s)':>10} {'per dir (ms)':>12}"
    print(header)
    rows = []
    for n in args.sizes:
        beams, g_edge = nearest_beams(crystal, orientation, k_vac, n)
        tilt = 3e-3 * (2 * torch.rand(2, args.batch, generator=gen, dtype=torch.float64) - 1)
        for method in ("eig", "expm"):
            for dtype in (torch.float32, torch.float64):
                def one(beams=beams, method=method, dtype=dtype):
                    zone_axis_intensities(crystal, za, [args.thickness], beams=beams, method=method,
                                          dtype=dtype, mip_corrected=False)

                def batch(beams=beams, method=method, dtype=dtype, tilt=tilt):
                    zone_axis_intensities(crystal, za, [args.thickness], beams=beams, method=method,
                                          dtype=dtype, mip_corrected=False,
                                          tilt_rad=(tilt[0].to(dtype), tilt[1].to(dtype)))

                with torch.no_grad():
                    t_one = timed(one, args.repeats)
                    t_batch = timed(batch, 1)
                rows.append((n, method, str(dtype), t_one, t_batch))
                print(f"{n:>4} {method:>6} {str(dtype)[6:]:>8} {t_one:>9.4f} {t_batch:>10.3f} "
                      f"{1e3 * t_batch / args.batch:>12.3f}")
        try:
            from abtem.bloch import BlochWaves, StructureFactor
        except ImportError:
            print("abtem not installed: no comparison")
            continue
        sf = StructureFactor(crystal.to_ase(), g_max=2 * g_edge * 1.0001, parametrization="lobato",
                             cutoff="hard")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bw = BlochWaves(sf, energy=200e3, sg_max=0.2, g_max=g_edge * 1.0001,
                            orientation_matrix=orientation)
            t_abtem = timed(lambda bw=bw: bw.calculate_diffraction_patterns(args.thickness, lazy=False),
                            args.abtem_repeats)
        ours = [r for r in rows if r[0] == n and r[1] == "eig" and r[2] == str(torch.float64)][0]
        print(f"{n:>4} abTEM BlochWaves ({len(bw)} beams): one {t_abtem:.4f} s, batch (extrapolated) "
              f"{t_abtem * args.batch:.2f} s; ratio abTEM/ours: one {t_abtem / ours[3]:.2f}x, "
              f"batch {t_abtem * args.batch / ours[4]:.2f}x")


if __name__ == "__main__":
    main()
