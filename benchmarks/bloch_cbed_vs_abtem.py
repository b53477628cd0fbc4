"""MgB2 [010] CBED: emverse-bloch (Bloch waves, one solve per pixel) vs abTEM multislice.

Both at 200 kV, convergence semi-angle 3 mrad (non-overlapping discs), thickness
``--cells`` × b (b = 3.086 Å along the beam), no thermal damping (U = 0; the
multislice is a single static configuration), Lobato potentials, no tilt.

abTEM: a focused probe (defocus 0) on an orthogonal 2a+b × −c × b cell tiled
``--tile`` times laterally, ``--sub`` slices per b, finite projection; the CBED
pattern is |FFT ψ_exit|². Probe-position independent because the discs do not
overlap. emverse-bloch: ``bloch.cbed`` with its F overrides set to the
independent-atom values (U = 0) and g_max / sg_max given on the command line.

The comparison number is the fraction of the intensity in each disc (sum over
the disc / total for abTEM; mean over the disc of |ψ_g|² for the Bloch pattern),
which does not depend on either pixel grid. Writes a PNG (side-by-side patterns,
disc fractions) to ``--out``.

This is a physics check, not a race: the two methods differ (a probe multislice on a
tiled cell vs one Bloch solve per disc pixel), so the wall times are printed as
FIGURE lines for orientation, without a ratio; the Bloch-wave speed comparison at
equal beams is ``benchmarks/bloch_solver.py`` (abTEM's BlochWaves) and
``benchmarks/bloch_cbed_vs_py4dstem.py`` (a full pattern). Threads are pinned to one
before abTEM is imported.

Usage: python benchmarks/bloch_cbed_vs_abtem.py --out cbed.png
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import pin_threads, record  # noqa: E402

pin_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def orthogonal_mgb2(crystal):
    from ase import Atoms
    from ase.build import make_supercell

    ortho = make_supercell(crystal.to_ase(), [[2, 1, 0], [0, 0, -1], [0, 1, 0]])
    lengths = ortho.cell.lengths()
    return Atoms(ortho.get_chemical_symbols(), scaled_positions=ortho.get_scaled_positions(),
                 cell=np.diag(lengths), pbc=True), lengths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=32, help="thickness in unit cells along b")
    parser.add_argument("--tile", type=int, nargs=2, default=(8, 12))
    parser.add_argument("--sub", type=int, default=4, help="slices per b")
    parser.add_argument("--sampling", type=float, default=0.05, help="Å")
    parser.add_argument("--g-max", type=float, default=2.5)
    parser.add_argument("--sg-max", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=3.0, help="mrad")
    parser.add_argument("--out", default="cbed_vs_abtem.png")
    args = parser.parse_args(argv)

    import abtem
    from emverse.electron import wavelength_angstrom
    from emverse_bloch.cbed import OVERRIDE_HKL, BlochCBED
    from emverse_bloch.crystal import mgb2
    from emverse_bloch.structure_factors import structure_factors

    crystal = mgb2()
    atoms, lengths = orthogonal_mgb2(crystal)
    thickness = args.cells * lengths[2]
    lam = wavelength_angstrom(200.0)

    t0 = time.perf_counter()
    stack = atoms * (args.tile[0], args.tile[1], args.cells)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        potential = abtem.Potential(stack, sampling=args.sampling, slice_thickness=lengths[2] / args.sub,
                                    parametrization="lobato", projection="finite")
        probe = abtem.Probe(energy=200e3, semiangle_cutoff=args.alpha)
        probe.grid.match(potential)
        exit_wave = probe.multislice(potential, scan=(0.0, 0.0)).compute(progress_bar=False)
        dp = exit_wave.diffraction_patterns(max_angle=None, block_direct=False).compute(progress_bar=False)
    a_pattern = np.asarray(dp.array).squeeze()
    t_abtem = time.perf_counter() - t0
    dk = np.asarray(dp.sampling)  # Å⁻¹ per pixel
    nx, ny = a_pattern.shape
    kx = (np.arange(nx) - nx // 2) * dk[0]
    ky = (np.arange(ny) - ny // 2) * dk[1]

    model = BlochCBED(detector_pixels=64, detector_pixel_size_um=40.0, camera_length_mm=100.0,
                      g_max=args.g_max, sg_max=args.sg_max, convergence_semiangle_mrad=args.alpha,
                      mip_corrected=False)
    x = model.default_parameters()
    x[0, :6] = 0.0
    x[0, 10:12] = 0.0
    x[0, 12] = thickness
    structure = model.structure_from_vector(x[0])
    x[0, 6:10] = structure_factors(crystal, OVERRIDE_HKL, structure).real
    t0 = time.perf_counter()
    with torch.no_grad():
        b_pattern = model(x)[0].numpy()
    t_bloch = time.perf_counter() - t0

    # disc fractions, for the discs fully inside both fields of view
    g_lab = model.g_lab.numpy()
    alpha = args.alpha * 1e-3
    kk_x, kk_y = np.meshgrid(kx, ky, indexing="ij")
    rows = []
    total = a_pattern.sum()
    half_fov_b = (64 // 2 - 1) * model.pixel_mrad * 1e-3
    pixel = np.arange(64) - 32
    tx, ty = np.meshgrid(pixel * model.pixel_mrad * 1e-3, pixel * model.pixel_mrad * 1e-3, indexing="xy")
    for i, h in enumerate(model.beams):
        centre = g_lab[i, :2]
        if np.any(np.abs(centre * lam) + alpha > half_fov_b):
            continue
        in_a = (kk_x - centre[0]) ** 2 + (kk_y - centre[1]) ** 2 <= (alpha / lam) ** 2
        in_b = (tx - lam * centre[0]) ** 2 + (ty - lam * centre[1]) ** 2 <= alpha**2
        frac_a = a_pattern[in_a].sum() / total
        frac_b = b_pattern[in_b].mean()
        rows.append((tuple(int(v) for v in h), frac_a, frac_b))
    print(f"thickness {thickness:.1f} Å; abTEM multislice {t_abtem:.1f} s, bloch.cbed {t_bloch:.1f} s "
          f"({model.n_beams} beams, {model.n_directions} solves)")
    print(f"{'hkl':>12} {'abTEM':>9} {'bloch':>9} {'rel diff':>9}")
    for h, fa, fb in rows:
        print(f"{str(h):>12} {fa:9.5f} {fb:9.5f} {(fb - fa) / max(fa, 1e-12):9.3%}")
    worst = max(abs(fb - fa) / max(fa, 1e-12) for _, fa, fb in rows)
    record(f"CBED disc fractions, bloch.cbed ({model.n_beams} beams) vs abTEM multislice: max relative "
           "difference", worst, "")
    record("CBED abTEM multislice wall time (one run)", t_abtem, "s")
    record(f"CBED bloch.cbed wall time (one run, {model.n_directions} solves)", t_bloch, "s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    extent_a = [ky[0] * lam * 1e3, ky[-1] * lam * 1e3, kx[-1] * lam * 1e3, kx[0] * lam * 1e3]
    half = 32 * model.pixel_mrad
    sel_x = np.abs(kx * lam * 1e3) <= half
    sel_y = np.abs(ky * lam * 1e3) <= half
    axes[0].imshow(np.sqrt(a_pattern[np.ix_(sel_x, sel_y)]).T, origin="lower", cmap="inferno",
                   extent=[-half, half, -half, half])
    axes[0].set_title(f"abTEM multislice ({args.sub} slices/b)")
    axes[1].imshow(np.sqrt(b_pattern), origin="lower", cmap="inferno", extent=[-half, half, -half, half])
    axes[1].set_title(f"emverse bloch.cbed ({model.n_beams} beams)")
    for ax in axes[:2]:
        ax.set_xlabel("θx (mrad)")
        ax.set_ylabel("θy (mrad)")
    fa = np.array([r[1] for r in rows])
    fb = np.array([r[2] for r in rows])
    axes[2].loglog(fa, fb, "o")
    lim = [min(fa.min(), fb.min()) * 0.8, max(fa.max(), fb.max()) * 1.2]
    axes[2].plot(lim, lim, "k--", lw=0.8)
    for (h, a_val, b_val) in rows:
        axes[2].annotate("".join(str(v) for v in h), (a_val, b_val), fontsize=7)
    axes[2].set_xlabel("disc intensity fraction, abTEM")
    axes[2].set_ylabel("disc intensity fraction, bloch.cbed")
    axes[2].set_title(f"MgB2 [010], t = {thickness / 10:.1f} nm, α = {args.alpha} mrad")
    fig.tight_layout()
    import os
    from pathlib import Path

    tmp = Path(args.out).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, args.out)  # atomic: never a half-written figure
    print("figure:", args.out)
    _ = extent_a


if __name__ == "__main__":
    main()
