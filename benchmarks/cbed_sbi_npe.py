"""A peer for amortized CBED inference: sbi's neural posterior estimation (NPE) beside the CDI
posterior, the physics-corrected posterior and the regression baseline, on the same patterns.

    python benchmarks/cbed_sbi_npe.py [--run RUN_DIR] [--store TRAIN.zarr] [--fresh 100]

1. *Training set*: the one the shipped CDI model was trained on — 40,000 noise-free MgB2 [010]
   patterns of ``recipes/cbed-mgb2-cpu.toml`` (same forward model, seed and chunking as its
   ``cdi.pipeline`` simulate stage, so the same draws); simulated into --store when that store
   does not exist (≈ 20 min with 2 workers), read from it when it does.
2. *NPE* (sbi, ``NPE`` with a neural spline flow and sbi's ``CNNEmbedding``): parameters in the
   forward model's normalised units u ∈ [−1, 1]^13 under sbi's ``BoxUniform`` prior, the box the
   patterns were drawn from; each training pattern gets one Poisson draw at the run's dose (NPE
   learns the noise it is tested on — CDI was trained noise-free), and the network sees
   √counts (variance-stabilised), z-scored as a whole (mean and std of the training set).
3. *Test patterns*: the run's own (``recipes/cbed-mgb2-physics.toml`` with n_observations ≥ 2:
   its posterior.safetensors holds each observation, its truth, the CDI draws and the corrected
   draws; without --run the recipe is run on --patterns fresh patterns), so CDI, CDI + correction, regression and NPE are compared on the same noisy patterns;
   with ``--fresh N``, NPE and regression also on N fresh patterns (truths and noise from --seed,
   used for nothing else).
4. Per method: NRMSE of the posterior mean per parameter (RMSE / box range), mean calibration
   error and mean 90 % coverage (:mod:`emverse.statistics`), the reduced χ² of the posterior-mean
   pattern under the Poisson likelihood (median, and the fraction in 0.8–1.3), seconds per
   pattern (the run's own timings for CDI and the correction). Threads are pinned (--threads).
"""

from __future__ import annotations

import argparse
import json
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

#: the training set of the shipped CDI model (recipes/cbed-mgb2-cpu.toml)
CDI_TRAINING = {"seed": 7, "stream": "cdi.dataset.train", "n": 40000, "chunk_size": 250}


def training_set(store: Path, table: dict, model, workers: int):
    """(normalised parameters, noise-free patterns) of the CDI training set, simulated once."""
    import numpy as np
    import torch
    import zarr
    from emverse.run import stable_seed
    from emverse.simulation import write_dataset

    if not (store / "zarr.json").exists():
        started = time.perf_counter()
        write_dataset(model, CDI_TRAINING["n"], store, chunk_size=CDI_TRAINING["chunk_size"],
                      seed=stable_seed(CDI_TRAINING["seed"], CDI_TRAINING["stream"]), noise=False,
                      n_workers=workers, dtype=torch.float64, forward_model_table=table)
        print(f"simulated the training set into {store} ({time.perf_counter() - started:.0f} s)")
    group = zarr.open_group(str(store), mode="r")
    x = torch.from_numpy(np.asarray(group["parameters"][:]))
    patterns = torch.from_numpy(np.asarray(group["observations"][:]))
    return model.parameter_space.normalise(x), patterns


def stabilised(patterns, dose: float):
    """√counts of patterns given as fractions of the incident beam (B, H, W) -> (B, 1, H, W)."""
    return (patterns * dose).clamp_min(0).sqrt().float()[:, None]


