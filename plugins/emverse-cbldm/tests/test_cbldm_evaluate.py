"""Evaluation statistics: the bootstrap interval of a median and the paired win fractions."""

import numpy as np
from emverse_cbldm.clusters import STRUCTURE_TYPES
from emverse_cbldm.evaluate import bootstrap_median_interval, summarise


def test_bootstrap_interval_of_the_median_matches_the_asymptotic_width():
    # median of n draws of N(0, 1): standard error sqrt(pi / 2) / sqrt(n) = 1.2533 / sqrt(n)
    n = 400
    values = np.random.default_rng(5).normal(size=n)
    low, high = bootstrap_median_interval(values, np.random.default_rng(6))
    assert low < np.median(values) < high
    expected_width = 2 * 1.96 * np.sqrt(np.pi / 2) / np.sqrt(n)
    assert abs((high - low) - expected_width) < 0.25 * expected_width
    again = bootstrap_median_interval(values, np.random.default_rng(6))
    assert again == (low, high)


def test_bootstrap_interval_narrows_with_more_pdfs():
    rng = np.random.default_rng(1)
    small = bootstrap_median_interval(rng.normal(size=25), np.random.default_rng(2))
    large = bootstrap_median_interval(rng.normal(size=900), np.random.default_rng(2))
    assert (large[1] - large[0]) < 0.4 * (small[1] - small[0])


def test_summary_counts_paired_wins_and_brackets_each_median():
    n = 12
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, size=n)
    # cbldm beats the MLP on every PDF and the CNN on the first 3 only
    mlp = base + 0.1
    cnn = np.where(np.arange(n) < 3, base + 0.05, base - 0.05)
    results = {
        "methods": ["cbldm", "mlp", "cnn"],
        "n_eval": n,
        "rw": {
            "cbldm": np.stack([base - 0.01, base + 0.01], axis=1),
            "mlp": mlp[:, None],
            "cnn": cnn[:, None],
        },
        "atoms": {m: np.full((n, 2 if m == "cbldm" else 1), 20) for m in ("cbldm", "mlp", "cnn")},
        "nfe": {"cbldm": 10},
    }
    val = {
        "type_index": np.array([STRUCTURE_TYPES.index("FCC")] * 6 + [STRUCTURE_TYPES.index("BCC")] * 6),
        "n_atoms": np.full(n, 40),
    }
    metrics = summarise(results, val)["metrics"]
    assert metrics["win_fraction.cbldm_vs_mlp"] == 1.0
    assert metrics["win_fraction.cbldm_vs_cnn"] == 3 / n
    assert "win_fraction.mlp_vs_cnn" not in metrics
    for m in ("cbldm", "mlp", "cnn"):
        assert metrics[f"median_rw_low95.{m}"] <= metrics[f"median_rw.{m}"]
        assert metrics[f"median_rw.{m}"] <= metrics[f"median_rw_high95.{m}"]


def test_summary_compares_the_samplers_pdf_by_pdf():
    n = 40
    plain = np.random.default_rng(3).uniform(0.2, 1.2, size=(n, 2))
    # accelerated: 0.02 worse on 30 PDFs, 0.05 better on 10; the medians alone hide which
    shift = np.where(np.arange(n) < 30, 0.02, -0.05)[:, None]
    results = {
        "methods": ["cbldm", "cbldm_accel"],
        "n_eval": n,
        "rw": {"cbldm": plain, "cbldm_accel": plain + shift},
        "atoms": {m: np.full((n, 2), 20) for m in ("cbldm", "cbldm_accel")},
        "nfe": {"cbldm": 50, "cbldm_accel": 45},
    }
    val = {"type_index": np.zeros(n, dtype=int), "n_atoms": np.full(n, 40)}
    summary = summarise(results, val)
    metrics = summary["metrics"]
    key = "cbldm_accel_minus_cbldm"
    assert np.isclose(metrics[f"paired_median_diff_rw.{key}"], 0.02)
    assert metrics[f"paired_median_diff_rw_low95.{key}"] <= 0.02 + 1e-12
    assert np.isclose(metrics[f"paired_median_diff_rw_high95.{key}"], 0.02)
    assert metrics["win_fraction.cbldm_accel_vs_cbldm"] == 10 / n
    header, rows = summary["sampler_table"]
    assert rows[0][0] == "45 vs 50" and len(rows[0]) == len(header)
