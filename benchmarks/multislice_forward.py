"""Time per diffraction pattern of the emverse multislice model vs abTEM, same potential.

Realistic (MEP-Diffusion) sizes by default: a (16, 100, 100) phase volume at
1.6 Å × 0.2 Å × 0.2 Å, 300 kV, 21.4 mrad, 200 Å defocus, Cs 5000 Å, scan
positions on a 0.512 Å grid (the paper's 26 × 26 = 676; ``--positions``
takes the first N to keep a run short on a shared CPU). Both codes use the
same abTEM potential slices (our phase = σ·V), the same probe and positions,
float32, and the same thread count. Printed: seconds per pattern for abTEM
(forward), emverse forward (no grad), emverse forward + backward (gradient of
a loss w.r.t. the volume), the ratios, and the relative L2 difference of the
two 4D-STEM stacks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multislice_forward.py --positions 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 100, 100), help="depth H W (voxels)")
    parser.add_argument("--positions", type=int, default=64, help="scan positions timed (≤ 676)")
    parser.add_argument("--batch", type=int, default=64, help="scan positions per emverse call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import abtem
    from emverse_multislice.ptychography import MultislicePtychography
    from emverse_multislice.render import load_structure, orient_structure

    depth, h, w = args.shape
    sampling, dz, voltage = 0.2, 1.6, 300.0
    atoms = orient_structure(load_structure("builtin:srtio3"), (h * sampling, w * sampling, depth * dz))
    potential = abtem.Potential(atoms, gpts=(h, w), slice_thickness=(dz,) * depth)
    potential = potential.build(lazy=False).compute()
    volume = torch.tensor(abtem.core.energy.energy2sigma(voltage * 1e3) * np.asarray(potential.array),
                          dtype=torch.float32)[None]

    model = MultislicePtychography(
        voltage_kv=voltage, semiangle_mrad=21.4, defocus_angstrom=200.0, cs_angstrom=5000.0,
        sampling_angstrom=sampling, slice_thickness_angstrom=dz, object_shape=(depth, h, w),
        scan_shape=(26, 26), scan_step_angstrom=0.512,
    )
    n = min(args.positions, model.n_scan)
    positions = model.positions_angstrom[:n].numpy()

    probe = abtem.Probe(energy=voltage * 1e3, semiangle_cutoff=21.4, defocus=200.0, Cs=5000.0)
    probe.grid.match(potential)
    scan = abtem.CustomScan(positions)

    reference = {}

    def run_abtem():
        waves = probe.multislice(potential=potential, scan=scan, lazy=False)
        reference["y"] = np.asarray(waves.diffraction_patterns(max_angle=None, fftshift=True).compute().array)

    chunks = torch.arange(n).split(args.batch)

    def run_forward():
        with torch.no_grad():
            reference["mine"] = torch.cat([model(volume, scan_indices=c) for c in chunks], dim=1)

    x = volume.clone().requires_grad_(True)

    def run_backward():
        for c in chunks:
            loss = model(x, scan_indices=c).sqrt().sum()
            loss.backward()

    run_abtem(), run_forward(), run_backward()  # warm-up (numba JIT, FFT plans)
    t_abtem = _best_of(run_abtem, args.repeats) / n
    t_fwd = _best_of(run_forward, args.repeats) / n
    t_bwd = _best_of(run_backward, args.repeats) / n
    mine = reference["mine"][0].numpy()
    rel = float(np.linalg.norm(mine - reference["y"]) / np.linalg.norm(reference["y"]))

    print(f"volume {depth}×{h}×{w} (1.6 Å × 0.2 Å²), {n} positions, float32, {args.threads} thread(s)")
    print(f"abTEM multislice          {t_abtem * 1e3:8.3f} ms / pattern")
    print(f"emverse forward           {t_fwd * 1e3:8.3f} ms / pattern   ratio abTEM/emverse = {t_abtem / t_fwd:.2f}")
    print(f"emverse forward+backward  {t_bwd * 1e3:8.3f} ms / pattern   ratio abTEM/emverse = {t_abtem / t_bwd:.2f}")
    print(f"relative L2 difference of the two stacks (float32): {rel:.2e}")
    return {"abtem": t_abtem, "forward": t_fwd, "forward_backward": t_bwd, "relative_l2": rel}


if __name__ == "__main__":
    main()
