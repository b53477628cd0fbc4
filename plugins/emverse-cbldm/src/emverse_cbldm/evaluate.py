"""Evaluation: Rwp between an input PDF and the PDFs of structures generated for it.

For each validation PDF every method proposes weight matrices (CbLDM: ``candidates`` draws
with the plain sampler and with the accelerated one; baselines: one deterministic
regression each). Each matrix goes through distance-geometry recovery, its G(r) is
computed with ``pdf.debye`` (CbLDM settings) and divided by its maximum, and

    Rw = √( Σ_r (G_in − G_gen)² / Σ_r G_in² )     (r = 0 … 29.99 Å, unit weights)

is recorded (with ``eval_polish_steps`` > 0 the positions are first polished against G_in,
the same for every method). A matrix with no atoms above threshold counts as a failure (Rw = 1, the
value of predicting G = 0; Rw is unbounded above, a wrong structure with sharp
peaks can score > 1). Tables: median Rw per structure type and per atom-count bin
(the shape of the CbLDM paper's Tables 2–3); spread over candidates; a 95 % bootstrap
interval on each method's overall median (resampling PDFs) and, for each CbLDM sampler, the
fraction of PDFs on which it beats each baseline (paired: same PDF). The plain and the
accelerated sampler start from the same noise; their comparison is the median of the per-PDF
differences (accelerated − plain) with its bootstrap interval. Every candidate's Rw and
atom count is kept in ``evaluation.json`` so the tables can be recomputed.
"""

from __future__ import annotations

import numpy as np
import torch
from emverse.errors import EmverseError

from .clusters import STRUCTURE_TYPES
from .recovery import MIN_DISTANCE_ANGSTROM, polish_against_pdf, recover_positions, rwp
from .sampler import AcceleratedSampler

