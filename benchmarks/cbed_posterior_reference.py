"""The physics-corrected CBED posterior against a NUTS reference on the same Bloch likelihood.

    python benchmarks/cbed_posterior_reference.py [--patterns 10] [--run RUN_DIR]

1. Runs ``recipes/cbed-mgb2-physics.toml`` with ``n_observations = --patterns`` (a fresh
   seed, --seed) — or reads an earlier run of it (--run) — for the corrected posterior
   (CDI proposal → core.importance) of each simulated pattern.
2. For each pattern, NUTS (pyro-ppl, ``emverse.reference.nuts_reference``) on the same
   Poisson likelihood through bloch.cbed with the uniform box prior: --chains chains
   started at the corrected posterior mean and at corrected draws, whitened by the
   corrected covariance (a constant linear map: the target is unchanged).
3. Per parameter: |mean − reference mean| / reference std, std / reference std, and the
   90 % interval ends in reference stds; R-hat of the reference. The issue's targets: mean
   within 0.5 reference std and std within ±30 %.

NUTS explores the basin its chains start in: it checks the shape of the corrected
posterior around its main mode, not whether the correction found every mode (the
corrected mode weights are printed beside it). Threads are pinned (--threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cbed_physics_run, physics_run_parts, pin_threads  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=10)
    parser.add_argument("--seed", type=int, default=90210)
    parser.add_argument("--run", type=Path, default=None, help="an earlier run of the recipe to check")
    parser.add_argument("--indices", type=str, default="",
                        help="with --run: the patterns to check, e.g. 1,2,5 (default: all)")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the per-pattern table here (JSON)")
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import torch
    from emverse.reference import nuts_reference

    run_dir = cbed_physics_run(args.run, seed=args.seed, patterns=args.patterns)
    model, likelihood, saved, metrics = physics_run_parts(run_dir)
    samples, truth, observations = saved["samples"], saved["truth"], saved["observation"]
    names = model.parameter_space.names
    rows, worst = [], []
    indices = [int(v) for v in args.indices.split(",")] if args.indices else range(len(observations))
    for i in indices:
        corrected = samples[i]
        mean, cov = corrected.mean(0), torch.cov(corrected.T)
        starts = torch.stack([mean] + [corrected[k] for k in range(1, args.chains)])
        started = time.perf_counter()
        reference = nuts_reference(model, likelihood, observations[i:i + 1], model.parameter_space, starts,
                                   num_samples=args.samples, warmup_steps=args.warmup, seed=args.seed + i,
                                   covariance=cov)
        ref = reference.flat()
        ref_mean, ref_sd = ref.mean(0), ref.std(0)
        z_mean = (mean - ref_mean).abs() / ref_sd
        sd_ratio = corrected.std(0) / ref_sd
        q = torch.tensor([0.05, 0.95], dtype=torch.float64)
        lo_hi = (torch.quantile(corrected, q, dim=0) - torch.quantile(ref, q, dim=0)) / ref_sd
        row = {"pattern": i, "seconds_nuts": time.perf_counter() - started,
               "gradient_evaluations": reference.gradient_evaluations,
               "r_hat_max": float(reference.r_hat.max()), "truth_thickness": float(truth[i, -1]),
               "mean_within_half_sd": float((z_mean < 0.5).double().mean()),
               "std_within_30pc": float(((sd_ratio - 1).abs() < 0.3).double().mean()),
               "per_parameter": {n: {"mean_diff_in_ref_sd": float(z_mean[p]), "std_ratio": float(sd_ratio[p]),
                                     "q05_diff": float(lo_hi[0, p]), "q95_diff": float(lo_hi[1, p])}
                                 for p, n in enumerate(names)}}
        rows.append(row)
        worst.append((float(z_mean.max()), float((sd_ratio - 1).abs().max())))
        print(f"pattern {i}: R-hat max {row['r_hat_max']:.3f}, mean within 0.5 sd for "
              f"{row['mean_within_half_sd']:.0%} of parameters, std within 30 % for {row['std_within_30pc']:.0%} "
              f"(worst |Δmean| {worst[-1][0]:.2f} sd, |std ratio − 1| {worst[-1][1]:.2f}); "
              f"NUTS {row['seconds_nuts']:.0f} s, {reference.gradient_evaluations} gradients", flush=True)
    print("\nparameter      |Δmean|/sd_ref (median, max)   std/std_ref (median, min, max)")
    for n in names:
        z = torch.tensor([r["per_parameter"][n]["mean_diff_in_ref_sd"] for r in rows])
        s = torch.tensor([r["per_parameter"][n]["std_ratio"] for r in rows])
        print(f"{n:14s} {float(z.median()):6.2f} {float(z.max()):6.2f}          "
              f"{float(s.median()):6.2f} {float(s.min()):6.2f} {float(s.max()):6.2f}")
    ok = sum(1 for r in rows if r["mean_within_half_sd"] == 1.0 and r["std_within_30pc"] == 1.0)
    converged = sum(1 for r in rows if r["r_hat_max"] < 1.01)
    print(f"\npatterns with every parameter inside both targets: {ok}/{len(rows)}; "
          f"reference R-hat < 1.01: {converged}/{len(rows)}")
    print(f"corrected posterior: {metrics.get('correction_seconds_per_observation', float('nan')):.1f} s per "
          f"pattern (+ {metrics.get('approximate_seconds_per_observation', float('nan')):.1f} s amortized)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
