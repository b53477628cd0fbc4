"""Task ``cbldm.infer``: candidate structures for measured PDFs with a trained CbLDM.

Built from the recipe's tables: ``[prior]`` (``cbldm.ldm``, a trained model), ``[sampler]``
(the latent sampler), ``[refiner]`` (``cbldm.distance_geometry``: weight matrix → positions,
polished against the PDF) and ``[forward_model]`` (``pdf.debye`` with the settings the model
was trained with, on r = 0, 0.01, …, 29.99 Å). Each ``.gr`` file is read with emverse-pdf's
reader, resampled (linear interpolation) onto that grid — zero beyond the file's last r, as a
measured G(r) carries no information there — and divided by its maximum. The sampler draws
``candidates`` latents, the matrix-VAE decodes them, the refiner recovers positions (and
polishes them against the PDF through the forward model when ``polish_steps`` > 0) and the
report gives Rwp (scale fitted, ``fit_rmin``–``fit_rmax``) of each candidate's G(r) against
the measured one. It stays a plugin task because its unknown changes form on the way (latent
→ weight matrix → positions), which the core ``infer`` task does not express.
"""

from __future__ import annotations

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import OptionsTask
from emverse.io import write_text
from emverse.run import RunResult

R_GRID = np.arange(3000) * 0.01


def resample_to_model_grid(r: np.ndarray, g: np.ndarray, *, source: str = "G(r)") -> np.ndarray:
    """G(r) on r = 0 … 29.99 Å (step 0.01), zero outside the measured range; divided by its maximum."""
    r = np.asarray(r, dtype=float)
    g = np.asarray(g, dtype=float)
    if r.ndim != 1 or r.shape != g.shape or r.size < 2:
        raise EmverseError(
            f"{source}: r and G must be 1D arrays of the same length ≥ 2, got {r.shape} and {g.shape}"
        )
    if not np.all(np.diff(r) > 0):
        raise EmverseError(
            f"{source}: r must increase strictly; sort the file or remove duplicate rows"
        )
    step = float(np.median(np.diff(r)))
    if step > 0.05:
        raise EmverseError(
            f"{source}: r step {step:.3g} Å is coarser than 0.05 Å; the model needs G(r) sampled at "
            "0.01 Å on 0–30 Å — regenerate the PDF with rstep ≤ 0.05"
        )
    if r[-1] < 10.0 or r[0] > 2.0:
        raise EmverseError(
            f"{source}: r covers {r[0]:.2f}–{r[-1]:.2f} Å; the model needs at least 2–10 Å "
            "(ideally 0–30 Å)"
        )
    out = np.interp(R_GRID, r, g, left=0.0, right=0.0)
    out[R_GRID > r[-1]] = 0.0
    peak = out.max()
    if not peak > 0:
        raise EmverseError(f"{source}: G(r) has no positive value; check the file's columns")
    return out / peak


def write_xyz(path, positions: np.ndarray, element: str, comment: str = "") -> None:
    lines = [str(len(positions)), comment]
    lines += [f"{element} {x:.5f} {y:.5f} {z:.5f}" for x, y, z in positions]
    write_text(path, "\n".join(lines) + "\n")