#: atom-count bins of the CbLDM paper's Table 3
ATOM_BINS = ((5, 80), (81, 170), (171, 256))
FAILED_RW = 1.0
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_median_interval(
    values, rng: np.random.Generator, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    draws = rng.integers(0, values.size, size=(resamples, values.size))
    medians = np.median(values[draws], axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def structure_pdf(positions: np.ndarray) -> np.ndarray:
    from .dataset import simulate_pdfs

    return simulate_pdfs([positions])[0]


def rw(g_in: np.ndarray, g_gen: np.ndarray) -> float:
    """Rw of a candidate's G(r) against the input (no scale fitted): the one Rw of the project."""
    return float(rwp(torch.as_tensor(np.asarray(g_gen, dtype=np.float64)),
                     torch.as_tensor(np.asarray(g_in, dtype=np.float64))))


def matrix_to_candidate(
    blocks: torch.Tensor, g_in: np.ndarray, maxiter: int, polish_steps: int = 0,
    polish_lr: float = 0.01,
):
    """(positions or None, Rw, G_gen or None) for one generated block tensor (4, b, b).

    ``polish_steps`` > 0: after distance geometry, Adam on the positions (step ``polish_lr`` Å)
    lowers Rw against ``g_in`` through ``pdf.debye`` (the refiner's PDF polish).
    """
    try:
        x, _ = recover_positions(
            blocks.double(), maxiter=maxiter, init="best", min_distance_angstrom=MIN_DISTANCE_ANGSTROM
        )
    except EmverseError:
        return None, FAILED_RW, None
    if polish_steps > 0:
        from .pdf import cbldm_gr

        polished, _ = polish_against_pdf(
            lambda p: cbldm_gr(p, None, "Au"),  # one element: the form factor cancels
            torch.as_tensor(x - x.mean(0)), torch.as_tensor(g_in), steps=polish_steps,
            lr=polish_lr, min_distance=MIN_DISTANCE_ANGSTROM,
        )
        x = polished.numpy()
    g = structure_pdf(x)
    return x, rw(g_in, g), g


@torch.no_grad()
def generate_matrices(model, pdf: torch.Tensor, n: int, sampler: AcceleratedSampler, generator):
    """(B, n, 4, b, b) weight-matrix blocks for B normalised PDFs."""
    cond = pdf.repeat_interleave(n, dim=0)
    x = sampler.sample(model, (cond.shape[0], *model.event_shape), cond, None, generator)
    out = model.decode(x)
    return out.view(pdf.shape[0], n, *out.shape[1:])


_BLOCK = 64  # candidates per kept block of an evaluation (fixed: independent of the worker count)


def _compute_now(name: str, compute):
    """What ``keep`` does without a run to keep the pieces in: compute them."""
    return compute()


def _map_candidates(jobs: list, workers: int, wrap, keep=None):
    """``matrix_to_candidate(*job)`` for each of ``jobs``, in order, in ``workers`` processes
    (1 = here). Each worker runs torch on one thread; the result does not depend on ``workers``.

    ``keep(name, compute)`` (a run's ``ctx.stage``) keeps each block of ``_BLOCK`` results as it
    finishes, so an interrupted evaluation continues from the first block it had not finished."""
    keep = keep or _compute_now
    blocks = [jobs[i : i + _BLOCK] for i in range(0, len(jobs), _BLOCK)]
    bar = wrap(range(len(jobs)), desc="evaluate", total=len(jobs))
    ticks = iter(bar)
    results: list = []
    pool = None
    try:
        for index, block in enumerate(blocks):
            def compute(block=block):
                nonlocal pool
                if workers <= 1 or len(jobs) < 2:
                    return _encode([matrix_to_candidate(*job) for job in block])
                if pool is None:
                    import multiprocessing as mp
                    from concurrent.futures import ProcessPoolExecutor

                    # spawn, not fork: a forked child of a process that already ran OpenMP can hang
                    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                               initializer=torch.set_num_threads, initargs=(1,))
                return _encode(list(pool.map(matrix_to_candidate, *zip(*block, strict=True), chunksize=4)))

            results += _decode(keep(f"evaluate-candidates-{index * _BLOCK}", compute), len(block))
            for _ in block:
                next(ticks, None)
    finally:
        if pool is not None:
            pool.shutdown()
        if hasattr(bar, "close"):
            bar.close()
    return results


def _encode(outcomes: list) -> dict[str, torch.Tensor]:
    """A block of (positions or None, Rw, G or None) as named tensors."""
    out = {}
    for j, (x, r, g) in enumerate(outcomes):
        out[f"{j}.rw"] = torch.tensor(r, dtype=torch.float64)
        if x is not None:
            out[f"{j}.x"] = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if g is not None:
            out[f"{j}.g"] = torch.as_tensor(np.asarray(g, dtype=np.float64))
    return out


def _decode(tensors: dict[str, torch.Tensor], n: int) -> list:
    def array(key):
        return tensors[key].numpy() if key in tensors else None

    return [(array(f"{j}.x"), float(tensors[f"{j}.rw"]), array(f"{j}.g")) for j in range(n)]


def evaluate_model(model, val: dict, opts, generator, log=None, progress=None, keep=None) -> dict:
    """Rw of every method and candidate for the first ``opts.eval_structures`` validation PDFs.

    The plain and the accelerated sampler start from the same noise (one seed drawn from
    ``generator`` seeds both), so their Rw can be compared PDF by PDF. ``keep`` (the run's
    ``ctx.stage``) keeps the sampled matrices and each block of recovered candidates, so
    ``emverse run --resume`` continues an interrupted evaluation where it stopped."""
    n_eval = min(opts.eval_structures, len(val["pdf"]))
    pdf = torch.as_tensor(val["pdf"][:n_eval], dtype=torch.float32)
    samplers = {
        "cbldm": AcceleratedSampler(opts.sampling_steps, 1.0, 1.0),
        "cbldm_accel": AcceleratedSampler(
            opts.sampling_steps, opts.accelerated_t1, opts.accelerated_t2
        ),
    }
    device = generator.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))

    def sample():
        out = {
            name: generate_matrices(
                model, pdf, opts.candidates, s, torch.Generator(device=device).manual_seed(seed)
            )
            for name, s in samplers.items()
        }
        with torch.no_grad():
            for name, net in model.baselines.items():
                out[name] = net(pdf)[:, None]
        return {m: v.detach().cpu() for m, v in out.items()}

    # kept (with ``keep``) so that a resumed evaluation neither samples nor recovers twice
    matrices = (keep or _compute_now)("evaluate-matrices", sample)
    methods = [*samplers, *model.baselines]
    g_ins = val["pdf"][:n_eval].astype(np.float64)
    keys = [(i, m, k) for i in range(n_eval) for m in methods for k in range(matrices[m].shape[1])]
    jobs = [
        (matrices[m][i, k], g_ins[i], opts.recovery_maxiter, opts.eval_polish_steps,
         opts.eval_polish_lr)
        for i, m, k in keys
    ]
    wrap = progress or (lambda it, **kw: it)
    outcomes = dict(zip(keys, _map_candidates(jobs, opts.eval_workers, wrap, keep), strict=True))
    rws = {m: np.full((n_eval, matrices[m].shape[1]), np.nan) for m in methods}
    atoms = {m: np.zeros((n_eval, matrices[m].shape[1]), dtype=int) for m in methods}
    examples = []
    for i in range(n_eval):
        example = {"g_in": g_ins[i], "truth": val["positions"][i][: val["n_atoms"][i]], "methods": {}}
        for m in methods:
            best = None
            for k in range(matrices[m].shape[1]):
                x, r, g = outcomes[(i, m, k)]
                rws[m][i, k] = r
                atoms[m][i, k] = 0 if x is None else x.shape[0]
                if best is None or r < best[1]:
                    best = (x, r, g)
            example["methods"][m] = best
        if i < 4:
            examples.append(example)
    nfe = {name: s.nfe for name, s in samplers.items()}
    return {
        "rw": rws,
        "atoms": atoms,
        "methods": methods,
        "n_eval": n_eval,
        "examples": examples,
        "nfe": nfe,
        "polish_steps": opts.eval_polish_steps,
    }


