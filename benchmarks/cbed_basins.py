"""Why the CBED correction misses the true basin: how wide each basin is, and how often a
start from the amortized (CDI) draws lands in it.

    python benchmarks/cbed_basins.py [--run RUN_DIR] [--indices 0,3] [--starts 24] [--no-freeze]
        [--iterations 40] [--space-filling F] [--regression-start] [--no-basins]

RUN_DIR is a finished run of ``recipes/cbed-mgb2-physics.toml`` (its posterior.safetensors holds
each pattern's observation, truth and CDI draws); without it the recipe is run on --patterns
fresh patterns (seed --run-seed). For each pattern, in the forward model's
normalised units u ∈ [−1, 1] (the prior box):

1. *Starts from the CDI draws*: the correction's own screen (every draw scanned in thickness),
   its ``--starts`` best draws refined by its Levenberg–Marquardt; a start "reaches the truth"
   when it ends within 20 nats of ℓ(truth). ``--no-freeze`` keeps every start iterating to the
   end (the correction freezes a start 100 nats behind the best after 8 iterations).
   ``--space-filling F`` replaces that group's values in the starts by a scrambled Sobol design
   over the box (a global search in that group, the others from the CDI draws);
   ``--regression-start`` starts once from the shipped regression baseline's prediction instead.
2. *Basin radius*: starts at the truth with one group of parameters displaced by δ in random
   directions (4 per δ), thickness scanned, then refined: the fraction reaching the truth per
   group (structure factors F, ADPs U, tilts) and δ.

Threads are pinned (--threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    add_physics_run_arguments,
    cbed_physics_run,
    physics_run_parts,
    pin_threads,
    shipped_regression,
)

#: normalised-unit displacements tried per parameter group
DELTAS = {"F": (0.1, 0.25, 0.5), "U": (0.25, 0.5, 1.0), "tilt": (0.02, 0.05, 0.1)}
#: ℓ within this many nats of ℓ(truth) counts as the true basin
REACHED_NATS = 20.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_physics_run_arguments(parser)
    parser.add_argument("--indices", type=str, default="", help="patterns to probe, e.g. 0,3 (default: all)")
    parser.add_argument("--starts", type=int, default=24)
    parser.add_argument("--no-freeze", action="store_true")
    parser.add_argument("--iterations", type=int, default=40, help="Levenberg–Marquardt iterations per start")
    parser.add_argument("--space-filling", choices=("F", "U", "tilt"), default=None)
    parser.add_argument("--regression-start", action="store_true")
    parser.add_argument("--no-basins", action="store_true", help="skip the basin-radius probes (2.)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import torch
    from emverse.builtin import corrections
    from emverse.builtin.corrections import LaplaceMixture, _nll

    model, likelihood, saved, _ = physics_run_parts(
        cbed_physics_run(args.run, seed=args.run_seed, patterns=args.patterns))
    space = model.parameter_space
    names = list(space.names)
    groups = {"F": [j for j, n in enumerate(names) if n.startswith("F_")],
              "U": [j for j, n in enumerate(names) if "_U" in n],
              "tilt": [j for j, n in enumerate(names) if n.startswith("tilt")]}
    if args.no_freeze:
        corrections.MIN_ITERATIONS = 10**9
    correction = LaplaceMixture(n_starts=args.starts, max_iterations=args.iterations)
    regression = shipped_regression() if args.regression_start else None
    observations, truths, draws = saved["observation"], saved["truth"], saved["approximate"]
    indices = [int(v) for v in args.indices.split(",")] if args.indices else range(len(observations))
    generator = torch.Generator().manual_seed(1)

    def refine(y, u, truth_nll, select_starts=False):
        """ℓ − ℓ(truth) after the correction's thickness scan and Levenberg–Marquardt from the
        rows of u (from its ``n_starts`` best-screened rows with ``select_starts``)."""
        nll = _nll(model, likelihood, y, space.denormalise(u), 64)
        u, nll = correction._scan(model, likelihood, y, space, u, nll)
        if select_starts:
            u = u[correction._starts(u, nll)]
        _, final, *_ = correction._refine(model, likelihood, y, space, u.clone())
        return final - truth_nll

    for i in indices:
        y = observations[i:i + 1]
        u_true = space.normalise(truths[i:i + 1])
        truth_nll = float(_nll(model, likelihood, y, truths[i:i + 1], 64))
        started = time.perf_counter()
        u = space.normalise(draws[i]).clamp(-1.0, 1.0)
        if args.regression_start:
            u = space.normalise(regression.predict_physical(y.float())).clamp(-1.0, 1.0)
        elif args.space_filling:
            columns = groups[args.space_filling]
            u = u[:args.starts].clone()
            design = torch.quasirandom.SobolEngine(len(columns), scramble=True, seed=i).draw(len(u))
            u[:, columns] = 2.0 * design.to(u.dtype) - 1.0
        excess = refine(y, u, truth_nll, select_starts=True).tolist()
        reached = sum(e < REACHED_NATS for e in excess)
        how = ("regression start" if args.regression_start else
               f"CDI starts ({args.space_filling} space-filling)" if args.space_filling else "CDI starts")
        print(f"pattern {i}: {reached} of {len(excess)} {how} reach the truth "
              f"({time.perf_counter() - started:.0f} s); ℓ − ℓ(truth) of the others, nats: "
              f"{sorted(round(e) for e in excess if e >= REACHED_NATS)}")
        for group, columns in ({} if args.no_basins else groups).items():
            row = []
            for delta in DELTAS[group]:
                u = u_true.repeat(4, 1)
                direction = torch.randn(4, len(columns), generator=generator, dtype=u.dtype)
                u[:, columns] += delta * direction / direction.norm(dim=1, keepdim=True)
                excess = refine(y, u.clamp(-1.0, 1.0), truth_nll)
                row.append(f"δ {delta}: {int((excess < REACHED_NATS).sum())}/4")
            print(f"  basin, {group} displaced from the truth: {', '.join(row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
