"""The generic tasks the core offers: ``simulate``, ``train``, ``infer``, ``refine``, ``evaluate``."""

from __future__ import annotations

import torch

from emverse.builtin.methods import posterior_draws, prepare_prior
from emverse.builtin.parametrizations import ParameterVector
from emverse.errors import EmverseError
from emverse.figures import observations_figure, posterior_figure
from emverse.interfaces import CorrectedPosterior, Task
from emverse.likelihoods import ModelLikelihood
from emverse.run import RunResult


class SimulateTask(Task):
    """A dataset campaign (:mod:`emverse.simulation`): ``n`` draws of the ``[forward_model]``'s
    unknowns and their observations into a chunked, resumable Zarr store; or, with a
    ``[dataset]`` that writes its own store (``ensure``), that store."""

    def __init__(self, n: int = 4, noise: bool = True, store: str = "", chunk_size: int = 64,
                 scheduler: str = "", n_workers: int = 1):
        self.n, self.noise, self.store, self.chunk_size = n, noise, store, chunk_size
        self.scheduler, self.n_workers = scheduler, n_workers

    def run(self, ctx):
        import time

        import numpy as np
        import zarr

        from emverse.run import stable_seed
        from emverse.simulation import write_dataset

        if ctx.has("dataset"):
            return _materialise(ctx, ctx.build("dataset"))
        model = ctx.build("forward_model")
        store = ctx.resolve_path(self.store) if self.store else ctx.out_dir / "dataset.zarr"
        started = time.perf_counter()
        write_dataset(model, self.n, store, chunk_size=self.chunk_size or self.n, seed=stable_seed(ctx.seed, "simulate"),
                      noise=self.noise, scheduler=self.scheduler, n_workers=self.n_workers, dtype=ctx.dtype,
                      forward_model_table=ctx.recipe.to_dict().get("forward_model", {}),
                      progress=ctx.show_progress, log=ctx.log.info)
        seconds = time.perf_counter() - started
        group = zarr.open_group(str(store), mode="r")
        first = torch.as_tensor(np.asarray(group["observations"][: min(self.n, 8)]))
        ctx.save_figure("observations", observations_figure(first))
        ctx.add_text("store", f"{store}: {self.n} items, observations {tuple(group['observations'].shape[1:])}, "
                              f"{'with' if self.noise else 'without'} the forward model's noise")
        ctx.log.info("simulated %d items into %s in %.1f s", self.n, store, seconds)
        return RunResult({"n": self.n, "seconds": seconds, "seconds_per_item": seconds / self.n,
                          "y_mean": float(first.double().mean()), "y_std": float(first.double().std())})


def _materialise(ctx, dataset) -> RunResult:
    """A ``[dataset]`` that writes its own store: ``ensure(log) -> path`` writes it, or resumes an
    interrupted one (Zarr chunks), or opens a finished one; its ``summary()`` (optional) gives a
    dict of ``metrics``, ``tables`` (``(title, header, rows)``) and ``figures`` ({name: figure})."""
    import time

    if not callable(getattr(dataset, "ensure", None)):
        raise EmverseError(f"[dataset] {ctx.spec('dataset').type!r} does not write a store (no ensure()); "
                           "remove the table to simulate a campaign of the [forward_model]'s draws")
    started = time.perf_counter()
    path = dataset.ensure(ctx.log)
    summary = dataset.summary() if callable(getattr(dataset, "summary", None)) else {}
    for title, header, rows in summary.get("tables", []):
        ctx.add_table(title, header, rows)
    for name, fig in summary.get("figures", {}).items():
        ctx.save_figure(name, fig)
    ctx.add_text("store", str(path))
    return RunResult({**summary.get("metrics", {}), "seconds": time.perf_counter() - started})


def _frozen_model(ctx):
    """The recipe's ``[forward_model]`` with its own parameters frozen (tasks differentiate
    through it with respect to the unknown only)."""
    model = ctx.build("forward_model")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _given_vector(ctx, space, field: str, values, otherwise: str) -> torch.Tensor:
    """``options.<field>`` (one vector in the forward model's units and parameter order) as a
    (1, P) tensor, checked against the parameter box: its length and that it lies inside."""
    vector = torch.tensor(values, dtype=ctx.dtype)[None]
    if space is not None:
        if len(values) != len(space):
            raise EmverseError(
                f"options.{field} has {len(values)} values; give {len(space)} in the order "
                f"{list(space.names)} (units {list(space.units)}), or leave it empty {otherwise}")
        if not bool(space.contains(vector).all()):
            box = [(q.name, q.low, q.high) for q in space.parameters]
            raise EmverseError(f"options.{field} {list(values)} lies outside the parameter box {box}; "
                               "the posterior and the fit are defined inside it")
    return vector.to(ctx.device)


