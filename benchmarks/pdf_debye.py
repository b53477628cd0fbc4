"""Benchmark: G(r) of Au201 and Au2075 FCC particles, emverse-pdf vs DebyeCalculator, one process.

    python benchmarks/pdf_debye.py [--sizes 201,2075] [--dtypes float32,float64] [--repeats 9]

Both codes compute G(r) with the same settings (X-ray, qmin 1, qmax 30 Å⁻¹, qstep
π/(rmax + rstep), qdamp 0.04 Å⁻¹, B 0.3 Å², r 0–30 Å step 0.01 Å, no delta2), on the CPU,
one thread (pinned here, before DebyeCalculator is imported), in the same dtype, each
with its own default pair-sum algorithm. Timings: both sides interleaved, warmed up,
min and median of ``--repeats``; the RATIO line is emverse / DebyeCalculator (< 1:
emverse is faster).

Accuracy: Rw of each side's G(r) against the exact float64 Debye sum (emverse's
``method="direct"``, every pair, float64); DebyeCalculator's ``gr`` is 0.5 × G(r)
(PEERS.md), so it is doubled first. FIGURE lines: those Rw values, emverse's
forward + backward time (G(r) → sum of squares → d/dpositions), and the peak resident
memory (MiB, ``harness.peak_memory``, large allocations forced onto fresh pages) that one
emverse forward + backward, one emverse forward and one DebyeCalculator forward add.
"""

from __future__ import annotations

import argparse
import ctypes
import warnings

from harness import interleaved, peak_memory, pin_threads, record, report, timed

pin_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from emverse_pdf.debye import compute_gr  # noqa: E402
from emverse_pdf.params import DebyeParams  # noqa: E402
from emverse_pdf.structures import fcc_sphere  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from debyecalculator import DebyeCalculator  # noqa: E402

SETTINGS = DebyeParams(qmin=1.0, qmax=30.0, qdamp=0.04, delta2=0.0, biso=0.3, rmin=0.0, rmax=30.0, rstep=0.01)
PEER_SETTINGS = dict(qmin=1.0, qmax=30.0, qdamp=0.04, rmin=0.0, rmax=30.0, rstep=0.01, biso=0.3, device="cpu")


def particle(n_atoms: int) -> np.ndarray:
    """The ``n_atoms`` atoms of an FCC Au crystal (a = 4.08 Å) nearest to an atom, in Å
    (201 is the closed 9.5 Å sphere of the peer tests)."""
    big = fcc_sphere("Au", 4.08, 4.08 * (n_atoms / 4) ** (1 / 3) + 6.0).positions
    order = np.argsort(np.linalg.norm(big, axis=1), kind="stable")
    return big[order[:n_atoms]]


def fresh_pages(fn):
    """``fn`` run with glibc serving every allocation >= 64 KiB from fresh pages (fixed
    M_MMAP_THRESHOLD), so that ``peak_memory``'s child counts them even where the parent's
    freed heap could have been reused; called inside the child only."""

    def run():
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        return fn()

    return run


def rw(calc: np.ndarray, ref: np.ndarray) -> float:
    calc, ref = np.asarray(calc, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.sqrt(((calc - ref) ** 2).sum() / (ref**2).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="201,2075")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    # what the measurement itself adds (the forked child, libraries touching memory): subtract it
    record("peak memory of an empty call (measurement overhead)", peak_memory(fresh_pages(lambda: None)), "MiB")
    for n in (int(s) for s in args.sizes.split(",")):
        positions = particle(n)
        exact = compute_gr(torch.tensor(positions)[None], "Au", settings=SETTINGS, method="direct")[1][0].numpy()
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            peer = DebyeCalculator(**PEER_SETTINGS, dtype=dtype)
            x = torch.tensor(positions, dtype=dtype)[None]
            source = (["Au"] * n, positions)

            def ours(x=x):
                return compute_gr(x, "Au", settings=SETTINGS)[1]

            def theirs(peer=peer, source=source):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return peer.gr(source)[1]

            def forward_backward(x=x):
                xg = x.clone().requires_grad_(True)
                compute_gr(xg, "Au", settings=SETTINGS)[1].square().sum().backward()

            case = f"G(r) Au{n} {dtype_name}"
            mine, peers = interleaved(ours, theirs, repeats=args.repeats)
            record(f"{case} Rw emverse vs exact float64 sum", rw(ours()[0].numpy(), exact), "")
            record(f"{case} Rw DebyeCalculator (2 gr) vs exact", rw(2.0 * np.asarray(theirs()), exact), "")
            record(f"{case} emverse forward+backward min", timed(forward_backward, repeats=3).min, "s")
            record(f"{case} emverse forward+backward peak memory", peak_memory(fresh_pages(forward_backward)), "MiB")
            record(f"{case} emverse forward peak memory", peak_memory(fresh_pages(ours)), "MiB")
            record(f"{case} DebyeCalculator forward peak memory", peak_memory(fresh_pages(theirs)), "MiB")
            report(case, mine, peers, "DebyeCalculator 1.1.1")


if __name__ == "__main__":
    main()
