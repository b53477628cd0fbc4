"""Task ``pdf.fit_structure``: refine a starting particle against a G(r) and report Rw/RMSD."""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import Task

from emverse_pdf.fit import PDFFit, StructureFitModel
from emverse_pdf.gr_io import GrData, read_gr, write_gr
from emverse_pdf.metrics import rwp
from emverse_pdf.model import DebyePDF
from emverse_pdf.structures import Structure, kabsch_rmsd, parse_structure_spec, write_xyz

__all__ = ["FitCrystalTask", "FitStructureTask", "comparison_figure"]


class FitStructureTask(Task):
    """Refine ``structure`` (positions, optionally qdamp/B) against ``observation``.

    With no observation file, the observation is the forward model's G(r) of
    ``truth_structure`` (plus the model's noise, drawn from the recipe seed),
    and the recovered positions are scored by RMSD after alignment.
    Metrics: ``rwp_start``, ``rwp``, ``scale``, ``qdamp``, ``biso`` and, when a truth
    is known, ``rmsd_start_angstrom`` and ``rmsd_angstrom``.

    A plugin task because the core ``refine`` task reads measured 2D patterns, not G(r) files,
    and its unknown is a parameter vector, not a structure read from a file; the fit itself is
    the recipe's ``[refiner]`` on :class:`~emverse_pdf.fit.StructureFitModel`, ready for that
    task once it takes both.
    """

    def __init__(self, structure, observation, truth_structure, perturb_angstrom, write_gr=True):
        self.structure = structure
        self.observation = observation
        self.truth_structure = truth_structure
        self.perturb_angstrom = perturb_angstrom
        self.write_gr = write_gr

    def run(self, ctx):
        from emverse.run import RunResult

        model = ctx.build("forward_model")
        if not isinstance(model, DebyePDF):
            raise EmverseError(f"pdf.fit_structure needs forward_model type 'pdf.debye', got {type(model).__name__}")
        refiner = ctx.build("refiner")
        if not isinstance(refiner, PDFFit):
            raise EmverseError(f"pdf.fit_structure needs refiner type 'pdf.fit', got {type(refiner).__name__}")
        model = model.to(dtype=ctx.dtype)
        dtype = ctx.dtype
        resolve = ctx.resolve_path
        start = parse_structure_spec(self.structure, resolve).centred()

        truth: Structure | None = None
        if self.observation:
            data = read_gr(resolve(self.observation))
            data = data.crop(model.settings.rmin, model.settings.rmax)
            ctx.log.info("observation %s: %d points, metadata %s", data.path, data.r.size, data.metadata)
            r = torch.as_tensor(data.r, dtype=dtype, device=ctx.device)
            g_obs = torch.as_tensor(data.g, dtype=dtype, device=ctx.device)
        else:
            truth = parse_structure_spec(self.truth_structure, resolve).centred()
            r = model.r.to(dtype)
            x_true = torch.as_tensor(truth.positions, dtype=dtype, device=ctx.device)[None]
            g_obs = model.simulate(x_true, generator=ctx.generator("noise"), ).reshape(-1)
            g_obs = g_obs.to(dtype)
            data = GrData(r=r.cpu().numpy(), g=g_obs.cpu().numpy(), metadata={"source": self.truth_structure})

        if self.perturb_angstrom > 0:
            rng = ctx.numpy_rng("perturb")
            start = Structure(
                start.symbols, start.positions + rng.normal(0.0, self.perturb_angstrom, start.positions.shape)
            )
        fit_model = StructureFitModel(model, start, r=r, dtype=dtype).to(ctx.device)
        with torch.no_grad():
            g_start = fit_model()[0]
        rwp_start = float(rwp(g_start, g_obs, r=r, rmin=refiner.fit_rmin, rmax=refiner.fit_rmax))

        bar = ctx.progress(total=refiner.steps, desc="pdf.fit")

        def callback(step, _model, loss):
            bar.update(1)
            bar.set_postfix(rw=f"{math.sqrt(max(loss, 0.0)):.4f}")

        result = refiner.refine(fit_model, g_obs, generator=ctx.generator("refine"), callback=callback,
                                **ctx.resume_for(refiner, "fit"))
        bar.close()
        ctx.log.info(result.message)
        g_fit = result.parameters["g_calc"]
        metrics = {
            "rwp_start": rwp_start,
            "rwp": float(rwp(g_fit, g_obs, r=r, rmin=refiner.fit_rmin, rmax=refiner.fit_rmax, fit_scale=False)),
            "scale": float(result.parameters["scale"]),
            "qdamp": float(result.parameters["qdamp"]),
            "biso": float(result.parameters["biso"]),
            "iterations": float(result.iterations),
        }
        refined = fit_model.structure()
        if truth is not None and len(truth) == len(start):
            metrics["rmsd_start_angstrom"] = kabsch_rmsd(start.positions, truth.positions)
            metrics["rmsd_angstrom"] = kabsch_rmsd(refined.positions, truth.positions)

        built = ctx.build("metrics") if ctx.has("metrics") else []
        for metric in built:
            if hasattr(metric, "r") and getattr(metric, "r", None) is None:
                metric.r = r.detach().cpu()  # pdf.rwp needs the grid for its r window
        metrics.update(ctx.score(g_fit.detach().cpu(), g_obs.detach().cpu(), metrics=built))

        ctx.save_figure(
            "fit",
            comparison_figure(
                r.cpu().numpy(), g_obs.cpu().numpy(),
                {"start": _scaled(g_start, g_obs).cpu().numpy(), "refined": g_fit.cpu().numpy()},
                title=f"Rw {metrics['rwp_start']:.4f} -> {metrics['rwp']:.4f}",
            ),
        )
        ctx.add_table(
            "fit",
            ["quantity", "value"],
            [[k, f"{v:.6g}"] for k, v in metrics.items()],
        )
        ctx.save_checkpoint(
            "refined_structure",
            {"positions": result.parameters["positions"].cpu(), "g_calc": g_fit.cpu(), "r": r.cpu()},
            metadata={"symbols": ",".join(refined.symbols)},
        )
        if self.write_gr:
            write_xyz(ctx.out_dir / "refined.xyz", refined, comment=f"pdf.fit Rw={metrics['rwp']:.5f}")
            write_gr(
                ctx.out_dir / "fitted.gr", r, g_fit,
                metadata={"rwp": f"{metrics['rwp']:.8g}", "qdamp": metrics["qdamp"], "biso": metrics["biso"]},
            )
        return RunResult(metrics=metrics)