def read_measured(ctx, model, likelihood, observation: str, units: str, pixel: float):
    """The measured pattern as the forward model's observation (1, H, W): calibration
    checked against the model's, resampled where only the pixel size differs (counts
    are summed over the model's larger pixel, so the [likelihood]'s dose is per model
    pixel)."""
    import numpy as np

    from emverse.readers import read_pattern, resample_pattern

    path = ctx.resolve_path(observation)
    overrides = {"reciprocal_pixel_size": pixel} if pixel else {}
    measurement = read_pattern(path, overrides)
    cal = measurement.calibration
    with torch.no_grad():
        shape = tuple(model(model.example_input(1, dtype=ctx.dtype).to(ctx.device)).shape[1:])
    voltage = getattr(model, "voltage_kv", None)
    if cal.beam_energy_kv is not None and voltage is not None and abs(cal.beam_energy_kv / voltage - 1) > 5e-3:
        raise EmverseError(f"{path}: beam energy {cal.beam_energy_kv:g} kV in the file, but [forward_model] "
                           f"voltage_kv = {voltage:g}; set voltage_kv to the measurement's")
    zone = getattr(model, "zone_axis", None)
    if cal.zone_axis is not None and zone is not None and tuple(cal.zone_axis) != tuple(int(v) for v in zone):
        raise EmverseError(f"{path}: zone axis {list(cal.zone_axis)} in the file, but [forward_model] "
                           f"zone_axis = {list(zone)}; set zone_axis to the measurement's")
    data = measurement.data
    model_pixel = getattr(model, "reciprocal_pixel_size", None)
    if cal.reciprocal_pixel_size is not None and model_pixel is not None:
        if abs(cal.reciprocal_pixel_size / model_pixel - 1) > 0.01 or data.shape != shape:
            data = resample_pattern(data, cal.reciprocal_pixel_size, model_pixel, shape, str(path))
            ctx.log.info("resampled %s from %.5g to %.5g 1/Å per pixel onto %s", path,
                         cal.reciprocal_pixel_size, model_pixel, shape)
    if data.shape != shape:
        raise EmverseError(
            f"{path}: the pattern is {data.shape[0]}×{data.shape[1]} px but the forward model predicts "
            f"{shape[0]}×{shape[1]} px; give its reciprocal pixel size (observation_reciprocal_pixel_size, "
            f"1/Å) so that it can be resampled, or set detector_pixels to {data.shape[0]}")
    y = torch.as_tensor(np.ascontiguousarray(data), dtype=ctx.dtype)[None].to(ctx.device)
    if units == "counts":
        dose = getattr(likelihood, "dose", None)
        if dose is None:
            raise EmverseError("observation_units = \"counts\" needs a [likelihood] with a dose "
                               "(e.g. core.poisson); or give the pattern as fractions (\"fraction\")")
        y = y / dose
    # the first output, written once every check has passed (a refused input leaves no run directory)
    ctx.add_text("observation", f"{path}: calibration {cal.report()}")
    return y


