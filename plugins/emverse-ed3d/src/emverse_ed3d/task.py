"""``ed3d.refine``: dynamical refinement of a structure (+ thickness model) against 3D-ED data."""

from __future__ import annotations

import math
import time

import attrs
import numpy as np
import tomllib
import torch
from emverse.crystal import Crystal
from emverse.interfaces import OptionsTask

from emverse_ed3d import metrics as M
from emverse_ed3d.model import HYDROGEN_ELEMENTS, SiteArrays
from emverse_ed3d.pets import read_pets, summary
from emverse_ed3d.problem import (
    absolute_structure,
    build_model,
    check_cell_matches,
    exact_physics_check,
    rocking_convergence,
)


def _select_frames(data, stride: int, max_frames: int):
    rows = np.arange(0, data.n_frames, stride)
    if max_frames and len(rows) > max_frames:
        rows = rows[np.linspace(0, len(rows) - 1, max_frames).round().astype(int)]
    return data.select_frames(rows) if len(rows) != data.n_frames else data


class Ed3dRefineTask(OptionsTask):
    """``ed3d.refine``: a structure and its thickness model refined against measured PETS2 frames.

    A plugin task because the core ``refine`` task reads measured 2D patterns, not PETS2
    reflection lists, and refines a parameter vector, not a crystal; and this refinement is
    staged around the data: frame selection, orientation refinement per frame,
    the kinematical start, the dynamical refinement (the recipe's ``[refiner]``) and the
    reflection statistics wR/R(obs) reported the way JANA and diffBloch report them."""

    def run(self, ctx):
        from emverse.run import RunResult

        o = ctx.options
        forward_model = ctx.build("forward_model")
        phys = forward_model.settings
        data = read_pets(ctx.resolve_path(o.data))
        data = _select_frames(data, o.frame_stride, o.max_frames)
        if phys.integration != "data":
            geometry = "precession" if phys.integration == "precession" else "continuous rotation"
            if geometry != data.geometry:
                ctx.log.info("integration: %s (forward_model.integration), the file says %s", geometry, data.geometry)
                data = attrs.evolve(data, geometry=geometry)
        truth = Crystal.from_cif(ctx.resolve_path(o.structure))
        check_cell_matches(truth, data.cell)
        ctx.log.info("data: %s", summary(data))
        t_true = None
        n_fit = phys.n_tilts
        rocking_thickness = phys.rocking_thickness_angstrom or o.t_init_angstrom
        if o.synthetic:
            from emverse_ed3d.problem import semi_angle_deg
            from emverse_ed3d.rocking import sub_orientations_for
            from emverse_ed3d.synthetic import make_synthetic

            semi = float(np.max(semi_angle_deg(data, phys.rocking_semi_angle_deg or None)))
            t_peak = o.profile_mean_angstrom + o.profile_amplitude_angstrom
            rocking_thickness = phys.rocking_thickness_angstrom or t_peak
            if n_fit <= 0:  # |g⊥| ≤ g_max bounds the step
                n_fit = sub_orientations_for(semi, phys.g_max, rocking_thickness, phys.rocking_target,
                                             precession=data.geometry.startswith("precession"))
            # the data are integrated twice as finely as the fit, so a too-coarse fit shows
            n_data = 2 * n_fit - 1
            ctx.log.info("synthetic data integrated over %d sub-orientations, the fit over %d", n_data, n_fit)
            data, t_true = make_synthetic(
                data, truth, profile=o.thickness_profile, mean_angstrom=o.profile_mean_angstrom,
                amplitude_angstrom=o.profile_amplitude_angstrom, dynamic_range=o.dynamic_range, g_max=phys.g_max,
                sg_max=phys.sg_max, rsg_max=phys.rsg_max or 0.66, n_tilts=n_data,
                rocking_semi_angle_deg=phys.rocking_semi_angle_deg or None, method=phys.method,
                generator=ctx.generator("synthetic"), rng=ctx.numpy_rng("synthetic"),
            )
            ctx.log.info("synthetic data: %s", summary(data))
        start = Crystal.from_cif(ctx.resolve_path(o.start_structure)) if o.start_structure else truth
        previous = None
        if o.continue_from:
            previous = load_previous_run(ctx.resolve_path(o.continue_from), data)
            start = previous["crystal"]
        reference = truth
        if o.enantiomer:
            start = start.inverted(name=o.enantiomer)
            reference = truth.inverted(name=o.enantiomer)
        anisotropic = None if o.adp == "auto" else (o.adp == "aniso")
        build_options = dict(
            thickness_model=o.thickness_model, t_min=o.t_min_angstrom, t_max=o.t_max_angstrom,
            t_init=o.t_init_angstrom, quadratic_prior=o.quadratic_prior, anisotropic=anisotropic,
            n_tilts=n_fit, rocking_thickness=rocking_thickness, hydrogens=o.hydrogens, riding_adp=o.riding_adp,
            **forward_model.physics_options(synthetic=o.synthetic),
        )
        first_data, first_options = data, build_options
        if previous and o.continue_reflections == "same":
            rules = {"g_max": phys.g_max, "rsg_max": phys.rsg_max}
            if previous["rules"] == rules:
                first_data = restrict_to_reflections(data, previous["reflections"])
                first_options = {**build_options, "rsg_max": None}  # the run's selection, as it was
                kept = np.isin(data.frames.frame_id, first_data.frames.frame_id)
                previous = {**previous, "corrections": previous["corrections"][kept]}
                ctx.log.info("continue_from: the run's %d reflections (its selection rules %s)",
                             first_data.n_reflections, rules)
            else:
                ctx.log.info("continue_from: selection rules %s differ from the run's %s; reflections selected "
                             "anew with its refined orientations", rules, previous["rules"])
        model = build_model(first_data, start, generator=ctx.generator("thickness_nn"),
                            corrections=previous["corrections"] if previous else None, **first_options)
        # the [forward_model] bound to these frames and this structure: what predicts the intensities
        forward_model.bind(model.physics, t_min=o.t_min_angstrom, t_max=o.t_max_angstrom)
        if previous:
            fit_thickness_to(model, previous)
            _continue_absorption(ctx, model, previous)
        st = model.structure
        if not (o.start_structure or o.continue_from) and o.perturbation_angstrom > 0:
            st.perturb(o.perturbation_angstrom, ctx.generator("perturbation"))
        if o.start_u_iso_angstrom2 > 0:
            st.set_adp(torch.eye(3, dtype=st.x0.dtype).repeat(st.x0.shape[0], 1, 1) * o.start_u_iso_angstrom2)
        st.delta.requires_grad_(o.refine_positions)
        st.adp.requires_grad_(o.refine_adp)
        if o.refine_absorption:  # forward_model.absorption > 0: checked at validation (RefineParams)
            model.log_absorption.requires_grad_(True)
        used = model.data
        if st.riding:
            ctx.log.info("riding H (H, parent, X–H Å): %s", st.riding)
        ctx.log.info("refining %d reflections on %d frames (%s physics, beams per frame ≤ %d)",
                     used.n_reflections, used.n_frames, model.physics.name, int(np.max(model.physics.n_beams)))

        ref_sites = SiteArrays(reference)
        ref_frac = ref_sites.frac
        ref_u = ref_sites.u_cart
        A = ref_sites.cell_matrix
        heavy = np.array([el not in HYDROGEN_ELEMENTS for el in ref_sites.elements])
        has_h = not heavy.all()
        theta_deg = np.degrees(model.theta.numpy())

        def structure_errors(model):
            out = {
                "asu_rmsd": M.asu_rmsd(st.frac_asu().detach().numpy(), ref_frac, A, ref_sites.rotations,
                                       ref_sites.translations),
                "adp_error": M.adp_frobenius(st.u_asu().detach().numpy(), ref_u),
            }
            if has_h:  # the same over the non-H atoms only
                out["asu_rmsd_non_h"] = M.asu_rmsd(st.frac_asu().detach().numpy()[heavy], ref_frac[heavy], A,
                                                   ref_sites.rotations, ref_sites.translations)
                out["adp_error_non_h"] = M.adp_frobenius(st.u_asu().detach().numpy()[heavy], ref_u[heavy])
            if t_true is not None:
                out["thickness_rms"] = M.thickness_error(model.thickness().detach().numpy(), t_true)["rms_angstrom"]
            return out

        with torch.no_grad():
            start_wr = model.loss().item()
        start_errors = structure_errors(model)
        ctx.log.info("start: wR(all) %.4f, %s", start_wr, start_errors)

        orientation_info = None
        if o.refine_orientation:
            from emverse_ed3d.refiners import refine_orientations

            t0 = time.perf_counter()

            def orient():
                info = refine_orientations(model, max_iter=o.orientation_max_iter)
                return {"orientation_delta": model.orientation_delta.detach().clone(),
                        **{k: torch.as_tensor(v) for k, v in info.items()}}

            # kept for `emverse run --resume`: a restored run sets the refined orientations again
            kept = ctx.stage("orientation", orient)
            with torch.no_grad():
                model.orientation_delta.copy_(kept.pop("orientation_delta"))
            orientation_info = {k: v.numpy() for k, v in kept.items()}
            ctx.log.info("orientation refinement: mean frame wR %.4f -> %.4f (%.1f s)",
                         orientation_info["wr_before"].mean(), orientation_info["wr_after"].mean(),
                         time.perf_counter() - t0)

        refiner = ctx.build("refiner")
        if o.epochs and hasattr(refiner, "epochs"):
            refiner.epochs = o.epochs
        if o.evaluate_only:
            refiner.epochs = 0
        total_epochs = refiner.epochs
        bar = ctx.progress(total=total_epochs, desc=f"ed3d {o.thickness_model}")
        done = [0]

        def callback(epoch, model, loss):
            bar.update(1)
            bar.set_postfix(wR=f"{loss:.4f}")
            epoch += done[0]
            if epoch % o.metrics_every == 0 or epoch == total_epochs:
                return structure_errors(model)
            return None

        # per-frame orientation angles refined by the gradient, with everything else; after
        # ``reselect_after_epochs`` the reflections are selected again (Rsg) with the refined
        # orientations and the refinement goes on with the same structure and thickness model
        model.orientation_angles.requires_grad_(o.refine_orientation_gradient)
        stages = [total_epochs]
        if o.refine_orientation_gradient and 0 < o.reselect_after_epochs < total_epochs and not o.synthetic:
            stages = [o.reselect_after_epochs, total_epochs - o.reselect_after_epochs]
        t0 = time.perf_counter()
        history: dict[str, list[float]] = {}
        for stage, epochs in enumerate(stages):
            if stage:
                model = self._reselect(model, data, start, build_options)
                used = model.data
                ctx.log.info("re-selected reflections with the refined orientations: %d reflections on %d frames",
                             used.n_reflections, used.n_frames)
            refiner.epochs = epochs
            # resumable: `emverse run --resume` continues this stage from its last checkpoint
            result = refiner.refine(model, None, generator=ctx.generator(f"refiner{stage or ''}"), callback=callback,
                                    **ctx.resume_for(refiner, f"refine{stage}", o.checkpoint_every,
                                                     {"refiner": ctx.spec("refiner").type, "epochs": epochs}))
            done[0] += result.iterations
            for key, values in result.history.items():
                history.setdefault(key, []).extend(values)
        result.history = history
        result.iterations = done[0]
        elapsed = time.perf_counter() - t0
        bar.close()
        used = model.data
        theta_deg = np.degrees(model.theta.numpy())
        # end-of-run checks of the physics: rocking-curve sampling, and the exact solve when approximated
        checks = {**(rocking_convergence(model) if o.rocking_check else {}), **exact_physics_check(model)}

        with torch.no_grad():
            i_calc = model.calculated()
        truth_table = torch.stack([model.i_obs, model.sigma], dim=1)
        wr = M.WRAll()(i_calc, truth_table)
        final_errors = structure_errors(model)
        out = {
            "wr_all": wr["wr_all"], "r_obs": wr["r_obs"], "n_obs": wr["n_obs"], "n_all": wr["n_all"],
            "asu_rmsd_angstrom": final_errors["asu_rmsd"], "adp_frobenius_angstrom2": final_errors["adp_error"],
            "start_wr_all": start_wr, "start_asu_rmsd_angstrom": start_errors["asu_rmsd"],
            "epochs": float(result.iterations), "refine_seconds": elapsed,
            "seconds_per_epoch": elapsed / max(result.iterations, 1),
            "n_frames": float(used.n_frames), "mean_thickness_angstrom": float(model.thickness().detach().mean()),
        }
        if has_h:
            out["asu_rmsd_non_h_angstrom"] = final_errors["asu_rmsd_non_h"]
            out["start_asu_rmsd_non_h_angstrom"] = start_errors["asu_rmsd_non_h"]
            out["adp_frobenius_non_h_angstrom2"] = final_errors["adp_error_non_h"]
            out["n_riding_h"] = float(len(st.riding))
        if t_true is not None:
            out["thickness_rms_angstrom"] = final_errors["thickness_rms"]
            out["thickness_relative_error"] = M.thickness_error(model.thickness().detach().numpy(), t_true)["relative"]
        out.update(checks)
        if model.log_absorption is not None:
            out["absorption_kappa"] = float(model.absorption().detach())
        if o.refine_orientation_gradient:
            angles = model.orientation_angles.detach().numpy()
            out["orientation_rms_correction_deg"] = float(np.degrees(np.sqrt((angles**2).mean())))
        thickness_now = model.thickness().detach().numpy()
        out.update({"thickness_min_angstrom": float(thickness_now.min()),
                    "thickness_max_angstrom": float(thickness_now.max())})
        if o.absolute_structure:
            out.update(absolute_structure(model, ctx.generator("absolute_structure")))
        if orientation_info is not None:
            out["orientation_mean_frame_wr_before"] = float(orientation_info["wr_before"].mean())
            out["orientation_mean_frame_wr_after"] = float(orientation_info["wr_after"].mean())

        # the recipe's [[metrics]]: feed each the inputs it understands
        for metric in ctx.build("metrics") if ctx.has("metrics") else []:
            if isinstance(metric, M.WRAll):
                values = metric(i_calc, truth_table)
            elif isinstance(metric, M.AsuRMSD):
                values = metric({"frac": st.frac_asu().detach()},
                                {"frac": ref_frac, "cell_matrix": A, "rotations": ref_sites.rotations,
                                 "translations": ref_sites.translations})
            elif isinstance(metric, M.AdpError):
                values = metric(st.u_asu().detach(), ref_u)
            elif isinstance(metric, M.ThicknessProfileError):
                if t_true is None:
                    continue
                values = metric(model.thickness().detach(), t_true)
            else:
                continue
            out.update({f"metric.{k}": v for k, v in values.items()})

        from emverse.io import write_json

        write_json(ctx.out_dir / "history.json", {k: list(map(float, v)) for k, v in result.history.items()})
        self._figures(ctx, result.history, theta_deg, model, t_true, i_calc, truth_table)
        refined = st.refined_crystal(name=f"{start.name}-refined")
        refined.to_cif(ctx.out_dir / "refined.cif", title=f"emverse ed3d.refine: wR(all) {wr['wr_all']:.4f}")
        write_reflection_table(ctx.out_dir / "reflections.csv", used, i_calc)
        write_json(ctx.out_dir / "thickness.json", {
            "frame_id": [int(f) for f in used.frames.frame_id], "theta_deg": theta_deg.tolist(),
            "thickness_angstrom": thickness_now.tolist(),
            "orientation_correction": model.orientation_correction().detach().numpy().tolist(),
            **({} if model.absorption() is None else {"absorption_kappa": float(model.absorption().detach())})})
        ctx.add_table(
            "refinement", ["quantity", "start", "final"],
            [["wR(all)", f"{start_wr:.4f}", f"{wr['wr_all']:.4f}"],
             ["R(obs)", "", f"{wr['r_obs']:.4f}"],
             ["N_obs / N_all", "", f"{int(wr['n_obs'])} / {int(wr['n_all'])}"],
             ["ASU RMSD (Å)", f"{start_errors['asu_rmsd']:.4f}", f"{final_errors['asu_rmsd']:.5f}"],
             ["ADP error (Å²)", f"{start_errors['adp_error']:.4f}", f"{final_errors['adp_error']:.5f}"]]
            + ([["ASU RMSD, non-H atoms (Å)", f"{start_errors['asu_rmsd_non_h']:.4f}",
                 f"{final_errors['asu_rmsd_non_h']:.5f}"],
                ["ADP error, non-H atoms (Å²)", f"{start_errors['adp_error_non_h']:.4f}",
                 f"{final_errors['adp_error_non_h']:.5f}"]] if has_h else [])
            + ([["thickness RMS error (Å)", f"{start_errors['thickness_rms']:.1f}",
                 f"{final_errors['thickness_rms']:.1f}"]] if t_true is not None else []),
        )
        ctx.add_text("model", f"{summary(used)}\nthickness model: {o.thickness_model}; physics: "
                              f"{model.physics.name}; hydrogens: {o.hydrogens}; {result.message}")
        ctx.save_checkpoint("refined", {
            "frac_asu": st.frac_asu().detach().contiguous(), "u_asu": st.u_asu().detach().contiguous(),
            "thickness_angstrom": model.thickness().detach().contiguous(),
            "theta_rad": model.theta.detach().contiguous(),
        }, metadata={"space_group": start.spacegroup, "labels": ",".join(s.label for s in start.sites)})
        return RunResult(metrics=out)

    @staticmethod
    def _reselect(model, data, start, build_options):
        """A new model on reflections selected with the model's refined orientations; the
        structure and thickness modules (and the orientations) carry over."""
        corrections = np.repeat(np.eye(3)[None], data.n_frames, axis=0)
        refined_ids = {int(f): c for f, c in zip(model.data.frames.frame_id,
                                                  model.orientation_correction().detach().numpy(), strict=True)}
        for row, frame_id in enumerate(data.frames.frame_id):
            if int(frame_id) in refined_ids:
                corrections[row] = refined_ids[int(frame_id)]
        new = build_model(data, start, corrections=corrections, structure_module=model.structure,
                          thickness_module=model.thickness_model, **build_options)
        new.orientation_angles.requires_grad_(True)
        new.log_absorption = model.log_absorption  # the (refined) κ carries over too
        return new

    @staticmethod
    def _figures(ctx, history, theta_deg, model, t_true, i_calc, truth_table):
        from emverse import figures as agg  # explicit Agg canvas, no backend switch

        keys = [("loss", "wR(all)"), ("asu_rmsd", "ASU RMSD (Å)"), ("adp_error", "ADP error (Å²)")]
        if "thickness_rms" in history:
            keys.append(("thickness_rms", "thickness RMS error (Å)"))
        fig, axes = agg.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
        for ax, (key, label) in zip(np.atleast_1d(axes), keys, strict=False):
            values = history.get(key, [])
            if values:
                ax.semilogy(np.arange(1, len(values) + 1) * (len(history["loss"]) // max(len(values), 1)), values)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
        fig.tight_layout()
        ctx.save_figure("history", fig)
        agg.close(fig)

        fig, ax = agg.subplots(figsize=(5, 3.4))
        ax.plot(theta_deg, model.thickness().detach().numpy(), "o-", ms=3, label="recovered")
        if t_true is not None:
            ax.plot(theta_deg, t_true, "k--", label="true")
        ax.set_xlabel("goniometer angle θ (deg)")
        ax.set_ylabel("thickness (Å)")
        ax.legend()
        fig.tight_layout()
        ctx.save_figure("thickness_profile", fig)
        agg.close(fig)

        fig = M.WRAll().figure(i_calc, truth_table)
        ctx.save_figure("iobs_vs_icalc", fig)
        agg.close(fig)


def write_reflection_table(path, data, i_calc) -> None:
    """h k l, frame id (the PETS2 file's), I_obs, σ(I), I_calc (scaled) — one row per reflection."""
    i_calc = i_calc.detach().cpu().numpy()
    frame_id = data.frames.frame_id[data.frame_index]
    lines = ["h,k,l,frame_id,i_obs,sigma,i_calc"]
    for (h, k, ell), f, io, sg, ic in zip(data.hkl, frame_id, data.intensity, data.sigma, i_calc, strict=True):
        lines.append(f"{h},{k},{ell},{f},{io:.6g},{sg:.6g},{ic:.6g}")
    path.write_text("\n".join(lines) + "\n")


def load_previous_run(run_dir, data) -> dict:
    """refined.cif, thickness profile and orientation corrections of a finished run, the last two
    mapped onto ``data``'s frames by PETS2 frame id (frames the run did not have: identity, and a
    thickness interpolated in θ)."""
    import json
    from pathlib import Path

    from emverse.errors import EmverseError

    from emverse_ed3d.params import DynamicalParams

    run_dir = Path(run_dir)
    missing = [n for n in ("refined.cif", "thickness.json") if not (run_dir / n).is_file()]
    if missing:
        raise EmverseError(
            f"options.continue_from = {str(run_dir)!r} lacks {', '.join(missing)}; give the directory of a "
            "finished ed3d.refine run"
        )
    saved = json.loads((run_dir / "thickness.json").read_text())
    reflections, rules = None, None
    if (run_dir / "reflections.csv").is_file() and (run_dir / "recipe.toml").is_file():
        table = np.loadtxt(run_dir / "reflections.csv", delimiter=",", skiprows=1, usecols=(0, 1, 2, 3),
                           dtype=np.int64, ndmin=2)
        reflections = {tuple(row) for row in table.tolist()}
        physics = tomllib.loads((run_dir / "recipe.toml").read_text()).get("forward_model", {})
        defaults = attrs.fields_dict(DynamicalParams)
        rules = {name: physics.get(name, defaults[name].default) for name in ("g_max", "rsg_max")}
    by_id = {int(f): (t, np.asarray(c)) for f, t, c in zip(saved["frame_id"], saved["thickness_angstrom"],
                                                              saved["orientation_correction"], strict=True)}
    corrections = np.array([by_id[int(f)][1] if int(f) in by_id else np.eye(3) for f in data.frames.frame_id])
    return {"crystal": Crystal.from_cif(run_dir / "refined.cif"), "corrections": corrections,
            "theta_deg": np.asarray(saved["theta_deg"]), "thickness": np.asarray(saved["thickness_angstrom"]),
            "reflections": reflections, "rules": rules, "absorption": saved.get("absorption_kappa")}


def _continue_absorption(ctx, model, previous) -> None:
    """The run's absorption κ (refined or not) replaces the recipe's start where this model has
    absorption; a run with κ continued without absorption is said in the log."""
    kappa = previous.get("absorption")
    if kappa is None:
        return
    if model.log_absorption is None:
        ctx.log.warning("continue_from: the run had absorption κ = %.4g but forward_model.absorption = 0 "
                        "here; continuing without absorption", kappa)
        return
    with torch.no_grad():
        model.log_absorption.fill_(math.log(kappa))
    ctx.log.info("continue_from: absorption κ = %.4g from the run", kappa)


def restrict_to_reflections(data, reflections):
    """``data`` with only the reflections whose (h, k, l, PETS2 frame id) are in ``reflections``
    (frames left empty are dropped)."""
    frame_id = data.frames.frame_id[data.frame_index]
    return data.keep_reflections(np.array([(h, k, ell, int(f)) in reflections
                                           for (h, k, ell), f in zip(data.hkl.tolist(), frame_id, strict=True)]))


def fit_thickness_to(model, previous, steps: int = 2000) -> None:
    """Fit the model's thickness network to a previous run's profile t(θ) (least squares, Adam;
    no physics involved), so a continued refinement starts from it."""
    order = np.argsort(previous["theta_deg"])
    theta_deg = np.degrees(model.theta.detach().numpy())
    target = torch.as_tensor(np.interp(theta_deg, previous["theta_deg"][order], previous["thickness"][order]),
                             dtype=model.theta.dtype)
    params = [p for p in model.thickness_model.parameters() if p.requires_grad]
    if not params:
        return
    optimiser = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = ((model.thickness() - target) ** 2).mean()
        loss.backward()
        optimiser.step()