def _scaled(g_calc: torch.Tensor, g_obs: torch.Tensor) -> torch.Tensor:
    from emverse_pdf.metrics import fit_scale_offset

    scale, _ = fit_scale_offset(g_calc, g_obs)
    return scale * g_calc


def comparison_figure(r, g_obs, curves: dict, title: str = "", obs_label: str = "observed"):
    """Observed G(r) against one or more calculated ones, with the difference of the last (Agg figure)."""
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    r = np.asarray(r)
    g_obs = np.asarray(g_obs)
    fig, ax = agg.subplots(figsize=(8, 4.5))
    ax.plot(r, g_obs, color="k", lw=1.2, label=obs_label)
    last = None
    for label, curve in curves.items():
        ax.plot(r, np.asarray(curve), lw=0.9, label=label)
        last = np.asarray(curve)
    if last is not None:
        diff = g_obs - last
        shift = g_obs.min() - diff.max() - 0.05 * np.abs(g_obs).max()
        ax.plot(r, diff + shift, color="tab:green", lw=0.8, label="difference (last)")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å⁻²)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


class FitCrystalTask(Task):
    """Task ``pdf.fit_crystal``: calibrant first, then samples, each a periodic-crystal PDF fit.

    A Task rather than the core ``refine`` workflow because it chains fits: the
    calibrant's refined Qdamp/Qbroad become fixed instrument values of every
    sample. The physics is :mod:`emverse_pdf.periodic`, the parametrisation
    :class:`emverse_pdf.crystal_fit.CrystalPDFModel` (an ``nn.Module`` with
    ``forward()`` and ``loss``) and the optimiser the recipe's [refiner], so the
    fit itself can move to the core workflow unchanged.

    Metrics per dataset ``<name>.``: ``rw_start``, ``rw``, the refined lattice
    (``<phase>.a`` ... in Å and degrees), scale, δ's, U_iso (Å²), diameters (Å), qdamp,
    qbroad (Å⁻¹); ``rw`` alone when there is one sample (else ``rw_max``).
    """

    def __init__(self, samples, calibrant=None, carry=("qdamp", "qbroad"), write_gr=True):
        self.samples = samples
        self.calibrant = calibrant
        self.carry = tuple(carry)
        self.write_gr = write_gr

    def run(self, ctx):
        from emverse.run import RunResult

        from emverse_pdf.crystal_data import load_dataset

        refiner = ctx.build("refiner")
        metrics: dict[str, float] = {}
        instrument: dict[str, float] = {}
        jobs = [("options.calibrant", self.calibrant, True)] if self.calibrant is not None else []
        jobs += [(f"options.samples[{k}]", d, False) for k, d in enumerate(self.samples)]
        sample_rw = []
        fitted: dict[str, torch.Tensor] = {}
        for field, options, is_calibrant in jobs:
            loaded = load_dataset(options, ctx.resolve_path, field)
            carried = {} if is_calibrant else {k: v for k, v in instrument.items() if k in self.carry}
            model, g_obs = _crystal_model(loaded, carried, ctx)
            prefix = "calibrant" if is_calibrant and not self.samples else loaded.name
            for warning in _small_angle_warnings(model, loaded):
                ctx.log.warning(warning)
            with torch.no_grad():
                rw_start = math.sqrt(float(model.loss(model(), g_obs)))
            bar = ctx.progress(total=getattr(refiner, "steps", None), desc=f"pdf.fit_crystal {loaded.name}")

            def callback(step, _model, loss, bar=bar):
                bar.update(1)
                bar.set_postfix(rw=f"{math.sqrt(max(loss, 0.0)):.4f}")

            result = refiner.refine(model, g_obs, generator=ctx.generator(f"refine:{loaded.name}"),
                                    callback=callback, **ctx.resume_for(refiner, f"fit-{loaded.name}"))
            bar.close()
            with torch.no_grad():
                g_fit = model()
                rw = math.sqrt(float(model.loss(g_fit, g_obs)))
            summary = model.summary()
            ctx.log.info("%s: Rw %.4f -> %.4f after %d iterations; %s", loaded.name, rw_start, rw,
                         result.iterations, summary)
            for warning in _small_angle_warnings(model, loaded):
                ctx.log.warning("after the fit: %s", warning)
            metrics[f"{prefix}.rw_start"] = rw_start
            metrics[f"{prefix}.rw"] = rw
            metrics.update({f"{prefix}.{k}": v for k, v in summary.items()})
            if is_calibrant:
                instrument = {"qdamp": summary["qdamp"], "qbroad": summary["qbroad"]}
            else:
                sample_rw.append(rw)
            r = model.r.cpu().numpy()
            ctx.save_figure(f"fit-{loaded.name}", comparison_figure(
                r, g_obs.cpu().numpy(), {"refined": g_fit.cpu().numpy()},
                title=f"{loaded.name}: Rw {rw_start:.4f} -> {rw:.4f}"))
            ctx.add_table(f"fit-{loaded.name}", ["quantity", "value"],
                          [["rw", f"{rw:.5f}"]] + [[k, f"{v:.6g}"] for k, v in summary.items()])
            fitted.update({f"{loaded.name}.{k}": v.detach() for k, v in model.state_dict().items()})
            fitted.update({f"{loaded.name}.r": model.r.detach(), f"{loaded.name}.g_fit": g_fit.detach()})
            if self.write_gr:
                write_gr(ctx.out_dir / f"{loaded.name}.fitted.gr", model.r, g_fit,
                         metadata={"rw": f"{rw:.6g}", "qmax": model.qmax, **{
                             k: f"{v:.8g}" for k, v in summary.items()}},
                         comment=f"pdf.fit_crystal fit of {loaded.data.path}")
        # every dataset's refined model state (raw parameters), r grid (Å) and fitted G(r) (Å⁻²)
        ctx.save_checkpoint("fit", fitted)
        if len(sample_rw) == 1:
            metrics["rw"] = sample_rw[0]
        elif sample_rw:
            metrics["rw_max"] = max(sample_rw)
        elif self.calibrant is not None:
            metrics["rw"] = metrics["calibrant.rw"]
        return RunResult(metrics=metrics)


