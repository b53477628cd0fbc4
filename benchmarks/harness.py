"""The one timing harness every peer benchmark uses.

Rules it enforces (so that a ratio means what it says):

* threads are pinned inside the script, before any work: torch (intra- and inter-op),
  the BLAS/OpenMP pools numpy and scipy use (threadpoolctl), numexpr/MKL/OpenBLAS
  through their environment variables, and dask's scheduler (synchronous);
* both sides run in one process, interleaved: each repeat times emverse and the peer
  back to back, alternating which goes first, so that a slow spell on the machine
  hits both;
* each side is warmed up first (caches, kernels, lazily built tables);
* the minimum and the median of ``repeats`` (≥ 9 by default) are printed, and the
  ratio emverse / peer (< 1: emverse is faster) last, on a line that starts with
  ``RATIO`` so that ``benchmarks/run_all.py`` can collect it into one table.

``peak_memory(fn)`` measures the peak resident memory a call adds, in a forked child
process (Linux: ``/proc/self/clear_refs`` resets the high-water mark), so it includes
torch's CPU allocations, which ``tracemalloc`` does not see.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def pin_threads(n: int = 1) -> None:
    """Use ``n`` threads everywhere: call at the top of a benchmark, before importing peers."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set once in this process (parallel work has started)
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scipy's stack
        pass
    try:
        import dask

        dask.config.set(scheduler="synchronous")
    except ImportError:  # pragma: no cover
        pass


class Timing:
    """Wall times (s) of one side over the repeats."""

    def __init__(self, times: list[float]):
        self.times = times

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def wall_time(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(ours: Callable[[], object], peer: Callable[[], object], repeats: int = 9,
                warmup: int = 1) -> tuple[Timing, Timing]:
    """Time both callables ``repeats`` times, back to back, alternating which goes first."""
    for _ in range(warmup):
        ours()
        peer()
    mine, theirs = [], []
    for i in range(repeats):
        if i % 2 == 0:
            mine.append(wall_time(ours))
            theirs.append(wall_time(peer))
        else:
            theirs.append(wall_time(peer))
            mine.append(wall_time(ours))
    return Timing(mine), Timing(theirs)


def timed(fn: Callable[[], object], repeats: int = 9, warmup: int = 1) -> Timing:
    """Time one callable (for figures without a peer, e.g. a backward pass)."""
    for _ in range(warmup):
        fn()
    return Timing([wall_time(fn) for _ in range(repeats)])


def report(case: str, ours: Timing, peer: Timing, peer_name: str, unit: str = "s") -> float:
    """Print both sides' min/median and, last, the ratio of minima (emverse / peer)."""
    scale = {"s": 1.0, "ms": 1e3}[unit]
    print(f"  {case}: emverse min {ours.min * scale:.4g} {unit}, median {ours.median * scale:.4g} {unit}"
          f" | {peer_name} min {peer.min * scale:.4g} {unit}, median {peer.median * scale:.4g} {unit}")
    ratio = ours.min / peer.min
    print(f"RATIO\t{case}\t{ratio:.3f}\t{ours.median / peer.median:.3f}\t{peer_name}")
    sys.stdout.flush()
    return ratio


def record(case: str, value: float, unit: str) -> None:
    """A figure without a peer (peak memory, error bound), collected into the same table."""
    print(f"FIGURE\t{case}\t{value:.6g}\t{unit}")
    sys.stdout.flush()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(fn: Callable[[], object]) -> float:
    """Peak resident memory (MiB) that one call of ``fn`` adds, measured in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset VmHWM to the current RSS
            base = _status_kib("VmRSS")
            fn()
            value = (_status_kib("VmHWM") - base) / 1024.0
        except BaseException:  # noqa: BLE001 - report any failure as NaN to the parent
            value = float("nan")
        os.write(write, repr(value).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return float(text)


def add_physics_run_arguments(parser) -> None:
    """--run / --patterns / --run-seed: the run of ``recipes/cbed-mgb2-physics.toml`` a CBED
    posterior benchmark reads (:func:`cbed_physics_run`)."""
    from pathlib import Path

    parser.add_argument("--run", type=Path, default=None, help="a run of recipes/cbed-mgb2-physics.toml "
                        "(default: a new one of --patterns patterns, seed --run-seed)")
    parser.add_argument("--patterns", type=int, default=10)
    parser.add_argument("--run-seed", type=int, default=1021)


def cbed_physics_run(run_dir=None, *, seed: int, patterns: int):
    """A finished run of ``recipes/cbed-mgb2-physics.toml`` (CDI draws + corrected posterior
    of ``patterns`` simulated patterns): ``run_dir`` when given, else a new run with ``seed``."""
    from pathlib import Path

    if run_dir is not None:
        return Path(run_dir)
    import emverse

    started = time.perf_counter()
    output = emverse.run(str(Path(__file__).resolve().parents[1] / "recipes" / "cbed-mgb2-physics.toml"),
                         {"seed": seed, "options.n_observations": patterns, "options.n_ppc": 0})
    print(f"corrected posteriors: {output.run_dir} ({time.perf_counter() - started:.0f} s)")
    return output.run_dir


def physics_run_parts(run_dir):
    """The forward model (``bloch.cbed`` from the run's recipe), its Poisson likelihood (the
    recipe's dose), the run's posterior.safetensors and metrics.json."""
    import json
    from pathlib import Path

    from emverse.api import load
    from emverse.likelihoods import PoissonLikelihood
    from emverse_bloch.cbed import BlochCBED
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    recipe = load(str(run_dir / "recipe.toml")).to_dict()
    model = BlochCBED(**{k: v for k, v in recipe["forward_model"].items() if k != "type"})
    likelihood = PoissonLikelihood(recipe["likelihood"]["dose"])
    return (model, likelihood, load_file(run_dir / "posterior.safetensors"),
            json.loads((run_dir / "metrics.json").read_text()))


def shipped_regression():
    """The regression baseline shipped with emverse-cdi (``builtin:regression-mgb2-small``)."""
    from emverse_cdi.prior import RegressionPrior, resolve_checkpoint

    return RegressionPrior(checkpoint=str(resolve_checkpoint("builtin:regression-mgb2-small.safetensors")),
                           depth=10, width=8, stem="small", crop_size=28, input_size=28)