class InferTask(Task):
    """Posterior draws for ``n_observations`` simulated observations, optionally corrected.

    Truths are drawn from the forward model's parameter space with the recipe seed (or
    ``truth`` for one observation); each observation is the ``[likelihood]``'s draw around
    the prediction where the likelihood is generative, else the forward model's noise.
    Three ways to the approximate posterior, chosen from the recipe: a prior with an
    exact posterior (``exact_posterior``) and no sampler; a conditional prior with a
    sampler (condition = observation, e.g. an amortized network); or a prior + sampler +
    guidance bound to the forward model and each observation. Draws are mapped to the
    forward model's units by ``prior.physical``; the prior runs in inference mode
    (``eval()``: BatchNorm with its running statistics, no dropout).

    A ``[correction]`` then turns each observation's draws into the posterior under the
    exact likelihood (:mod:`emverse.builtin.corrections`): its modes and weights are
    reported, and the reduced χ² of the posterior-mean prediction where the likelihood
    defines χ². ``[[compare]]`` methods (those ``evaluate`` compares: a regression baseline
    as ``core.infer`` with its prior, a refiner as ``core.refine`` starting at the posterior
    mean) estimate the same observations; their points are reported beside the posterior.
    """

    def __init__(self, n_observations: int = 4, n_samples: int = 200, truth=(), n_ppc: int = 3,
                 observation: str = "", observation_units: str = "counts",
                 observation_reciprocal_pixel_size: float = 0.0):
        self.n_observations, self.n_samples = n_observations, n_samples
        self.truth, self.n_ppc = tuple(truth), n_ppc
        self.observation, self.observation_units = observation, observation_units
        self.observation_pixel = observation_reciprocal_pixel_size

    def _truths(self, ctx, model):
        if not self.truth:
            return model.example_input(self.n_observations, generator=ctx.generator("truth"),
                                        dtype=ctx.dtype).to(ctx.device)
        return _given_vector(ctx, model.parameter_space, "truth", self.truth, "for a draw")

    def _approximate(self, ctx, model, prior, sampler, guidance, likelihood, y, gen):
        """(n_observations, n_samples, P) draws of the approximate posterior, physical units."""
        def one(i):
            return posterior_draws(prior, sampler, guidance, model, likelihood, y[i:i + 1], self.n_samples, gen)[None]

        # each observation's draws are kept as they finish: `emverse run --resume` goes on from there
        return torch.cat([ctx.stage(f"approximate-{i}", lambda i=i: {"draws": one(i)}, (gen,))["draws"]
                            for i in ctx.progress(range(len(y)), desc="approximate posterior")]).to(y.device)

    def run(self, ctx):
        return self.posterior(ctx, _frozen_model(ctx), ctx.build("prior"),
                              ctx.build("dataset") if ctx.has("dataset") else None)

    def _from_dataset(self, ctx, dataset):
        """Truths and observations drawn by the ``[dataset]`` (its data prior and noise)."""
        if not callable(getattr(dataset, "draw", None)):
            raise EmverseError(f"[dataset] {ctx.spec('dataset').type!r} cannot draw held-out observations "
                               "(no draw(n, generator, dtype)); remove the table to draw truths from the "
                               "forward model's parameter space")
        truth, y = dataset.draw(self.n_observations, ctx.generator("truth"), dtype=ctx.dtype)
        if y is None:
            raise EmverseError(f"[dataset] {ctx.spec('dataset').type!r} gives no observations: it needs a "
                               "[forward_model] table")
        return truth.to(ctx.device), y.to(ctx.device)

    def posterior(self, ctx, model, prior, dataset=None) -> RunResult:
        """Posterior draws for the observations and their scores, with ``prior`` as given (the
        ``train`` task checks the prior it has just trained through here)."""
        import time

        sampler = ctx.build("sampler") if ctx.has("sampler") else None
        guidance = ctx.build("guidance") if ctx.has("guidance") else None
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else None
        correction = ctx.build("correction") if ctx.has("correction") else None
        space = model.parameter_space
        if correction is not None and likelihood is None:
            raise EmverseError("[correction] needs a [likelihood] table: the correction targets the "
                               "posterior under that likelihood (e.g. type = \"core.poisson\")")
        prepare_prior(prior, model)
        if self.observation:
            y = read_measured(ctx, model, likelihood, self.observation, self.observation_units,
                              self.observation_pixel)
            truth = None
        elif dataset is not None:
            truth, y = self._from_dataset(ctx, dataset)
        else:
            truth = self._truths(ctx, model)
            noise_gen = ctx.generator("noise", device=ctx.device)
            y = torch.cat([_observe(model, likelihood or ModelLikelihood(model), truth[i:i + 1], noise_gen)
                           for i in range(len(truth))])
        gen = ctx.generator("posterior", device=ctx.device)
        started = time.perf_counter()
        approximate = self._approximate(ctx, model, prior, sampler, guidance, likelihood, y, gen)
        approximate = approximate.to(ctx.dtype)
        metrics = {"approximate_seconds_per_observation": (time.perf_counter() - started) / len(y)}
        draws, corrected = approximate, []
        if correction is not None:
            started = time.perf_counter()
            cgen = ctx.generator("correction")
            corrected = [CorrectedPosterior.from_tensors(ctx.stage(
                f"correction-{i}", lambda i=i: correction.correct(
                    approximate[i], model, likelihood, y[i:i + 1], space, n_samples=self.n_samples,
                    generator=cgen).tensors(), (cgen,)))
                for i in ctx.progress(range(len(y)), desc="correction")]
            draws = torch.stack([c.samples.to(ctx.device, ctx.dtype) for c in corrected])
            metrics["correction_seconds_per_observation"] = (time.perf_counter() - started) / len(y)
        # [[compare]]: other methods' point estimates of the same observations (refiners start
        # at the posterior mean)
        compared = {method.label: _estimates(ctx, m_index, method, model, likelihood, y, draws.mean(dim=1))
                    for m_index, method in enumerate(ctx.build("compare") if ctx.has("compare") else [])}
        saved = {"samples": draws, "observation": y}
        saved.update({f"compare/{label}": point for label, point in compared.items()})
        if truth is not None:
            saved["truth"] = truth
        if correction is not None:
            saved["approximate"] = approximate
        ctx.save_checkpoint("posterior", saved)
        names = list(space.names) if space is not None else [f"x{i}" for i in range(draws.shape[-1])]
        units = list(space.units) if space is not None else [""] * draws.shape[-1]
        chi2_metrics, reduced = _chi2_metrics(ctx, model, likelihood, y, draws, len(names), self.n_ppc)
        if truth is not None or compared:
            ctx.save_figure("posterior", posterior_figure(draws, truth, names, compared))
        if truth is not None:
            metrics.update(ctx.score(draws, truth))
            metrics["posterior_mean_rmse"] = float((draws.mean(dim=1) - truth).pow(2).mean().sqrt())
            if space is not None:
                explained = None if reduced is None else (reduced < CHI2_WARNING).cpu()
                metrics.update(_posterior_summary(ctx, space, draws, approximate, truth,
                                                  correction is not None, explained, compared))
        metrics.update(chi2_metrics)
        if dataset is not None:
            metrics.update(_exact_posterior_errors(ctx, dataset, model, y, draws))
        if len(y) == 1:
            _single_observation_report(ctx, names, units, None if truth is None else truth[0], draws[0],
                                       approximate[0], corrected[0] if corrected else None, metrics,
                                       {label: point[0] for label, point in compared.items()})
        return RunResult(metrics)