def _crystal_model(loaded, carried: dict[str, float], ctx):
    """CrystalPDFModel of a loaded dataset (instrument values in ``carried`` are fixed)."""
    from emverse_pdf.crystal_fit import CrystalPDFModel, CrystalPhase

    options = loaded.options
    phases = []
    for spec, crystal in zip(options.phases, loaded.crystals, strict=True):
        phases.append(CrystalPhase(
            crystal, radiation=options.radiation, adp=spec.adp, scale=spec.scale, delta1=spec.delta1,
            delta2=spec.delta2, uiso=spec.uiso, envelope=spec.envelope, diameter=spec.diameter,
            polar_diameter=spec.polar_diameter, refine=spec.refine, name=spec.name or crystal.name))
    refine = [k for k in options.refine if k not in carried]
    model = CrystalPDFModel(
        phases, loaded.data.r, fit_rmin=options.fit_rmin, fit_rmax=loaded.fit_rmax, qmax=loaded.qmax,
        qdamp=carried.get("qdamp", options.qdamp), qbroad=carried.get("qbroad", options.qbroad),
        refine=refine, source=loaded.data.path)
    lo = model.fit_first
    g_obs = torch.as_tensor(loaded.data.g[lo:lo + model.r.numel()], dtype=torch.float64)
    if options.start_scale_from_data:
        # G is linear in the scales: start them at the least-squares factor of the start model,
        # so the optimiser does not spend its first steps (or a wrong turn) on the magnitude
        with torch.no_grad():
            calc = model()
            factor = float((calc * g_obs).sum() / (calc * calc).sum())
            for phase in model.phases:
                phase.values.rescale("scale", factor)
    return model.to(ctx.device), g_obs.to(ctx.device)


def _small_angle_warnings(model, loaded) -> list[str]:
    from emverse_pdf.envelope import small_angle_warning

    out = []
    for phase in model.phases:
        if phase.envelope != "none":
            diameter = float(phase.value("diameter"))
            if phase.envelope == "spheroid":
                diameter = max(diameter, float(phase.value("polar_diameter")))
            text = small_angle_warning(loaded.qmin, diameter, loaded.data.path)
            if text:
                out.append(text)
    return out
