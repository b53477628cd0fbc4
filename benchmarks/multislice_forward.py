"""Multislice 4D-STEM: time per diffraction pattern, emverse vs abTEM, same potential and probe.

    python benchmarks/multislice_forward.py [--positions 64] [--repeats 9] [--dtype float32]

Realistic (MEP-Diffusion) sizes: a (16, 100, 100) SrTiO3 phase volume at
1.6 Å × 0.2 Å × 0.2 Å, 300 kV, 21.4 mrad, 200 Å defocus, Cs 5000 Å, scan positions on a
0.512 Å grid (the paper's 26 × 26 = 676; ``--positions`` takes the first N). Both codes
use the same abTEM potential slices (emverse's phase = σ·V), the same probe and
positions, one thread (pinned in this script before abTEM is imported, dask
synchronous). abTEM's wave functions are complex64 whatever is asked, so the float64
case compares emverse float64 with abTEM's only precision.

Each repeat times both sides back to back (harness.interleaved); printed are min and
median per pattern and, last, the ratio emverse / abTEM (< 1: emverse is faster), for
the forward pass; then emverse's forward + backward per pattern and its peak memory, and
the relative L2 difference of the two 4D-STEM stacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Timing, interleaved, peak_memory, pin_threads, record, report, timed  # noqa: E402

pin_threads(1)  # before abTEM (numba, dask, FFT) is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402


def per_pattern(timing: Timing, n: int) -> Timing:
    return Timing([t / n for t in timing.times])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 100, 100), help="depth H W (voxels)")
    parser.add_argument("--positions", type=int, default=64, help="scan positions timed (≤ 676)")
    parser.add_argument("--batch", type=int, default=64, help="scan positions per emverse call")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    import abtem
    from emverse_multislice.ptychography import MultislicePtychography
    from emverse_multislice.render import load_structure, orient_structure

    depth, h, w = args.shape
    sampling, dz, voltage = 0.2, 1.6, 300.0
    atoms = orient_structure(load_structure("builtin:srtio3"), (h * sampling, w * sampling, depth * dz))
    potential = abtem.Potential(atoms, gpts=(h, w), slice_thickness=(dz,) * depth)
    potential = potential.build(lazy=False).compute()
    volume = torch.tensor(abtem.core.energy.energy2sigma(voltage * 1e3) * np.asarray(potential.array),
                          dtype=dtype)[None]

    model = MultislicePtychography(
        voltage_kv=voltage, semiangle_mrad=21.4, defocus_angstrom=200.0, cs_angstrom=5000.0,
        sampling_angstrom=sampling, slice_thickness_angstrom=dz, object_shape=(depth, h, w),
        scan_shape=(26, 26), scan_step_angstrom=0.512,
    )  # float64 operators, cast to the input's precision in forward
    n = min(args.positions, model.n_scan)
    positions = model.positions_angstrom[:n].double().numpy()
    probe = abtem.Probe(energy=voltage * 1e3, semiangle_cutoff=21.4, defocus=200.0, Cs=5000.0)
    probe.grid.match(potential)
    scan = abtem.CustomScan(positions)
    chunks = torch.arange(n).split(args.batch)
    out = {}

    def run_abtem():
        waves = probe.multislice(potential=potential, scan=scan, lazy=False)
        out["abtem"] = np.asarray(waves.diffraction_patterns(max_angle=None, fftshift=True).compute().array)

    def run_forward():
        with torch.no_grad():
            out["emverse"] = torch.cat([model(volume, scan_indices=c) for c in chunks], dim=1)

    def run_backward():
        x = volume.clone().requires_grad_(True)
        for c in chunks:
            model(x, scan_indices=c).sqrt().sum().backward()

    print(f"volume {depth}×{h}×{w} (1.6 Å × 0.2 Å²), {n} positions, {args.dtype}, "
          f"threads {torch.get_num_threads()}, {args.repeats} repeats")
    ours, peer = interleaved(run_forward, run_abtem, args.repeats)
    mine = out["emverse"][0].double().numpy()
    rel = float(np.linalg.norm(mine - out["abtem"]) / np.linalg.norm(out["abtem"]))
    record(f"multislice {args.dtype}: relative L2 difference of the two 4D-STEM stacks", rel, "")
    backward = per_pattern(timed(run_backward, max(3, args.repeats // 3)), n)
    record(f"multislice {args.dtype}: emverse forward + backward per pattern (min)", backward.min * 1e3, "ms")
    record(f"multislice {args.dtype}: emverse forward + backward peak memory ({n} positions)",
           peak_memory(run_backward), "MiB")
    report(f"multislice SrTiO3 {depth}x{h}x{w} {args.dtype}, per pattern", per_pattern(ours, n),
           per_pattern(peer, n), "abTEM multislice", "ms")


if __name__ == "__main__":
    main()
