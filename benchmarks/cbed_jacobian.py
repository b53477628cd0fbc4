"""bloch.cbed's perturbation-theory Jacobian against one-sided finite differences (the
``ForwardModel.jacobian`` default the CBED correction used before), and what it saves in the
correction's mode search.

    python benchmarks/cbed_jacobian.py [--rows 12] [--threads 1] [--locate]

1. The Jacobian of ``--rows`` patterns (the correction's default 12 starts; MgB2 [010], the demo's
   32 px detector and 17 beams) by both ways, interleaved: prints the ratio of times and their
   difference (relative Frobenius norm; the finite differences' own error is ≈ 1e-6).
2. With ``--locate``: ``core.laplace``'s mode search (screen, scan, Levenberg–Marquardt) on the
   demo recipe's pattern (seed 21), once with each Jacobian; prints both times and the mode found.

Threads are pinned (--threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import interleaved, pin_threads, record, report  # noqa: E402

FORWARD = dict(structure="MgB2", voltage_kv=200.0, zone_axis=(0, 1, 0), convergence_semiangle_mrad=3.0,
               detector_pixels=32, g_max=0.8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--locate", action="store_true")
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import torch
    from emverse.interfaces import ForwardModel
    from emverse_bloch.cbed import BlochCBED

    model = BlochCBED(**FORWARD)
    space = model.parameter_space
    x = space.denormalise(torch.rand(args.rows, len(space), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64) * 1.8 - 0.9)
    _, analytic = model.jacobian(x)
    _, differences = ForwardModel.jacobian(model, x)
    live = analytic.flatten(2).norm(dim=2) > 0  # U12 has no effect at [010]
    error = ((analytic - differences).flatten(2).norm(dim=2)[live] / analytic.flatten(2).norm(dim=2)[live]).max()
    print(f"  largest relative difference per column: {float(error):.2e}")
    ours, peer = interleaved(lambda: model.jacobian(x), lambda: ForwardModel.jacobian(model, x),
                             repeats=args.repeats)
    report(f"Jacobian of {args.rows} MgB2 CBED patterns (32 px, {model.n_beams} beams)", ours, peer,
           "one-sided differences")
    if args.locate:
        import emverse
        from emverse.builtin.corrections import LaplaceMixture
        from emverse.likelihoods import PoissonLikelihood
        from safetensors.torch import load_file

        out = emverse.run(str(Path(__file__).resolve().parents[1] / "recipes" / "cbed-mgb2-physics.toml"),
                          {"options.n_ppc": 0})
        saved = load_file(out.run_dir / "posterior.safetensors")
        likelihood = PoissonLikelihood(1000.0)

        class Differences(BlochCBED):
            jacobian = ForwardModel.jacobian

        for name, m in (("perturbation theory", model), ("one-sided differences", Differences(**FORWARD))):
            started = time.perf_counter()
            modes, diagnostics = LaplaceMixture().locate(saved["approximate"][0], m, likelihood,
                                                         saved["observation"], space, torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - started
            best = space.denormalise(modes[0]["mean"][None])[0]
            print(f"  locate with {name}: {seconds:.1f} s, best mode thickness {float(best[-1]):.2f} Å, "
                  f"ℓ {modes[0]['nll']:.2f}")
            record(f"core.laplace locate on the demo pattern, {name}", seconds, "s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