def _median(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.median(values)) if values.size else float("nan")


def summarise(results: dict, val: dict, rng: np.random.Generator | None = None) -> dict:
    """Tables (header, rows) by type and atom-count bin, and scalar metrics.

    ``rng`` draws the bootstrap resamples (the run's seeded generator; a fixed one if None).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n = results["n_eval"]
    methods = results["methods"]
    type_index = val["type_index"][:n]
    n_atoms = val["n_atoms"][:n]
    # per PDF: the median over candidates (what a user gets from one draw) and the best of them
    per_pdf = {m: np.median(results["rw"][m], axis=1) for m in methods}
    best = {m: np.min(results["rw"][m], axis=1) for m in methods}
    spread = {m: np.std(results["rw"][m], axis=1) for m in methods}
    header = ["structure type", "n", *[f"{m} median Rw" for m in methods]]
    type_rows = []
    for ti, st in enumerate(STRUCTURE_TYPES):
        sel = type_index == ti
        if sel.any():
            type_rows.append(
                [st, int(sel.sum()), *[round(_median(per_pdf[m][sel]), 4) for m in methods]]
            )
    type_rows.append(["all", n, *[round(_median(per_pdf[m]), 4) for m in methods]])
    bin_rows = []
    for lo, hi in ATOM_BINS:
        sel = (n_atoms >= lo) & (n_atoms <= hi)
        if sel.any():
            bin_rows.append(
                [
                    f"{lo}-{hi}",
                    int(sel.sum()),
                    *[round(_median(per_pdf[m][sel]), 4) for m in methods],
                ]
            )
    # the paper's Table 3 shape: rows (atom bin, method), columns structure types
    present = [ti for ti in range(len(STRUCTURE_TYPES)) if (type_index == ti).any()]
    grid_rows = []
    for lo, hi in ATOM_BINS:
        in_bin = (n_atoms >= lo) & (n_atoms <= hi)
        if not in_bin.any():
            continue
        for m in methods:
            row = [f"{lo}-{hi}", m]
            for ti in present:
                sel = in_bin & (type_index == ti)
                row.append(round(_median(per_pdf[m][sel]), 4) if sel.any() else "-")
            grid_rows.append(row)
    grid_header = ["atoms", "method", *[STRUCTURE_TYPES[ti] for ti in present]]
    baselines = [m for m in methods if not m.startswith("cbldm")]
    metrics = {}
    for m in methods:
        metrics[f"median_rw.{m}"] = _median(per_pdf[m])
        metrics[f"median_best_rw.{m}"] = _median(best[m])
        metrics[f"mean_candidate_spread_rw.{m}"] = float(np.mean(spread[m]))
        metrics[f"failure_rate.{m}"] = float(np.mean(results["atoms"][m] == 0))
        recovered = results["rw"][m][results["atoms"][m] > 0]
        # Rw over the candidates that decoded to a structure (failures excluded)
        metrics[f"median_rw_recovered.{m}"] = _median(recovered)
        wins = 0
        for row in type_rows[:-1]:
            others = [row[2 + methods.index(b)] for b in baselines if b != m]
            if others and row[2 + methods.index(m)] < min(others):
                wins += 1
        metrics[f"types_better_than_baselines.{m}"] = float(wins)
    for name, value in results["nfe"].items():
        metrics[f"nfe.{name}"] = float(value)
    metrics["eval_polish_steps"] = float(results.get("polish_steps", 0))
    # uncertainty of the overall medians, and paired wins of each sampler over each baseline
    interval_rows = []
    for m in methods:
        low, high = bootstrap_median_interval(per_pdf[m], rng)
        metrics[f"median_rw_low95.{m}"] = low
        metrics[f"median_rw_high95.{m}"] = high
        wins = []
        for b in baselines if m.startswith("cbldm") else []:
            fraction = float(np.mean(per_pdf[m] < per_pdf[b]))
            metrics[f"win_fraction.{m}_vs_{b}"] = fraction
            wins.append(f"{b} {fraction:.2f}")
        interval_rows.append(
            [m, round(_median(per_pdf[m]), 4), round(low, 4), round(high, 4), ", ".join(wins) or "-"]
        )
    interval_header = ["method", "median Rw", "95 % low", "95 % high", "beats baseline on"]
    # accelerated against plain, PDF by PDF (both samplers start from the same noise)
    sampler_rows = []
    if "cbldm" in methods and "cbldm_accel" in methods:
        diff = per_pdf["cbldm_accel"] - per_pdf["cbldm"]
        low, high = bootstrap_median_interval(diff, rng)
        key = "cbldm_accel_minus_cbldm"
        metrics[f"paired_median_diff_rw.{key}"] = _median(diff)
        metrics[f"paired_median_diff_rw_low95.{key}"] = low
        metrics[f"paired_median_diff_rw_high95.{key}"] = high
        accel_lower = float(np.mean(diff < 0))
        metrics["win_fraction.cbldm_accel_vs_cbldm"] = accel_lower
        metrics["tie_fraction.cbldm_accel_vs_cbldm"] = float(np.mean(diff == 0))
        nfe = results["nfe"]
        sampler_rows.append(
            [
                f"{nfe.get('cbldm_accel', '?')} vs {nfe.get('cbldm', '?')}",
                round(_median(per_pdf["cbldm_accel"]), 4),
                round(_median(per_pdf["cbldm"]), 4),
                round(_median(diff), 4),
                round(low, 4),
                round(high, 4),
                round(accel_lower, 3),
            ]
        )
    sampler_header = [
        "NFE accelerated vs plain", "accelerated median Rw", "plain median Rw",
        "median of per-PDF differences", "95 % low", "95 % high", "accelerated lower on",
    ]
    return {
        "type_table": (header, type_rows),
        "interval_table": (interval_header, interval_rows),
        "sampler_table": (sampler_header, sampler_rows),
        "bin_table": (["atoms", "n", *header[2:]], bin_rows),
        "grid_table": (grid_header, grid_rows),
        "metrics": metrics,
    }


def report_evaluation(ctx, results: dict, val: dict) -> dict:
    from emverse.io import write_json

    summary = summarise(results, val, ctx.numpy_rng("bootstrap"))
    n = results["n_eval"]
    write_json(
        ctx.out_dir / "evaluation.json",
        {
            "methods": results["methods"],
            "structure_type": [STRUCTURE_TYPES[int(t)] for t in val["type_index"][:n]],
            "n_atoms": [int(a) for a in val["n_atoms"][:n]],
            "rw": {m: results["rw"][m] for m in results["methods"]},
            "generated_atoms": {m: results["atoms"][m] for m in results["methods"]},
            "nfe": results["nfe"],
            "polish_steps": results.get("polish_steps", 0),
        },
    )
    ctx.add_table("median Rw by structure type (validation)", *summary["type_table"])
    ctx.add_table("median Rw, 95 % bootstrap interval over PDFs", *summary["interval_table"])
    if summary["sampler_table"][1]:
        ctx.add_table(
            "accelerated vs plain sampler, paired by PDF (same starting noise)",
            *summary["sampler_table"],
        )
    ctx.add_table("median Rw by atom count (validation)", *summary["bin_table"])
    ctx.add_table("median Rw by atom count and type (validation)", *summary["grid_table"])
    ctx.save_figure("rw-distribution", rw_figure(results))
    for j, example in enumerate(results["examples"][:2]):
        ctx.save_figure(f"pdf-fits-{j}", fits_figure(example))
        ctx.save_figure(f"structures-{j}", structures_figure(example))
    return summary["metrics"]


def rw_figure(results):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    fig, ax = agg.subplots(figsize=(6, 3.5))
    methods = results["methods"]
    ax.boxplot([results["rw"][m].ravel() for m in methods])
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_ylabel("Rw (input PDF vs generated structure's PDF)")
    ax.set_title("validation Rw, every candidate")
    return fig


def fits_figure(example):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    r = np.arange(example["g_in"].size) * 0.01
    fig, ax = agg.subplots(figsize=(7, 4))
    ax.plot(r, example["g_in"], "k", lw=1.5, label="input")
    offset = 0.0
    for m, (x, value, g) in example["methods"].items():
        offset -= 1.2
        if g is not None:
            ax.plot(r, g + offset, lw=1, label=f"{m} (Rw {value:.3f}, {x.shape[0]} atoms)")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) / max (offset)")
    ax.legend(fontsize=7)
    return fig


def structures_figure(example):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    items = [("truth", example["truth"])] + [
        (m, v[0]) for m, v in example["methods"].items() if v[0] is not None
    ]
    fig = agg.figure(figsize=(3 * len(items), 3))
    for k, (name, x) in enumerate(items):
        ax = fig.add_subplot(1, len(items), k + 1, projection="3d")
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=20, c=x[:, 2], cmap="viridis", depthshade=True)
        ax.set_title(f"{name} ({x.shape[0]} atoms)", fontsize=8)
        ax.set_axis_off()
    return fig