def _exact_posterior_errors(ctx, dataset, model, y, draws) -> dict[str, float]:
    """The draws against the exact posterior, where the ``[dataset]``'s data prior has one
    (``data_prior.exact_posterior(model, y)``, e.g. a Gaussian prior through a linear model):
    the error of the mean in exact standard deviations and the relative error of the std, each
    the largest over parameters, averaged over observations. The known-answer check a prior
    passes before it is trusted on physics data."""
    data_prior = getattr(dataset, "data_prior", None)
    if not callable(getattr(data_prior, "exact_posterior", None)):
        return {}
    mean_error, std_error = [], []
    for i in range(len(y)):
        exact = data_prior.exact_posterior(model, y[i])
        std = exact.covariance_matrix.diagonal().sqrt()
        mean_error.append(((draws[i].double().mean(0).cpu() - exact.mean) / std).abs().max())
        std_error.append((draws[i].double().std(0).cpu() / std - 1).abs().max())
    out = {"exact.mean_error_in_std": float(torch.stack(mean_error).mean()),
           "exact.std_relative_error": float(torch.stack(std_error).mean())}
    ctx.add_table("posterior vs exact", ["quantity", "value"],
                  [["mean error / exact std (mean over observations, max over parameters)",
                    out["exact.mean_error_in_std"]],
                   ["|std / exact std − 1| (mean over observations, max over parameters)",
                    out["exact.std_relative_error"]]])
    return out


#: a reduced χ² above this says the posterior-mean prediction does not fit the data
CHI2_WARNING = 2.0


def _chi2_metrics(ctx, model, likelihood, y, draws, n_parameters, n_ppc, fitted: bool = False):
    """Reduced χ² of each observation's posterior-mean prediction (where the likelihood
    defines χ²) and the posterior-predictive figures of the first ``n_ppc`` observations:
    (metrics, the reduced χ² per observation or None). ``fitted``: ``draws`` hold one refined
    point per observation (the ``refine`` task), so the metrics and the warning speak of the fit."""
    if likelihood is None:
        return {}, None
    with torch.no_grad():
        prediction = torch.cat([model(draws[i].mean(dim=0, keepdim=True)) for i in range(len(y))])
    try:
        chi2, count = likelihood.chi2(prediction, y)
    except NotImplementedError:
        return {}, None
    reduced = chi2 / (count - n_parameters).clamp_min(1)
    poor = [i for i in range(len(y)) if not float(reduced[i]) < CHI2_WARNING]
    what, key = ("fitted prediction", "fit") if fitted else ("posterior-mean prediction", "posterior_mean")
    if poor:
        message = (f"the {what} does not explain {len(poor)} of {len(y)} observation(s) "
                   f"(reduced χ² ≥ {CHI2_WARNING:g}: {', '.join(f'#{i} {float(reduced[i]):.3g}' for i in poor[:10])}); "
                   + ("the fit there sits in a wrong minimum or the model misses part of the physics"
                      if fitted else "the posterior there sits on a wrong mode or the model misses part of the "
                                     "physics — do not trust its width"))
        ctx.log.warning(message)
        ctx.add_text("posterior predictive check", message)
    out = {}
    if len(y) == 1:
        out[f"{key}_chi2_reduced"] = float(reduced[0])
    else:
        out[f"{key}_chi2_reduced_median"] = float(reduced.median())
        out[f"{key}_chi2_reduced_fraction_0.8_1.3"] = float(((reduced >= 0.8) & (reduced <= 1.3)).double().mean())
    for i in range(min(n_ppc, len(y))):
        if prediction[i].ndim == 2:
            ctx.save_figure(f"ppc_{i}", _ppc_figure(likelihood, y[i], prediction[i], float(reduced[i])))
    return out, reduced


