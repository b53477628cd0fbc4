"""``cdi.pipeline``: simulate, train the CDI prior and the regression, evaluate — one recipe from
simulation to report (its parts are the core ``simulate``, ``train`` and ``infer`` tasks' own: a
recipe can run each alone)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from emverse.errors import EmverseError
from emverse.interfaces import OptionsTask
from emverse.run import RunResult, stable_seed, timed
from emverse.simulation import write_dataset

from . import evaluation as ev
from .dataset import PatternDataset
from .parameter_table import check_same_space, mgb2_parameter_space
from .training import train_model


def _forward_space(forward_model):
    space = getattr(forward_model, "parameter_space", None) or mgb2_parameter_space()
    check_same_space(mgb2_parameter_space(), space, f"forward model {type(forward_model).__name__}")
    return space


def _forward_table(ctx) -> dict:
    return ctx.recipe.to_dict().get("forward_model", {})


def _store_path(ctx, given: str, default: str) -> Path:
    return ctx.resolve_path(given) if given else ctx.out_dir / default


def _simulate(ctx, forward_model, n, store, *, chunk_size, seed_name, scheduler, n_workers):
    _forward_space(forward_model)  # the MgB2 table's space, or a clear error
    started = time.perf_counter()
    write_dataset(  # noise-free patterns: the training augments them
        forward_model, n, store, chunk_size=chunk_size, seed=stable_seed(ctx.seed, seed_name), noise=False,
        scheduler=scheduler, n_workers=n_workers, dtype=ctx.dtype, forward_model_table=_forward_table(ctx),
        progress=ctx.show_progress, log=ctx.log.info,
    )
    seconds = time.perf_counter() - started
    ctx.log.info("simulated %d patterns into %s in %.1f s", n, store, seconds)
    return seconds


def _pattern_figure(dataset: PatternDataset, n: int = 4):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    n = min(n, len(dataset))
    fig, axes = agg.subplots(1, n, figsize=(2.8 * n, 3.0), squeeze=False)
    patterns = dataset.patterns_at(torch.arange(n))
    for i in range(n):
        agg.image_panel(axes[0, i], patterns[i].numpy(), unit="intensity (arb. units)", axis_off=False)
        t = dataset.parameters[i]
        axes[0, i].set_title(f"t={float(t[-1]):.0f} Å", fontsize=9)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
    fig.tight_layout()
    return fig


def _loss_figure(histories: dict):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(5, 3.5))
    for name, h in histories.items():
        ax.semilogy(range(1, len(h.epoch_loss) + 1), h.epoch_loss, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (MSE)")
    ax.legend()
    fig.tight_layout()
    return fig


def _train(ctx, model, dataset, opts, *, epochs, learning_rate, stream, name, noise_draws=1):
    """Train on the core loop, checkpointing to ``<run>/<name>-resume.safetensors`` (resumable)."""
    return train_model(
        model, dataset, epochs=epochs, batch_size=opts.batch_size,
        learning_rate=learning_rate, seed=stable_seed(ctx.seed, stream) % (2**62),
        steps_per_epoch=opts.steps_per_epoch, weight_decay=opts.weight_decay,
        cosine_schedule=opts.cosine_schedule, rotation_degrees=opts.rotation_degrees,
        resized_crop_scale=tuple(opts.resized_crop_scale), noise_draws=noise_draws,
        out_dir=ctx.out_dir, name=name, checkpoint_every=opts.checkpoint_every,
        recipe=ctx.recipe.to_dict(), progress=ctx.progress, log=ctx.log.info,
        on_interrupt=ctx.on_interrupt,
    )


_KEPT_PATTERNS = 256  # about how many test patterns one kept stage of an evaluation holds


def evaluate_posteriors(ctx, prior, sampler, dataset: PatternDataset, *, baseline=None,
                        forward_model=None, n_samples: int, batch_size: int,
                        n_histogram_patterns: int, n_ppc_patterns: int, n_ppc_samples: int,
                        max_patterns: int | None = None) -> dict:
    """Posterior samples on a test set; NRMSE, calibration, figures and a predictive check."""
    space = prior.parameter_space
    n = min(len(dataset), max_patterns) if max_patterns else len(dataset)
    patterns = dataset.patterns_at(torch.arange(n))
    truth = dataset.parameters[:n].double()
    generator = ctx.generator("cdi.evaluate")
    # blocks of whole sampling batches, each kept (with the generator's state) as it finishes, so
    # `emverse run --resume` continues a long evaluation and draws exactly what one pass draws
    block = batch_size * max(1, _KEPT_PATTERNS // batch_size)
    parts = []
    for first in range(0, n, block):
        def draw(first=first):
            return timed(lambda: prior.sample_physical(patterns[first:first + block], n_samples, sampler, generator,
                                                       batch_size), key="samples")

        parts.append(ctx.stage(f"posterior-{first}", draw, (generator,)))
    samples = torch.cat([part["samples"] for part in parts])
    seconds = float(sum(part["seconds"] for part in parts))
    regression = baseline.predict_physical(patterns).cpu() if baseline is not None else None
    header, rows, metrics, calib = ev.summary_table(space, samples, truth, regression)
    metrics["sampling_seconds_per_pattern"] = seconds / n
    metrics["n_test_patterns"] = n
    metrics["n_posterior_samples"] = n_samples
    tensors = {"samples": samples, "truth": truth}
    if regression is not None:
        tensors["regression"] = regression
    ctx.save_checkpoint("posterior_samples", tensors,
                        metadata={"names": list(space.names), "units": list(space.units)})
    ctx.add_table("per-parameter results (paper table 1 shape)", header, rows)
    ctx.save_figure("nrmse", ev.nrmse_figure(space, metrics))
    ctx.save_figure("calibration", ev.calibration_figure(calib, space))
    ctx.save_figure("coverage_sharpness", ev.coverage_sharpness_figure(calib, space))
    for i in range(min(n_histogram_patterns, n)):
        ctx.save_figure(f"posterior_pattern_{i}", ev.histogram_figure(
            samples[i], truth[i], space, regression[i] if regression is not None else None,
            title=f"test pattern {i}"))
    if forward_model is not None and n_ppc_patterns > 0:
        metrics.update(posterior_predictive(ctx, forward_model, patterns[:n_ppc_patterns],
                                            samples[:n_ppc_patterns], n_ppc_samples, space))
    for group, idx in (("debye_waller", range(6)), ("structure_factors", range(6, 10)),
                       ("tilt", range(10, 12)), ("thickness", range(12, 13))):
        names = [space.names[i] for i in idx]
        metrics[f"group/{group}/cdi_nrmse"] = sum(metrics[f"nrmse_mean/{k}"] for k in names) / len(names)
        if regression is not None:
            metrics[f"group/{group}/regression_nrmse"] = (
                sum(metrics[f"regression_nrmse/{k}"] for k in names) / len(names))
    return metrics


def posterior_predictive(ctx, forward_model, patterns, samples, n_draws, space) -> dict:
    """Re-simulate posterior draws with the forward model and compare with the observation.

    The reference is the same number of draws from the prior (uniform in the
    box): a posterior that has learned anything re-simulates much closer.
    """
    generator = ctx.generator("cdi.ppc")
    dtype = ctx.dtype
    metrics, post_res, prior_res = {}, [], []
    device = next((b.device for b in forward_model.buffers()), torch.device("cpu"))
    for i in range(patterns.shape[0]):
        observed = patterns[i].double()
        draws = samples[i, :n_draws].to(device, dtype)
        mean = samples[i].mean(dim=0, keepdim=True).to(device, dtype)
        prior_draws = space.sample_uniform(n_draws, generator=generator, dtype=dtype).to(device)
        with torch.no_grad():
            sim_draws = forward_model(draws).double().cpu()
            sim_mean = forward_model(mean).double().cpu()
            sim_prior = forward_model(prior_draws).double().cpu()
        post_res.append(ev.relative_residual(sim_draws, observed))
        prior_res.append(ev.relative_residual(sim_prior, observed))
        metrics[f"ppc/pattern_{i}/posterior_mean_residual"] = float(
            ev.relative_residual(sim_mean, observed)[0])
        ctx.save_figure(f"ppc_pattern_{i}", ev.ppc_figure(
            observed, sim_mean[0], sim_draws, sim_prior,
            title=f"posterior predictive check, pattern {i}"))
    metrics["ppc/posterior_residual_mean"] = float(torch.cat(post_res).mean())
    metrics["ppc/prior_residual_mean"] = float(torch.cat(prior_res).mean())
    return metrics


# --------------------------------------------------------------------------------- tasks
class PipelineTask(OptionsTask):
    """``cdi.pipeline``: simulate -> train CDI and regression -> evaluate, in one run.

    A plugin task because it chains workflows in one run directory to produce the paper's
    table 1 (train and test stores, two trained models, the grouped NRMSE/calibration table);
    each step alone is a core task (``simulate``; ``train`` with ``cdi.augmented``; ``infer``
    with a ``cdi.patterns`` [dataset] and the regression as [[compare]])."""

    def run(self, ctx) -> RunResult:
        opts = ctx.options
        forward_model = ctx.build("forward_model")
        base = ctx.resolve_path(opts.dataset_dir) if opts.dataset_dir else ctx.out_dir
        timings = {}
        for split, n in (("train", opts.n_train), ("test", opts.n_test)):
            timings[f"simulate_{split}_seconds"] = _simulate(
                ctx, forward_model, n, base / f"{split}.zarr", chunk_size=opts.chunk_size,
                seed_name=f"cdi.dataset.{split}", scheduler=opts.scheduler,
                n_workers=opts.n_workers)
        prior = ctx.build("prior")
        baseline = ctx.build_spec(opts.baseline, "prior")
        if not hasattr(baseline, "training_loss") or not hasattr(baseline, "predict_physical"):
            raise EmverseError(f"options.baseline must be type = \"cdi.regression\", not "
                               f"{opts.baseline.type!r}")
        train = PatternDataset(base / "train.zarr", space=prior.parameter_space)
        test = PatternDataset(base / "test.zarr", space=prior.parameter_space)
        ctx.save_figure("example_patterns", _pattern_figure(train))
        histories = {}
        histories["CDI"] = _train(ctx, prior, train, opts, epochs=opts.epochs,
                                  learning_rate=opts.learning_rate, stream="cdi.train",
                                  name="cdi", noise_draws=opts.noise_draws)
        prior.save(ctx.out_dir / "cdi.safetensors", recipe=ctx.recipe.to_dict())
        histories["regression"] = _train(ctx, baseline, train, opts, epochs=opts.baseline_epochs,
                                         learning_rate=opts.baseline_learning_rate,
                                         stream="cdi.train_regression", name="regression")
        baseline.save(ctx.out_dir / "regression.safetensors", recipe=ctx.recipe.to_dict())
        ctx.save_figure("training_loss", _loss_figure(histories))
        sampler = ctx.build("sampler")
        metrics = evaluate_posteriors(
            ctx, prior, sampler, test, baseline=baseline, forward_model=forward_model,
            n_samples=opts.n_samples, batch_size=opts.eval_batch_size,
            n_histogram_patterns=opts.n_histogram_patterns, n_ppc_patterns=opts.n_ppc_patterns,
            n_ppc_samples=opts.n_ppc_samples, max_patterns=opts.max_eval_patterns)
        metrics.update(timings)
        metrics["train_seconds_cdi"] = histories["CDI"].seconds
        metrics["train_seconds_regression"] = histories["regression"].seconds
        metrics["final_loss_cdi"] = histories["CDI"].epoch_loss[-1]
        metrics["final_loss_regression"] = histories["regression"].epoch_loss[-1]
        return RunResult(metrics)
