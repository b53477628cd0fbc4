"""``mep.evaluate``: guided prior vs gradient reconstruction on one test set.

On the same simulated diffraction stacks (recipe ``[forward_model]``, Poisson
noise at its dose):

* guided sampling (``samples`` draws each) with the recipe's ``[sampler]`` and
  ``[guidance]`` and, with ``ablation_schedules``, the same guidance with the
  other two weight schedules at the same peak weight (the paper's Table 2);
* Adam and L-BFGS reconstructions (emverse-multislice refiners);

scored per instance after instance normalisation to [0, 1]: PSNR and SSIM on
the full volume and on the depth sum (Table 1's columns). A guided method's
score is the mean over its draws. Paired bootstrap of guided-vs-baseline
full-volume SSIM; mean inter-slice correlation per method (depth collapse);
correlation of the per-voxel spread of the draws with the per-voxel error;
quality vs sampler steps and vs wall time for all methods.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from emverse.interfaces import OptionsTask
from emverse.run import timed

from emverse_mep import metrics as M
from emverse_mep.figures import bars_figure, curves_figure, slices_figure
from emverse_mep.reconstruct import guidance_variants, sample_guided, setup

SCORES = ("psnr", "ssim", "psnr_depth_sum", "ssim_depth_sum")


def _mean_scores(draws: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance scores averaged over the draws (N, S, ...)."""
    per = [M.volume_scores(draws[:, s], truth) for s in range(draws.shape[1])]
    return {k: np.mean([p[k] for p in per], axis=0) for k in SCORES}


def _baseline(ctx, name, spec, model, y, scale, t_np) -> dict[str, torch.Tensor]:
    """One gradient baseline: its volume (rad), wall time (s) and SSIM-vs-time trace."""
    refiner = ctx.build_spec(spec, "refiner")
    n = len(t_np)
    trace_t, trace_s = [], []
    start = time.perf_counter()

    def callback(iteration, _model, _loss):
        elapsed = time.perf_counter() - start
        current = refiner.current_object
        if current is not None:
            trace_t.append(elapsed / n)
            trace_s.append(float(M.volume_scores(current.cpu().numpy() * scale, t_np)["ssim"].mean()))
        return None

    result = refiner.refine(model, y, generator=ctx.generator(f"mep.{name}"), callback=callback)
    return {"object": result.parameters["object"].detach(),
            "seconds": torch.tensor(time.perf_counter() - start, dtype=torch.float64),
            "trace_seconds": torch.tensor(trace_t, dtype=torch.float64),
            "trace_ssim": torch.tensor(trace_s, dtype=torch.float64)}