def _ppc_figure(likelihood, observed, predicted, reduced):
    """Observed, posterior-mean prediction and the residual in units of its standard deviation."""
    from emverse.figures import image_panel, new_figure

    fig, axes = new_figure(3, 1, size=3.4)
    info = likelihood.fisher_diagonal(predicted[None], observed[None])[0]
    residual = (observed - predicted) * info.sqrt()
    limit = float(residual.abs().max().clamp_min(1e-12))
    image_panel(axes[0, 0], observed.cpu().numpy(), title="observed", unit="intensity (fraction of beam)")
    image_panel(axes[0, 1], predicted.cpu().numpy(), title="posterior-mean prediction",
                unit="intensity (fraction of beam)")
    image_panel(axes[0, 2], residual.cpu().numpy(), title=f"residual, reduced χ² = {reduced:.3f}",
                unit="(observed − predicted) / σ", cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.tight_layout()
    return fig


def _posterior_summary(ctx, space, draws, approximate, truth, corrected: bool,
                       explained: torch.Tensor | None = None, compared=None) -> dict[str, float]:
    """Per-parameter NRMSE of the posterior mean, calibration error and 90 % coverage
    (:mod:`emverse.statistics`), for the final and, when corrected, the approximate draws.

    With ``explained`` (per observation: the posterior-mean prediction's reduced χ² is below
    ``CHI2_WARNING``) the final draws are also scored on the explained observations alone
    ("explained/…", with ``explained_fraction``): the accuracy where the data say the posterior
    sits on the right mode, beside its share — never instead of the whole set.
    ``compared`` ({label: point estimates (n, P)}, the ``[[compare]]`` methods) get their NRMSE
    beside the posterior mean's ("compare/<label>/nrmse/…")."""
    from emverse import statistics as st

    low, high = space.bounds(torch.float64)
    out: dict[str, float] = {}
    if len(truth) < 2:
        return out
    sets = {"posterior": (draws, truth), "approximate": (approximate, truth)} if corrected else \
        {"posterior": (draws, truth)}
    if explained is not None:
        out["explained_fraction"] = float(explained.double().mean())
        keep = explained.to(draws.device)
        if 2 <= int(keep.sum()) < len(truth):
            sets["explained"] = (draws[keep], truth[keep])
    rows = []
    for label, (samples, target) in sets.items():
        nrmse = st.nrmse(samples, target, low, high)
        levels, coverage = st.calibration_curve(samples, target)
        error = (coverage - levels[:, None]).abs().mean(dim=0)
        i90 = int(torch.argmin((levels - 0.9).abs()))
        for p, name in enumerate(space.names):
            out[f"{label}/nrmse/{name}"] = float(nrmse[p])
            out[f"{label}/calibration_error/{name}"] = float(error[p])
            out[f"{label}/coverage90/{name}"] = float(coverage[i90, p])
            rows.append([label, name, float(nrmse[p]), float(error[p]), float(coverage[i90, p])])
        out[f"{label}/calibration_error_mean"] = float(error.mean())
        out[f"{label}/coverage90_mean"] = float(coverage[i90].mean())
    for label, point in (compared or {}).items():
        nrmse = st.nrmse(point, truth, low, high)
        for p, name in enumerate(space.names):
            out[f"compare/{label}/nrmse/{name}"] = float(nrmse[p])
            rows.append([f"{label} (point estimate)", name, float(nrmse[p]), "", ""])
    ctx.add_table(f"posterior quality over {len(draws)} observations (NRMSE: RMSE of the mean / range; "
                  f"explained: the observations whose posterior-mean prediction has reduced χ² < {CHI2_WARNING:g})",
                  ["draws", "parameter", "NRMSE", "calibration error", "coverage @90%"], rows)
    return out


def _single_observation_report(ctx, names, units, truth, draws, approximate, corrected, metrics, compared):
    mean, std = draws.mean(dim=0), draws.std(dim=0)
    a_mean, a_std = approximate.mean(dim=0), approximate.std(dim=0)
    rows = []
    for p, name in enumerate(names):
        for label, point in compared.items():
            metrics[f"compare/{label}/{name}"] = float(point[p])
        metrics[f"posterior_mean/{name}"] = float(mean[p])
        metrics[f"posterior_std/{name}"] = float(std[p])
        if truth is not None:
            metrics[f"truth/{name}"] = float(truth[p])
        if corrected is not None:
            metrics[f"approximate_mean/{name}"] = float(a_mean[p])
            metrics[f"approximate_std/{name}"] = float(a_std[p])
        rows.append([name, units[p], "" if truth is None else float(truth[p]), float(a_mean[p]), float(a_std[p]),
                     float(mean[p]), float(std[p])] + [float(point[p]) for point in compared.values()])
    ctx.add_table("posterior of the observation", ["parameter", "unit", "truth", "approximate mean",
                                                   "approximate std", "posterior mean", "posterior std",
                                                   *compared], rows)
    if corrected is None:
        return
    for key, value in corrected.diagnostics.items():
        metrics[f"correction/{key}"] = float(value)
    mode_rows = []
    for k, mode in enumerate(corrected.modes):
        metrics[f"mode_{k}/weight"] = mode.weight
        metrics[f"mode_{k}/negative_log_likelihood"] = mode.negative_log_likelihood
        sd = mode.covariance.diagonal().clamp_min(0).sqrt()
        for p, name in enumerate(names):
            metrics[f"mode_{k}/{name}"] = float(mode.location[p])
        mode_rows.append([k, mode.weight, mode.negative_log_likelihood, mode.converged]
                         + [f"{float(mode.location[p]):.5g} ± {float(sd[p]):.2g}" for p in range(len(names))])
    ctx.add_table("modes of the corrected posterior (location ± Laplace std)",
                  ["mode", "weight", "NLL (nats)", "converged", *names], mode_rows)


class TrainTask(Task):
    """Train the ``[prior]``'s network on the ``[dataset]`` with the ``[objective]``, then,
    with ``n_observations``, check its posteriors.

    The loop is :func:`emverse.training.fit` (data order, AdamW, EMA, clipping, resume
    checkpoints, DDP); the dataset gives ``splits(generator, dtype) -> (train, validation)``,
    the objective binds to the prior and the data, and the prior writes its trained weights
    with ``save(path, recipe=...)``. ``emverse run --resume`` continues an interrupted run
    from its last checkpoint, bit-identically. The check is the ``infer`` task's, on held-out
    truths and observations drawn by the dataset (``draw``), against the exact posterior
    where the dataset's data prior has one.
    """

    def __init__(self, options=None):
        self.options = options

    @classmethod
    def from_params(cls, params, ctx=None):
        return cls(params)

    def run(self, ctx):
        from emverse.run import stable_seed
        from emverse.training import TrainConfig, fit

        o = self.options
        prior = ctx.build("prior")
        objective = ctx.build("objective")
        dataset = ctx.build("dataset")
        if not callable(getattr(prior, "save", None)):
            raise EmverseError(f"[prior] {ctx.spec('prior').type!r} cannot save trained weights (no save()); "
                               "train a prior that can")
        train_data, validation = dataset.splits(ctx.generator("data"), dtype=ctx.dtype)
        objective.bind(prior, train_data)
        network = objective.network(prior).to(ctx.device)
        seed = stable_seed(ctx.seed, "train") % (2**62)
        config = TrainConfig(
            steps=o.steps, batch_size=o.batch_size, learning_rate=o.learning_rate, weight_decay=o.weight_decay,
            warmup_steps=o.warmup_steps, lr_decay=o.lr_decay, ema_decay=o.ema_decay, ema_start=o.ema_start,
            ema_warmup=o.ema_warmup, grad_clip=o.grad_clip or None, amp=o.amp, validate_every=o.validate_every,
            checkpoint_every=o.checkpoint_every, log_every=o.log_every, seed=seed,
        )
        validate = None
        if validation is not None and o.validate_every:
            def validate(weights):
                return objective.validation_loss(prior, validation, weights, seed)

        result = fit(network, objective, train_data, config, out_dir=ctx.out_dir, name=o.checkpoint_name,
                     recipe=ctx.recipe.to_dict(), validate=validate, progress=ctx.progress, log=ctx.log.info,
                     on_interrupt=ctx.on_interrupt)
        use_ema = objective.uses_ema if o.use_ema == "auto" else o.use_ema == "yes"
        if use_ema:
            network.load_state_dict(result.ema)
        prior.eval()
        path = prior.save(ctx.out_dir / f"{o.checkpoint_name}.safetensors", recipe=ctx.recipe.to_dict())
        ctx.add_text("checkpoint", f"{path.name} ({'EMA' if use_ema else 'trained'} weights, "
                                   f"{result.step} steps of {o.batch_size})")
        losses = result.history["loss"]
        tail = losses[-min(len(losses), 50):]
        metrics = {"train_loss": float(sum(tail) / len(tail)), "steps": float(result.step)}
        if result.history["val_loss"]:
            metrics["validation_loss"] = float(result.history["val_loss"][-1])
        metrics.update(objective.report(prior, train_data, ctx.generator("report")))
        from emverse.figures import new_figure

        fig, axes = new_figure(1, 1, size=4)
        axes[0, 0].plot(result.history["step"], losses, lw=0.8, label="training")
        if result.history["val_loss"]:
            axes[0, 0].plot(result.history["val_step"], result.history["val_loss"], "o-", label="validation")
            axes[0, 0].legend()
        axes[0, 0].set_xlabel("optimiser step")
        axes[0, 0].set_ylabel(f"loss ({ctx.spec('objective').type})")
        if min(losses) > 0:
            axes[0, 0].set_yscale("log")
        ctx.save_figure("training_loss", fig)
        if o.n_observations:
            check = InferTask(n_observations=o.n_observations, n_samples=o.n_samples)
            metrics.update(check.posterior(ctx, _frozen_model(ctx), prior, dataset).metrics)
        return RunResult(metrics)


class RefineTask(Task):
    """Fit a parametrization to one observation: simulated from a drawn truth and started from a
    perturbed truth, or measured (``observation``) and started at ``start``.

    Built from the recipe's joints: ``[forward_model]``, ``[refiner]``, and optionally
    ``[likelihood]`` (default: the forward model's own noise model) and
    ``[parametrization]`` (default: ``core.parameter_vector``, all parameters free).
    Simulated: the truth is drawn from the forward model's parameter space; the observation is
    the likelihood's draw around the prediction where the likelihood is generative, else the
    forward model's ``simulate``. Measured: the file is read and checked as the ``infer`` task
    reads it (:func:`read_measured`), and the report gives the refined values, the reduced χ²
    of the fit where the likelihood defines χ², and the observed, fitted and residual pattern.
    """

    def __init__(self, start_offset: float = 0.3, start=(), observation: str = "",
                 observation_units: str = "counts", observation_reciprocal_pixel_size: float = 0.0):
        self.start_offset, self.start = start_offset, tuple(start)
        self.observation, self.observation_units = observation, observation_units
        self.observation_pixel = observation_reciprocal_pixel_size

    def run(self, ctx):
        model = _frozen_model(ctx)
        refiner = ctx.build("refiner")
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else ModelLikelihood(model)
        parametrization = ctx.build("parametrization") if ctx.has("parametrization") else ParameterVector()
        space = model.parameter_space
        if self.observation:
            truth = None
            y = read_measured(ctx, model, likelihood, self.observation, self.observation_units, self.observation_pixel)
        else:
            truth = model.example_input(1, generator=ctx.generator("truth"), dtype=ctx.dtype).to(ctx.device)
            y = _observe(model, likelihood, truth, ctx.generator("noise", device=ctx.device))
        if self.start:
            start = _given_vector(ctx, space, "start", self.start, "(the default start)")
        elif truth is None:  # a measurement: the centre of the box
            if space is None:
                raise EmverseError("a measured observation needs options.start (the forward model has no "
                                   "parameter box whose centre could start the refinement)")
            start = space.denormalise(torch.zeros(1, len(space), dtype=ctx.dtype)).to(ctx.device, ctx.dtype)
        else:
            noise = torch.randn(truth.shape, generator=ctx.generator("start"), dtype=truth.dtype).to(ctx.device)
            if space is not None:
                start = space.denormalise((space.normalise(truth) + self.start_offset * noise).clamp(-1, 1))
            else:
                start = truth + self.start_offset * noise
        if isinstance(parametrization, ParameterVector):
            parametrization.start_at(model, start)
        parametrization.to(device=ctx.device)
        result = refiner.run(parametrization, model, likelihood, y, generator=ctx.generator("refiner"),
                             **ctx.resume_for(refiner, "refine"))
        refined = parametrization().detach()
        from emverse.figures import new_figure

        fig, axes = new_figure(1, 1, size=4)
        axes[0, 0].semilogy(result.history["loss"])
        axes[0, 0].set_xlabel("iteration")
        axes[0, 0].set_ylabel("negative log-likelihood")
        ctx.save_figure("loss", fig)
        names = space.names if space else [f"x{i}" for i in range(refined.shape[-1])]
        units = space.units if space else [""] * refined.shape[-1]
        metrics = {"final_loss": result.final_loss, "iterations": float(result.iterations)}
        if truth is None:
            ctx.add_table("refined parameters", ["parameter", "unit", "start", "refined"],
                          [[name, unit, float(s), float(r)] for name, unit, s, r in zip(
                              names, units, start[0], refined[0], strict=True)])
            metrics.update({f"refined/{name}": float(refined[0, i]) for i, name in enumerate(names)})
            metrics.update(_chi2_metrics(ctx, model, likelihood, y, refined[:, None], len(names), 1, fitted=True)[0])
            return RunResult(metrics)
        ctx.add_table("refined parameters", ["parameter", "unit", "truth", "start", "refined"],
                      [[name, unit, float(t), float(s), float(r)] for name, unit, t, s, r in zip(
                          names, units, truth[0], start[0], refined[0], strict=True)])
        metrics.update(ctx.score(refined, truth))
        metrics["start_rmse"] = float((start - truth).pow(2).mean().sqrt())
        metrics["refined_rmse"] = float((refined - truth).pow(2).mean().sqrt())
        return RunResult(metrics)


def _estimates(ctx, m_index, method, model, likelihood, observations, starts) -> torch.Tensor:
    """A ``[[compare]]`` method's point estimate (n, P) of each observation from its start; each
    is kept as it finishes (``emverse run --resume`` goes on from there)."""
    gen = ctx.generator(f"method{m_index}", device=ctx.device)
    return torch.cat([ctx.stage(
        f"{method.label}-{i}", lambda i=i: {"point": method.estimate(
            ctx, model, likelihood, observations[i:i + 1], starts[i:i + 1], gen).point}, (gen,))["point"]
        for i in ctx.progress(range(len(observations)), desc=method.label)]).to(ctx.device)


def _observe(model, likelihood, truth, generator):
    """A noisy observation of ``truth``: the likelihood's draw where it can make one."""
    if isinstance(likelihood, ModelLikelihood):
        return model.simulate(truth, generator=generator)
    with torch.no_grad():
        try:
            return likelihood.sample(model(truth), generator)
        except NotImplementedError:
            return model.simulate(truth, generator=generator)


class EvaluateTask(Task):
    """Every ``[[compare]]`` method on the same simulated test set, scored once, here.

    Truths are drawn from the forward model's parameter space; each observation is
    simulated once (``[likelihood]``'s draw, else the model's noise) and every method
    sees the same observation and, for refiners, the same start. Scores per observation:
    the squared error of the estimate in normalised units (mean over parameters) and the
    ``[[metrics]]``; the first method is compared with each other one by a paired
    bootstrap of the per-observation scores (:func:`emverse.statistics.paired_bootstrap`).
    """

    def __init__(self, n_observations: int = 10, start_offset: float = 0.3, n_boot: int = 2000,
                 confidence: float = 0.95):
        self.n_observations, self.start_offset = n_observations, start_offset
        self.n_boot, self.confidence = n_boot, confidence

    def run(self, ctx):
        import numpy as np

        from emverse.statistics import paired_bootstrap

        model = _frozen_model(ctx)
        likelihood = ctx.build("likelihood") if ctx.has("likelihood") else None
        methods = ctx.build("compare")
        space = model.parameter_space
        if space is None:
            raise EmverseError("task 'evaluate' needs a [forward_model] with a parameter_space")
        truth = model.example_input(self.n_observations, generator=ctx.generator("truth"),
                                    dtype=ctx.dtype).to(ctx.device)
        noise_gen = ctx.generator("noise", device=ctx.device)
        observations = torch.cat([
            _observe(model, likelihood or ModelLikelihood(model), truth[i:i + 1], noise_gen)
            for i in range(len(truth))])
        offsets = torch.randn(truth.shape, generator=ctx.generator("start"), dtype=truth.dtype).to(ctx.device)
        starts = space.denormalise((space.normalise(truth) + self.start_offset * offsets).clamp(-1, 1))
        scores: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        for m_index, method in enumerate(methods):
            estimate = _estimates(ctx, m_index, method, model, likelihood, observations, starts)
            error = (space.normalise(estimate) - space.normalise(truth)).pow(2).mean(dim=1)
            scores[method.label] = error
            metrics[f"{method.label}.normalised_mse"] = float(error.mean())
            metrics[f"{method.label}.normalised_rmse"] = float(error.mean().sqrt())
            for key, value in ctx.score(estimate, truth).items():
                metrics[f"{method.label}.{key}"] = value
        labels = list(scores)
        rows = []
        for other in labels[1:]:
            result = paired_bootstrap(scores[labels[0]], scores[other], n_boot=self.n_boot,
                                      confidence=self.confidence,
                                      rng=np.random.default_rng(int(ctx.seed)))
            key = f"paired.{labels[0]}_minus_{other}"
            metrics[key] = result.difference
            metrics[key + "_low"] = result.ci_low
            metrics[key + "_high"] = result.ci_high
            metrics[key + "_p"] = result.p_value
            rows.append([labels[0], other, result.difference, result.ci_low, result.ci_high, result.p_value])
        ctx.add_table("methods (normalised MSE per observation, mean)", ["method", "normalised MSE"],
                      [[label, float(scores[label].mean())] for label in labels])
        if rows:
            ctx.add_table(f"paired bootstrap ({self.confidence:.0%} interval of the mean difference)",
                          ["A", "B", "mean(A - B)", "low", "high", "p"], rows)
        return RunResult(metrics)
