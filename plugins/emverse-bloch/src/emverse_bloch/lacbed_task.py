"""``bloch.lacbed``: refine thickness, B and pattern geometry against measured D-LACBED discs.

The driver only: read the discs (``emverse.readers``), build the physics
(:class:`emverse_bloch.lacbed.LacbedSimulator`) and the parametrization +
likelihood (:class:`emverse_bloch.lacbed_fit.LacbedFit`), then

1. orientation check: the 8 flips/rotations of the simulated image axes against the
   data at the start values (the lab frame convention is Felix's; this confirms it);
2. coarse scans, as Felix does before refining: thickness over the recipe's range
   (one eigendecomposition serves every thickness) × a few pixel scales, then × a few
   multiples of the start B (the gradient fit moves B slowly: its NCC valley is shallow);
3. the recipe's refiner (``core.lbfgs`` / ``core.adam``) on ``LacbedFit``;
4. uncertainties from the curvature of the profile likelihood, per-disc correlation
   at start and end, residual maps, a refined CIF.

It is a Task (not the core ``refine`` workflow) until that workflow lands; the fit
module already has the ``forward()``/``loss()`` shape the core refiners take.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from emverse.crystal import Crystal
from emverse.interfaces import OptionsTask

from emverse_bloch.crystal import data_path, load_structure
from emverse_bloch.lacbed import (
    LacbedSimulator,
    block_mean,
    disc_correlation,
    gaussian_blur,
    scale_and_background,
)
from emverse_bloch.lacbed_fit import (
    LacbedFit,
    coordinate_names,
    curvature_uncertainty,
    dihedral,
    unit_of,
)
from emverse_bloch.params import hkl_name

BUILT_IN = {"diamond": "diamond.cif", "linbo3": "LiNbO3.cif"}


def load_crystal(structure: str, resolve) -> Crystal:
    key = str(structure).lower().removesuffix(".cif")
    if key in BUILT_IN:
        return Crystal.from_cif(data_path(BUILT_IN[key]))
    return load_structure(structure, resolve)


def read_discs(folder, prefix: str, reflections, downsample: int, pixel_size: float):
    """(D, n, n) float64 discs, block-averaged by ``downsample``, and their calibration report."""
    from emverse.errors import EmverseError
    from emverse.readers import read

    images, report = [], None
    for hkl in reflections:
        path = folder / f"{prefix}_{hkl_name(hkl)}.dm3"
        if not path.exists():
            raise EmverseError(f"reflection {list(hkl)}: no disc file {path}; remove it from reflections")
        m = read(path, ndim=2, overrides={"reciprocal_pixel_size": pixel_size},
                 required=("reciprocal_pixel_size",))
        report = report or m.calibration.report()
        images.append(block_mean(np.asarray(m.data, dtype=np.float64), downsample))
    return torch.as_tensor(np.stack(images)), report


class LacbedRefineTask(OptionsTask):
    """Task ``bloch.lacbed``: refine a crystal against measured D-LACBED discs (Felix's workflow).

    A Task rather than the core ``refine`` workflow for now, because the core task reads one
    measured 2D pattern, not a stack of LACBED discs with their g-vectors, and this
    refinement is staged: an orientation check of the discs against the other 7 flips, coarse
    scans of thickness and B as Felix does, then L-BFGS through the core refiner and
    curvature uncertainties. The physics (:mod:`emverse_bloch.lacbed`) and the fit
    (:class:`emverse_bloch.lacbed_fit.LacbedFit`) are separate pieces, ready to become a
    parametrization + forward model + ``core.ncc`` likelihood once the core task reads
    disc stacks.
    """

    def run(self, ctx):
        from emverse.run import RunResult

        o = ctx.options
        started = time.perf_counter()
        crystal = load_crystal(o.structure, ctx.resolve_path)
        folder = ctx.resolve_path(o.data_dir)
        observation, calibration = read_discs(folder, o.file_prefix, o.reflections, o.downsample,
                                              o.reciprocal_pixel_size)
        n = observation.shape[-1]
        pixel_size = o.reciprocal_pixel_size * o.downsample
        calibration["beam_energy_kv"] = {"value": o.voltage_kv, "unit": "kV", "source": "recipe"}
        calibration["zone_axis"] = {"value": list(o.zone_axis), "unit": "[uvw]", "source": "recipe"}
        ctx.add_table("calibration", ["field", "value", "unit", "source"],
                      [[k, str(v["value"]), v["unit"], v["source"]] for k, v in calibration.items()])
        simulator = LacbedSimulator(crystal, o.voltage_kv, o.zone_axis, o.x_direction, o.reflections,
                                    g_max=o.g_max, n_strong_beams=o.n_strong_beams, absorption=o.absorption,
                                    absorption_fraction=o.absorption_fraction, parametrization=o.parametrization)
        ctx.log.info("%d discs of %d×%d px (downsampled ×%d, %.5f Å⁻¹/px), %d ZOLZ beams in the pool, "
                     "%s per direction, absorption %s", len(o.reflections), n, n, o.downsample, pixel_size,
                     simulator.n_beams, o.n_strong_beams or "all", o.absorption)

        b_start = {e: float(o.b_iso.get(e, _crystal_b(crystal, e))) for e in crystal.elements}
        t_lo, t_hi = o.thickness_range_angstrom
        start = {"thickness": 0.5 * (t_lo + t_hi), **{f"B_{e}": b for e, b in b_start.items()},
                 "centre_row": 0.0, "centre_col": 0.0, "rotation": 0.0, "pixel_scale": 1.0,
                 "blur": o.blur_px, **{k: 0.0 for k in coordinate_names(crystal, o.coordinate_sites)}}
        refine = [k for k in start if k in o.refine or (k.startswith("B_") and "B" in o.refine)
                  or (k.startswith("xyz_") and "xyz" in o.refine)]
        fit = LacbedFit(simulator, n, pixel_size, start, refine, o.likelihood)

        # 1. orientation check
        with torch.no_grad():
            base = fit()
            scores = [float(disc_correlation(dihedral(base, k), observation).mean()) for k in range(8)]
        best = int(np.argmax(scores)) if o.orientation_check else 0
        fit.transform = best
        ctx.log.info("orientation check (mean NCC per flip/rotation k=0..7): %s -> k=%d",
                     ", ".join(f"{s:.3f}" for s in scores), best)

        # 2. coarse scans: thickness × pixel scale at the start B, then thickness × B at the best scale
        thicknesses = torch.arange(t_lo, t_hi + 1e-9, o.thickness_step_angstrom, dtype=torch.float64)
        scan = [(scores[best], start["thickness"], 1.0, 1.0)]  # the start itself stays a candidate

        def scan_thickness(scale: float, b_factor: float) -> None:
            fit.set_physical(pixel_scale=scale, **{f"B_{e}": b * b_factor for e, b in b_start.items()})
            p = fit.physical()
            with torch.no_grad():
                images = fit.simulate(p, thicknesses)
                for t, stack in zip(thicknesses.tolist(), images, strict=True):
                    r = disc_correlation(gaussian_blur(stack, p["blur"]), observation)
                    scan.append((float(r.mean()), t, scale, b_factor))

        def scan_all() -> dict[str, torch.Tensor]:
            for scale in o.pixel_scale_scan:
                scan_thickness(scale, 1.0)
            best_scale = max(scan)[2]
            for b_factor in o.b_scan_factors:
                if b_factor != 1.0:
                    scan_thickness(best_scale, b_factor)
            return {"scan": torch.tensor(scan, dtype=torch.float64)}

        # kept for `emverse run --resume` (the scans are most of a run's simulations)
        scan = [tuple(row) for row in ctx.stage("coarse-scan", scan_all)["scan"].tolist()]
        corr0, t0, s0, f0 = max(scan)
        fit.set_physical(thickness=t0, pixel_scale=s0, **{f"B_{e}": b * f0 for e, b in b_start.items()})
        ctx.log.info("coarse scan: best mean NCC %.4f at t = %.0f Å, pixel scale %.3f, B × %.2f",
                     corr0, t0, s0, f0)
        start_values = {k: float(v.detach()) for k, v in fit.physical().items()}
        with torch.no_grad():
            start_prediction = fit()
        start_corr = disc_correlation(start_prediction, observation)

        # 3. refine, with the strong beams of each direction fixed at the scan's best geometry
        simulator.fix_strong_beams(fit.incident(fit.physical()))
        refiner = ctx.build("refiner")

        def progress(step, model, loss):
            ctx.log.info("evaluation %d: loss %.5f", step, loss)

        # resumable: `emverse run --resume` reads the scans back and continues the refinement from
        # its last resume file
        result = refiner.refine(fit, observation, generator=ctx.generator("refiner"), callback=progress,
                                **ctx.resume_for(refiner, "refine"))
        with torch.no_grad():
            prediction = fit()
        end_corr = disc_correlation(prediction, observation)

        # 4. uncertainties, outputs
        names, values, su, _ = curvature_uncertainty(fit, observation)
        su_of = dict(zip(names, su, strict=True))
        refined = {k: float(v.detach()) for k, v in fit.physical().items()}
        rows = [[k, unit_of(k), round(start_values[k], 5), round(refined[k], 5),
                 round(su_of[k], 5) if k in su_of else "fixed"] for k in fit.names]
        ctx.add_table("refined parameters", ["parameter", "unit", "start (after scan)", "refined", "su"], rows)
        labels = [hkl_name(h) for h in o.reflections]
        ctx.add_table("per-disc NCC", ["disc", "start", "end"],
                      [[lab, round(float(a), 4), round(float(b), 4)]
                       for lab, a, b in zip(labels, start_corr, end_corr, strict=True)])
        ctx.save_figure("discs", disc_figure(observation, prediction, labels, end_corr))
        ctx.save_figure("scan", scan_figure(scan))
        ctx.save_checkpoint("lacbed", {"observation": observation, "prediction": prediction,
                                       "start_prediction": start_prediction})
        u_iso = {s.label: refined[f"B_{s.element}"] / (8 * math.pi**2) for s in crystal.sites}
        u_su = {s.label: su_of.get(f"B_{s.element}", math.nan) / (8 * math.pi**2) for s in crystal.sites}
        positions = fit.positions(fit.physical())
        if positions is not None:
            sites = tuple(dataclasses.replace(site, position=positions[i].detach().numpy().copy())
                          for i, site in enumerate(crystal.sites))
            crystal = dataclasses.replace(crystal, sites=sites)
            for site in crystal.sites:
                ctx.log.info("refined %s position %s", site.label, np.round(site.position, 5))
        crystal.to_cif(ctx.out_dir / "refined.cif", u_iso=u_iso, u_iso_su=u_su,
                  title=f"LACBED refinement ({ctx.recipe.name}); thickness "
                        f"{refined['thickness']:.1f}({su_of.get('thickness', math.nan):.1f}) Å",
                  extra={"emverse_refined_thickness_angstrom": f"{refined['thickness']:.2f}"})

        metrics = {
            "thickness_angstrom": refined["thickness"],
            "thickness_su_angstrom": su_of.get("thickness", math.nan),
            # the headline: mean per-disc NCC after refinement; "start" = after the coarse scan
            "mean_corr": float(end_corr.mean()),
            "mean_corr_start": float(start_corr.mean()),
            "mean_ncc_before_scan": scores[best],
            "orientation_transform": best,
            "n_beams_pool": simulator.n_beams,
            "n_strong_beams": o.n_strong_beams,
            "final_loss": float(result.final_loss),
            "seconds": time.perf_counter() - started,
        }
        for k in names:
            if k != "thickness":
                metrics[f"{k}"] = refined[k]
                metrics[f"{k}_su"] = su_of[k]
        for lab, a, b in zip(labels, start_corr, end_corr, strict=True):
            metrics[f"disc_ncc_start[{lab}]"] = float(a)
            metrics[f"disc_ncc_end[{lab}]"] = float(b)
        return RunResult(metrics)


def _crystal_b(crystal: Crystal, element: str) -> float:
    site = next(s for s in crystal.sites if s.element == element)
    lengths = np.sqrt(np.diag(crystal.reciprocal_metric))
    u_cart = crystal.lattice.T @ np.diag(lengths) @ site.u_cif @ np.diag(lengths) @ crystal.lattice
    return 8 * math.pi**2 * float(np.trace(u_cart)) / 3


def disc_figure(observation, prediction, labels, corr):
    """Rows: measured, simulated (scaled + background), residual; one column per disc; colour bars."""
    from emverse.figures import new_figure

    d = len(labels)
    fig, axes = new_figure(d, 3, size=2.0)
    a, b = scale_and_background(prediction, observation)
    fitted = a[:, None, None] * prediction + b[:, None, None]
    for j in range(d):
        for row, (image, title, cmap) in enumerate((
                (observation[j], f"{labels[j]} measured", "viridis"),
                (fitted[j], f"simulated r={float(corr[j]):.3f}", "viridis"),
                (observation[j] - fitted[j], "residual", "RdBu_r"))):
            ax = axes[row, j]
            image = image.numpy()
            kwargs = {}
            if row == 2:
                limit = float(np.abs(image).max()) or 1.0
                kwargs = {"vmin": -limit, "vmax": limit}
            im = ax.imshow(image, cmap=cmap, **kwargs)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    return fig


def scan_figure(scan):
    from emverse.figures import new_figure

    fig, axes = new_figure(1, 1, size=4)
    ax = axes[0, 0]
    for scale, factor in sorted({(s, f) for _, _, s, f in scan[1:]}):
        rows = [(t, c) for c, t, s, f in scan[1:] if (s, f) == (scale, factor)]
        ax.plot([t for t, _ in rows], [c for _, c in rows], marker="o",
                label=f"pixel scale {scale:.3f}, B × {factor:.2f}")
    ax.set_xlabel("thickness (Å)")
    ax.set_ylabel("mean NCC")
    ax.legend(fontsize=7)
    return fig