class EvaluateTask(OptionsTask):
    """``mep.evaluate``: the paper's comparison on one test set (module docstring).

    A plugin task because it compares guided draws with Adam/L-BFGS reconstructions that own
    the volume (multislice refiners), sweeps sampler steps and wall time, and scores volumes;
    the core ``evaluate`` task compares parameter-vector estimates."""

    def run(self, ctx):
        from emverse.run import RunResult

        opts = ctx.options
        truth, prior, physics, y, scale = setup(ctx, opts)
        t_np = truth.cpu().numpy()
        n = len(t_np)
        results: dict[str, dict] = {}

        # --- guided sampling, one run per schedule --------------------------------
        variants = guidance_variants(ctx, opts.ablation_schedules)
        for schedule, guidance_spec in variants.items():
            stage = ctx.stage(f"guided_{schedule}", lambda schedule=schedule, guidance_spec=guidance_spec: timed(
                lambda: sample_guided(ctx, prior, physics, y, samples=opts.samples, guidance_spec=guidance_spec,
                                      generator=ctx.generator(f"mep.sample.{schedule}"))))
            seconds = float(stage["seconds"]) / n
            d_np = stage["value"].numpy()
            results[f"guided_{schedule}"] = {
                "volumes": d_np[:, 0], "draws": d_np, "scores": _mean_scores(d_np, t_np), "seconds": seconds,
            }
            ctx.log.info("guided %s: SSIM %.4f (%.1f s per measurement)", schedule,
                         results[f"guided_{schedule}"]["scores"]["ssim"].mean(), seconds)

        # --- gradient baselines -----------------------------------------------------------
        model = physics.model
        curves_time: dict[str, tuple[list[float], list[float]]] = {}
        metrics_extra: dict[str, float] = {}
        for name, spec in (("adam", opts.adam), ("lbfgs", opts.lbfgs)):
            stage = ctx.stage(name, lambda name=name, spec=spec: _baseline(ctx, name, spec, model, y, scale, t_np))
            seconds = float(stage["seconds"]) / n
            vol = stage["object"].numpy() * scale
            results[name] = {"volumes": vol, "draws": vol[:, None], "scores": _mean_scores(vol[:, None], t_np),
                             "seconds": seconds}
            trace_t, trace_s = stage["trace_seconds"].tolist(), stage["trace_ssim"].tolist()
            curves_time[name] = (trace_t, trace_s)
            if trace_s:
                # oracle early stopping (uses the truth): the best the baseline reached on its path
                metrics_extra[f"{name}_peak_ssim"] = float(max(trace_s))
            ctx.log.info("%s: SSIM %.4f (%.1f s per measurement)", name, results[name]["scores"]["ssim"].mean(), seconds)

        # --- tables -------------------------------------------------------------------------
        metrics: dict[str, float] = dict(metrics_extra)
        rows = []
        for name, res in results.items():
            row = [name]
            for key in SCORES:
                v = res["scores"][key]
                metrics[f"{name}_{key}"] = float(v.mean())
                row.append(f"{v.mean():.4f} ± {v.std(ddof=1) / np.sqrt(n) if n > 1 else 0:.4f}")
            corr = M.interslice_correlation(res["volumes"])
            metrics[f"{name}_interslice_correlation"] = float(corr.mean())
            metrics[f"{name}_seconds_per_measurement"] = float(res["seconds"])
            row += [f"{corr.mean():.3f}", f"{res['seconds']:.2f}"]
            rows.append(row)
        truth_corr = M.interslice_correlation(t_np)
        metrics["truth_interslice_correlation"] = float(truth_corr.mean())
        rows.append(["truth", "-", "-", "-", "-", f"{truth_corr.mean():.3f}", "-"])
        ctx.add_table(
            "reconstruction quality (mean ± s.e. over test instances; instance-normalised)",
            ["method", "PSNR", "SSIM", "PSNR depth sum", "SSIM depth sum", "inter-slice corr.", "s / measurement"],
            rows,
        )

        main = f"guided_{next(iter(variants))}"
        rng = ctx.numpy_rng("mep.bootstrap")
        boot_rows = []
        for other in [k for k in results if k != main]:
            for key in ("ssim", "ssim_depth_sum", "psnr"):
                if n < 2:
                    continue
                b = M.paired_bootstrap(results[main]["scores"][key], results[other]["scores"][key], opts.bootstrap, rng)
                metrics[f"bootstrap_{key}_vs_{other}_p"] = b["p_value"]
                metrics[f"bootstrap_{key}_vs_{other}_diff"] = b["mean_difference"]
                boot_rows.append([f"{main} − {other}", key, f"{b['mean_difference']:+.4f}",
                                  f"[{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]", f"{b['p_value']:.4f}"])
        ctx.add_table("paired bootstrap (one-sided p: guided not better)",
                      ["comparison", "score", "mean diff.", "95 % CI", "p"], boot_rows)

        if opts.samples > 1:
            corr = M.spread_error_correlation(results[main]["draws"], t_np)
            metrics["spread_error_correlation"] = float(corr.mean())
            metrics["spread_error_correlation_min"] = float(corr.min())

        # --- quality vs steps / wall time ------------------------------------------------------
        curve_steps, curve_ssim, curve_time = [], [], []
        for steps in sorted(set(opts.steps_sweep)):
            stage = ctx.stage(f"sweep_steps{steps}", lambda steps=steps: timed(
                lambda: sample_guided(ctx, prior, physics, y, samples=1, steps=steps,
                                      generator=ctx.generator(f"mep.sweep.{steps}"))))
            seconds = float(stage["seconds"]) / n
            s = float(M.volume_scores(stage["value"][:, 0].numpy(), t_np)["ssim"].mean())
            curve_steps.append(steps)
            curve_ssim.append(s)
            curve_time.append(seconds)
            metrics[f"sweep_steps{steps}_ssim"] = s
            metrics[f"sweep_steps{steps}_seconds"] = seconds
        if curve_steps:
            ctx.save_figure("quality_vs_steps", curves_figure({"guided": (curve_steps, curve_ssim)},
                                                              "sampler steps", "SSIM (full volume)"))
            curves_time["guided"] = (curve_time, curve_ssim)
        if curves_time:
            ctx.save_figure("quality_vs_time", curves_figure(curves_time, "wall time per measurement (s)",
                                                             "SSIM (full volume)"))

        # --- figures -----------------------------------------------------------------------------
        for i in range(min(2, n)):
            panels = {"truth": t_np[i]}
            for name, res in results.items():
                panels[name] = res["volumes"][i]
            if opts.samples > 1:
                panels["std (guided)"] = results[main]["draws"][i].std(axis=0)
            ctx.save_figure(f"slices_{i}", slices_figure(panels, f"test volume {i}"))
        bars = {name: (float(M.interslice_correlation(res["volumes"]).mean()),
                       float(M.interslice_correlation(res["volumes"]).std())) for name, res in results.items()}
        bars["truth"] = (float(truth_corr.mean()), float(truth_corr.std()))
        ctx.save_figure("interslice_correlation", bars_figure(bars, "mean inter-slice correlation"))
        ctx.save_checkpoint("evaluation", {
            "truth": truth.cpu(), "observations": y.cpu(),
            **{f"{k}_volumes": torch.as_tensor(v["volumes"]) for k, v in results.items()},
        }, metadata={"phase_scale": scale})
        return RunResult(metrics=metrics)
