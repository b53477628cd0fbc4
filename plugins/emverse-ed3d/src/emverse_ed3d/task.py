"""``ed3d.refine``: dynamical refinement of a structure (+ thickness model) against 3D-ED data."""

from __future__ import annotations

import time

import numpy as np
import torch
from emverse.interfaces import OptionsTask

from emverse_ed3d import metrics as M
from emverse_ed3d.crystal import check_cell_matches, direct_matrix, read_structure
from emverse_ed3d.model import HYDROGEN_ELEMENTS
from emverse_ed3d.pets import read_pets, summary
from emverse_ed3d.problem import build_model


def _select_frames(data, stride: int, max_frames: int):
    rows = np.arange(0, data.n_frames, stride)
    if max_frames and len(rows) > max_frames:
        rows = rows[np.linspace(0, len(rows) - 1, max_frames).round().astype(int)]
    return data.select_frames(rows) if len(rows) != data.n_frames else data


class Ed3dRefineTask(OptionsTask):
    def run(self, ctx):
        from emverse.run import RunResult

        o = ctx.options
        data = read_pets(ctx.resolve_path(o.data))
        data = _select_frames(data, o.frame_stride, o.max_frames)
        truth = read_structure(ctx.resolve_path(o.structure))
        check_cell_matches(truth, data.cell)
        ctx.log.info("data: %s", summary(data))
        t_true = None
        if o.synthetic:
            from emverse_ed3d.synthetic import make_synthetic

            data, t_true = make_synthetic(
                data, truth, profile=o.thickness_profile, mean_angstrom=o.profile_mean_angstrom,
                amplitude_angstrom=o.profile_amplitude_angstrom, dynamic_range=o.dynamic_range, g_max=o.g_max,
                sg_max=o.sg_max, rsg_max=o.rsg_max or 0.66, n_tilts=o.n_tilts,
                rocking_semi_angle_deg=o.rocking_semi_angle_deg or None, backend=o.physics_backend,
                method=o.method, generator=ctx.generator("synthetic"), rng=ctx.numpy_rng("synthetic"),
            )
            ctx.log.info("synthetic data: %s", summary(data))
        start = read_structure(ctx.resolve_path(o.start_structure)) if o.start_structure else truth
        reference = truth
        if o.enantiomer:
            start = start.enantiomer(o.enantiomer)
            reference = truth.enantiomer(o.enantiomer)
        anisotropic = None if o.adp == "auto" else (o.adp == "aniso")
        model = build_model(
            data, start, thickness_model=o.thickness_model, t_min=o.t_min_angstrom, t_max=o.t_max_angstrom,
            t_init=o.t_init_angstrom, quadratic_prior=o.quadratic_prior, anisotropic=anisotropic,
            backend=o.physics_backend, g_max=o.g_max, sg_max=o.sg_max, n_tilts=o.n_tilts,
            rocking_semi_angle_deg=o.rocking_semi_angle_deg or None,
            rsg_max=None if o.synthetic else (o.rsg_max or None), method=o.method,
            hydrogens=o.hydrogens, riding_adp=o.riding_adp, bucket_ratio=o.bucket_ratio,
            generator=ctx.generator("thickness_nn"),
        )
        st = model.structure
        if not o.start_structure and o.perturbation_angstrom > 0:
            st.perturb(o.perturbation_angstrom, ctx.generator("perturbation"))
        if o.start_u_iso_angstrom2 > 0:
            st.set_adp(torch.eye(3, dtype=st.x0.dtype).repeat(st.x0.shape[0], 1, 1) * o.start_u_iso_angstrom2)
        st.delta.requires_grad_(o.refine_positions)
        st.adp.requires_grad_(o.refine_adp)
        used = model.data
        if st.riding:
            ctx.log.info("riding H (H, parent, X–H Å): %s", st.riding)
        ctx.log.info("refining %d reflections on %d frames (%s physics, beams per frame ≤ %d)",
                     used.n_reflections, used.n_frames, model.physics.name, int(np.max(model.physics.n_beams)))

        ref_frac = reference.frac
        ref_u = reference.u_cart
        A = direct_matrix(reference.cell)
        heavy = np.array([el not in HYDROGEN_ELEMENTS for el in reference.elements])
        has_h = not heavy.all()
        theta_deg = np.degrees(model.theta.numpy())

        def structure_errors(model):
            out = {
                "asu_rmsd": M.asu_rmsd(st.frac_asu().detach().numpy(), ref_frac, A, reference.rotations,
                                       reference.translations),
                "adp_error": M.adp_frobenius(st.u_asu().detach().numpy(), ref_u),
            }
            if has_h:  # the same over the non-H atoms only
                out["asu_rmsd_non_h"] = M.asu_rmsd(st.frac_asu().detach().numpy()[heavy], ref_frac[heavy], A,
                                                   reference.rotations, reference.translations)
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
            orientation_info = refine_orientations(model, max_iter=o.orientation_max_iter)
            ctx.log.info("orientation refinement: mean frame wR %.4f -> %.4f (%.1f s)",
                         orientation_info["wr_before"].mean(), orientation_info["wr_after"].mean(),
                         time.perf_counter() - t0)

        refiner = ctx.build("refiner")
        if o.epochs and hasattr(refiner, "epochs"):
            refiner.epochs = o.epochs
        bar = ctx.progress(total=refiner.epochs, desc=f"ed3d {o.thickness_model}")

        def callback(epoch, model, loss):
            bar.update(1)
            bar.set_postfix(wR=f"{loss:.4f}")
            if epoch % o.metrics_every == 0 or epoch == refiner.epochs:
                return structure_errors(model)
            return None

        t0 = time.perf_counter()
        result = refiner.refine(model, None, generator=ctx.generator("refiner"), callback=callback)
        elapsed = time.perf_counter() - t0
        bar.close()

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
            "n_frames": float(used.n_frames), "mean_thickness_angstrom": float(model.thickness().mean()),
        }
        if has_h:
            out["asu_rmsd_non_h_angstrom"] = final_errors["asu_rmsd_non_h"]
            out["start_asu_rmsd_non_h_angstrom"] = start_errors["asu_rmsd_non_h"]
            out["adp_frobenius_non_h_angstrom2"] = final_errors["adp_error_non_h"]
            out["n_riding_h"] = float(len(st.riding))
        if t_true is not None:
            out["thickness_rms_angstrom"] = final_errors["thickness_rms"]
            out["thickness_relative_error"] = M.thickness_error(model.thickness().detach().numpy(), t_true)["relative"]
        if orientation_info is not None:
            out["orientation_mean_frame_wr_before"] = float(orientation_info["wr_before"].mean())
            out["orientation_mean_frame_wr_after"] = float(orientation_info["wr_after"].mean())

        # the recipe's [[metrics]]: feed each the inputs it understands
        for metric in ctx.build("metrics") if ctx.has("metrics") else []:
            if isinstance(metric, M.WRAll):
                values = metric(i_calc, truth_table)
            elif isinstance(metric, M.AsuRMSD):
                values = metric({"frac": st.frac_asu().detach()},
                                {"frac": ref_frac, "cell_matrix": A, "rotations": reference.rotations,
                                 "translations": reference.translations})
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
        }, metadata={"space_group": start.space_group, "labels": ",".join(start.labels)})
        return RunResult(metrics=out)

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