def summary(space, draws, truth, means, model, likelihood, observations):
    """NRMSE per parameter, calibration, coverage and χ² of the posterior-mean pattern."""
    import numpy as np
    import torch
    from emverse import statistics as st

    low, high = space.bounds(torch.float64)
    out = {"nrmse": dict(zip(space.names, st.nrmse(draws, truth, low, high).tolist(), strict=True))}
    if draws.shape[1] > 1:
        out["calibration_error"] = float(st.calibration_error(draws, truth).mean())
        out["coverage90"] = float(st.central_interval_coverage(draws, truth, torch.tensor([0.9])).mean())
    with torch.no_grad():
        chi2, n = likelihood.chi2(model(means), observations)
    reduced = (chi2 / (n - len(space))).numpy()
    out["chi2_reduced_median"] = float(np.median(reduced))
    out["chi2_fraction_0.8_1.3"] = float(((reduced >= 0.8) & (reduced <= 1.3)).mean())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_physics_run_arguments(parser)
    parser.add_argument("--store", type=Path, default=Path("/tmp/emverse-cbed-mgb2-train.zarr"),
                        help="the training set (simulated when absent)")
    parser.add_argument("--fresh", type=int, default=0, help="also score NPE and regression on N fresh patterns")
    parser.add_argument("--seed", type=int, default=4242, help="noise, training and fresh-pattern seed")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (JSON)")
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import torch
    from emverse.api import load
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import CNNEmbedding
    from sbi.utils import BoxUniform

    args.run = cbed_physics_run(args.run, seed=args.run_seed, patterns=args.patterns)
    model, likelihood, saved, run_metrics = physics_run_parts(args.run)
    table = load(str(args.run / "recipe.toml")).to_dict()["forward_model"]  # written into the store
    space = model.parameter_space
    dose = likelihood.dose
    observations, truth = saved["observation"], saved["truth"]
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # sbi's own draws (initialisation, batches, validation split)

    u, patterns = training_set(args.store, table, model, args.workers)
    counts = torch.poisson(patterns * dose, generator=generator) / dose
    embedding = CNNEmbedding(input_shape=tuple(patterns.shape[1:]), in_channels=1,
                             out_channels_per_layer=[8, 16, 32], num_conv_layers=3, num_linear_layers=2,
                             num_linear_units=128, output_dim=32)
    # z-scored here as a whole: sbi's own "structured" z-scoring takes flat x only
    x_train = stabilised(counts, dose)
    shift, scale = float(x_train.mean()), float(x_train.std())

    def network_input(ys):
        return (stabilised(ys, dose) - shift) / scale

    builder = posterior_nn(model="nsf", embedding_net=embedding, z_score_x="none", hidden_features=64,
                           num_transforms=5)
    prior = BoxUniform(low=-torch.ones(len(space)), high=torch.ones(len(space)))
    import tempfile

    from torch.utils.tensorboard import SummaryWriter

    # sbi logs to ./sbi-logs unless told otherwise: a temporary folder keeps the checkout clean
    inference = NPE(prior=prior, density_estimator=builder, show_progress_bars=True,
                    summary_writer=SummaryWriter(log_dir=tempfile.mkdtemp(prefix="sbi-logs-")))
    started = time.perf_counter()
    estimator = inference.append_simulations(u.float(), (x_train - shift) / scale).train(
        training_batch_size=256, max_num_epochs=args.epochs, stop_after_epochs=10)
    train_seconds = time.perf_counter() - started
    epochs = len(inference.summary["training_loss"])
    print(f"NPE trained on {len(u)} patterns: {epochs} epochs, {train_seconds:.0f} s, best validation "
          f"loss (−log q per pattern) {inference.summary['best_validation_loss'][-1]:.3f}")
    posterior = inference.build_posterior(estimator)

    def npe_draws(ys):
        draws, seconds = [], 0.0
        for y in ys:
            t0 = time.perf_counter()
            z = posterior.sample((args.samples,), x=network_input(y[None]), show_progress_bars=False)
            seconds += time.perf_counter() - t0
            draws.append(space.denormalise(z.double()))
        return torch.stack(draws), seconds / len(ys)

    regression = shipped_regression()

    def regression_draws(ys):
        t0 = time.perf_counter()
        point = regression.predict_physical(ys.float())
        return point[:, None], (time.perf_counter() - t0) / len(ys)

    rows = {}
    approximate, corrected = saved["approximate"], saved["samples"]
    for name, draws, seconds in (
            ("CDI", approximate, run_metrics.get("approximate_seconds_per_observation")),
            ("CDI + correction", corrected, (run_metrics.get("approximate_seconds_per_observation", 0.0)
                                             + run_metrics.get("correction_seconds_per_observation", 0.0))),
            ("regression", *regression_draws(observations)),
            ("sbi NPE", *npe_draws(observations))):
        rows[name] = {**summary(space, draws, truth, draws.mean(1), model, likelihood, observations),
                      "seconds_per_pattern": seconds, "patterns": len(truth)}
    if args.fresh:
        fresh_gen = torch.Generator().manual_seed(args.seed + 1)
        fresh_truth = model.example_input(args.fresh, generator=fresh_gen)
        with torch.no_grad():
            fresh_y = likelihood.sample(model(fresh_truth), generator=fresh_gen)
        for name, (draws, seconds) in (("regression (fresh)", regression_draws(fresh_y)),
                                       ("sbi NPE (fresh)", npe_draws(fresh_y))):
            rows[name] = {**summary(space, draws, fresh_truth, draws.mean(1), model, likelihood, fresh_y),
                          "seconds_per_pattern": seconds, "patterns": args.fresh}
    names = list(space.names)
    print(f"{'method':<20} {'n':>4} " + " ".join(f"{n[:8]:>8}" for n in names)
          + f" {'cal.err':>7} {'cov90':>6} {'χ²med':>7} {'χ²ok':>5} {'s/pat':>7}")
    for name, row in rows.items():
        print(f"{name:<20} {row['patterns']:>4} " + " ".join(f"{row['nrmse'][n]:8.4f}" for n in names)
              + f" {row.get('calibration_error', float('nan')):7.3f} {row.get('coverage90', float('nan')):6.2f}"
              + f" {row['chi2_reduced_median']:7.2f} {row['chi2_fraction_0.8_1.3']:5.2f}"
              + f" {row['seconds_per_pattern'] or float('nan'):7.2f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "npe_train_seconds": train_seconds, "npe_epochs": epochs},
                                       indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
