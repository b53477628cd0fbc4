"""Rocking-curve sampling: the step–thickness rule, and a too-coarse fit is caught."""

import logging
import math

import numpy as np
import pytest
import torch
from emverse_ed3d.problem import build_model, rocking_convergence
from emverse_ed3d.rocking import step_thickness_product, sub_orientations_for
from emverse_ed3d.synthetic import make_synthetic
from emverse_ed3d.thickness import ProfileThickness


def test_step_thickness_rule():
    # ±1°, |g⊥| ≤ 1.6 Å⁻¹, 850 Å: the span 2θ|g⊥|t = 47.5, so ΔS·t ≤ 0.5 needs 96 steps -> 97 samples
    n = sub_orientations_for(1.0, 1.6, 850.0, 0.5)
    assert n == 97 and n % 2 == 1
    assert step_thickness_product(n, 1.0, 1.6, 850.0) <= 0.5 < step_thickness_product(n - 2, 1.0, 1.6, 850.0)
    # the recipe's old 11 sub-orientations: ΔS·t ≈ 4.7 at 850 Å (the under-sampling)
    assert step_thickness_product(11, 1.0, 1.6, 850.0) == pytest.approx(2 * math.radians(1) * 1.6 * 850 / 10)
    assert sub_orientations_for(1.0, 0.1, 10.0, 0.5) == 3  # never fewer than 3
    # a precession cone of half-angle 1.4°, |g⊥| ≤ 0.8 Å⁻¹, 700 Å: step 2πθ|g⊥|/n, n = ⌈85.97⌉
    n = sub_orientations_for(1.4, 0.8, 700.0, 1.0, precession=True)
    assert n == 86
    assert step_thickness_product(n, 1.4, 0.8, 700.0, precession=True) <= 1.0
    assert step_thickness_product(n - 1, 1.4, 0.8, 700.0, precession=True) > 1.0


@pytest.mark.parametrize("geometry", ["continuous rotation", "precession"])
def test_kinematical_integral_converges_once_the_step_is_below_one_over_t(quartz_exp, quartz_structure, geometry):
    """Independent of any fit: the integrated kinematical intensity (sinc² rocking curves) at the
    rule's n agrees with 4× finer sampling to 1 %, while 5 sub-orientations miss by far more —
    over a rocking range and around a precession cone (π times more samples for the same step)."""
    import attrs

    data = attrs.evolve(quartz_exp.select_frames([10, 60]), geometry=geometry)
    t = 600.0
    m = build_model(data, quartz_structure, thickness_model="single", t_init=t, g_max=1.0, n_tilts=5)
    assert m.rocking["precession"] == (geometry == "precession")
    n_rule = sub_orientations_for(m.rocking["semi_angle_deg"], m.rocking["g_perp_max"], t, 0.5,
                                  precession=m.rocking["precession"])
    thickness = torch.full((m.n_frames,), t, dtype=torch.float64)
    out = {}
    for n in (5, n_rule, 4 * n_rule - 3):
        physics = m.physics.replace(n_tilts=n)
        out[n] = physics.intensities(thickness, kinematical=True).detach().numpy()
    fine = out[4 * n_rule - 3]
    strong = fine > 0.05 * fine.max()
    assert np.abs(out[n_rule] - fine)[strong].max() < 0.01 * fine.max()
    assert np.abs(out[5] - fine)[strong].max() > 0.1 * fine.max()


def test_too_coarse_fit_is_caught(quartz_exp, quartz_structure, caplog):
    """Synthetic data integrated twice as finely as the rule asks (700 Å); the true model fitted
    with 5 sub-orientations misfits and the convergence check warns; at the rule's n it fits to
    the noise (the data's own integration) without a warning."""
    geometry = quartz_exp.select_frames([3, 40, 77])
    probe = build_model(geometry, quartz_structure, thickness_model="single", g_max=1.0, n_tilts=3)
    n_rule = sub_orientations_for(1.0, probe.rocking["g_perp_max"], 700.0, 0.5)
    data, t_true = make_synthetic(geometry, quartz_structure, profile="constant", mean_angstrom=700.0,
                                  amplitude_angstrom=0.0, dynamic_range=1e6, g_max=1.0, n_tilts=2 * n_rule - 1,
                                  generator=torch.Generator().manual_seed(3), rng=np.random.default_rng(3))
    results = {}
    for n in (5, n_rule):
        m = build_model(data, quartz_structure, thickness_model="single", t_init=700.0, g_max=1.0, n_tilts=n,
                        check_cell=False)
        m.thickness_model = ProfileThickness(t_true)
        with caplog.at_level(logging.WARNING, logger="emverse_ed3d.problem"):
            caplog.clear()
            info = rocking_convergence(m)
            warned = any("under-sampled" in r.message for r in caplog.records)
        with torch.no_grad():
            results[n] = (float(m.loss()), info, warned)
    coarse, fine = results[5], results[n_rule]
    assert coarse[2] and coarse[1]["rocking_step_thickness"] > 1.0
    assert coarse[0] > 10 * fine[0]
    assert fine[0] < 0.01  # Poisson floor at 1e6 counts ~0.002
    assert not fine[2] and abs(fine[1]["rocking_wr_change"]) < 0.002