class InferTask(OptionsTask):
    def run(self, ctx):
        from emverse_pdf.gr_io import read_gr
        from emverse_pdf.metrics import rwp

        opts = self.options
        model = ctx.build("prior")
        sampler = ctx.build("sampler")
        refiner = ctx.build("refiner")
        pdf_model = ctx.build("forward_model")
        grid = getattr(pdf_model, "r", None)
        if grid is None or grid.numel() != R_GRID.size or not np.allclose(grid.double().numpy(), R_GRID):
            raise EmverseError(
                f"[forward_model] {ctx.spec('forward_model').type!r} must give G(r) on the model's grid "
                "r = 0, 0.01, …, 29.99 Å; use type = \"pdf.debye\" with rmin = 0, rmax = 30, rstep = 0.01")
        element = pdf_model.elements if isinstance(getattr(pdf_model, "elements", None), str) else opts.element
        generator = ctx.generator("infer")
        r_t = torch.as_tensor(R_GRID)
        metrics = {}
        rows = []
        for obs_path in opts.observations:
            data = read_gr(ctx.resolve_path(obs_path))
            name = ctx.resolve_path(obs_path).stem
            g_in = resample_to_model_grid(data.r, data.g, source=str(obs_path))
            cond = torch.as_tensor(g_in, dtype=torch.float32)[None].repeat(opts.candidates, 1)
            with torch.no_grad():
                latents = sampler.sample(
                    model, (opts.candidates, *model.event_shape), cond, None, generator
                )
                blocks = model.decode(latents)
            candidates = []
            for k in range(opts.candidates):
                try:
                    result = refiner.refine(
                        pdf_model,
                        {"weight_matrix": blocks[k].double(), "pdf": torch.as_tensor(g_in)},
                        generator=generator,
                    )
                except EmverseError as exc:
                    ctx.log.warning("%s candidate %d: %s", name, k, exc)
                    continue
                x = result.parameters["positions"].numpy()
                with torch.no_grad():
                    g = pdf_model(torch.as_tensor(x)[None])[0].numpy()
                g = g / g.max()
                value = float(
                    rwp(
                        torch.as_tensor(g),
                        torch.as_tensor(g_in),
                        r=r_t,
                        rmin=opts.fit_rmin,
                        rmax=opts.fit_rmax,
                    )
                )
                candidates.append((value, x, g))
                if opts.write_xyz:
                    write_xyz(
                        ctx.out_dir / "candidates" / f"{name}_{k}.xyz",
                        x,
                        element,
                        f"Rwp={value:.4f}",
                    )
                rows.append([name, k, x.shape[0], round(value, 4)])
            if not candidates:
                raise EmverseError(
                    f"{name}: no candidate had atoms above threshold; the model failed on this PDF"
                )
            values = np.array([c[0] for c in candidates])
            metrics[f"{name}.best_rwp"] = float(values.min())
            metrics[f"{name}.median_rwp"] = float(np.median(values))
            metrics[f"{name}.spread_rwp"] = float(values.std())
            metrics[f"{name}.n_candidates"] = float(len(candidates))
            ctx.save_figure(
                f"{name}-fits", _fits_figure(name, g_in, sorted(candidates, key=lambda c: c[0]))
            )
            ctx.save_figure(
                f"{name}-structures",
                _structures_figure(name, sorted(candidates, key=lambda c: c[0])),
            )
        ctx.add_table("candidates", ["observation", "candidate", "atoms", "Rwp"], rows)
        metrics["nfe"] = float(getattr(sampler, "nfe", float("nan")))
        return RunResult(metrics)


def _fits_figure(name, g_in, candidates):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(7, 4))
    ax.plot(R_GRID, g_in, "k", lw=1.5, label=f"{name} (measured, /max)")
    for j, (value, x, g) in enumerate(candidates[:3]):
        scale = float(np.dot(g, g_in) / max(np.dot(g, g), 1e-30))
        ax.plot(
            R_GRID,
            scale * g - 1.2 * (j + 1),
            lw=1,
            label=f"candidate {j}: {x.shape[0]} atoms, Rwp {value:.3f}",
        )
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (offset)")
    ax.legend(fontsize=7)
    return fig


def _structures_figure(name, candidates):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    items = candidates[:3]
    fig = agg.figure(figsize=(3 * len(items), 3))
    for k, (value, x, _) in enumerate(items):
        ax = fig.add_subplot(1, len(items), k + 1, projection="3d")
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=20, c=x[:, 2], cmap="viridis")
        ax.set_title(f"#{k}: {x.shape[0]} atoms, Rwp {value:.3f}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(name, fontsize=9)
    return fig
