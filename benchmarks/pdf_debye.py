"""Benchmark: G(r) of 50 / 256 / 2000-atom Au particles, emverse-pdf vs DebyeCalculator, same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pdf_debye.py [--dtype float32] [--repeats 5]

Both codes use the same settings (X-ray, qmin 1, qmax 30 Å⁻¹, qdamp 0.04 Å⁻¹, B 0.3 Å²,
r 0-30 Å step 0.01 Å, no delta2), CPU, the same dtype, and are warmed up first (form
factors / kernels cached). Prints the median wall time per call and the ratio
emverse-pdf / DebyeCalculator (< 1: emverse-pdf is faster), plus the Rw between the two
G(r) after the explicit factor-2 conversion, and emverse-pdf's forward+backward time.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from emverse_pdf.debye import compute_gr
from emverse_pdf.params import DebyeParams
from emverse_pdf.structures import fcc_sphere

SETTINGS = DebyeParams(qmin=1.0, qmax=30.0, qdamp=0.04, delta2=0.0, biso=0.3, rmin=0.0, rmax=30.0, rstep=0.01)


def particle(n_atoms: int) -> np.ndarray:
    """The ``n_atoms`` atoms of an FCC Au crystal (a = 4.08 Å) nearest to an atom (Å)."""
    big = fcc_sphere("Au", 4.08, 4.08 * (n_atoms / 4) ** (1 / 3) + 6.0).positions
    order = np.argsort(np.linalg.norm(big, axis=1), kind="stable")
    return big[order[:n_atoms]]


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="50,256,2000")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from debyecalculator import DebyeCalculator

        peer = DebyeCalculator(qmin=1.0, qmax=30.0, qdamp=0.04, rmin=0.0, rmax=30.0, rstep=0.01, biso=0.3,
                               device="cpu", dtype=dtype)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}")
    print(f"{'atoms':>6} {'emverse-pdf (s)':>16} {'debyecalculator (s)':>20} {'ratio':>7} {'Rw(G, 2*gr)':>12} {'fwd+bwd (s)':>12}")
    for n in (int(s) for s in args.sizes.split(",")):
        positions = particle(n)
        x = torch.tensor(positions, dtype=dtype)[None]
        source = (["Au"] * n, positions)

        def ours(x=x):
            return compute_gr(x, "Au", settings=SETTINGS)[1]

        def theirs(source=source):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return peer.gr(source)[1]

        t_ours = timed(ours, args.repeats)
        t_peer = timed(theirs, args.repeats)
        g = ours()[0].double().numpy()
        gr = 2.0 * np.asarray(theirs(), dtype=np.float64)
        rw = float(np.sqrt(((g - gr) ** 2).sum() / (gr**2).sum()))

        def backward(x=x):
            xg = x.clone().requires_grad_(True)
            compute_gr(xg, "Au", settings=SETTINGS)[1].square().sum().backward()

        t_grad = timed(backward, max(1, args.repeats // 2))
        print(f"{n:>6} {t_ours:>16.4f} {t_peer:>20.4f} {t_ours / t_peer:>7.2f} {rw:>12.2e} {t_grad:>12.4f}")


if __name__ == "__main__":
    main()
