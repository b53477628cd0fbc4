"""R factors and structure-error metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from emverse_ed3d.metrics import (
    AdpError,
    AsuRMSD,
    ThicknessProfileError,
    WRAll,
    amplitude_weights,
    asu_rmsd,
    optimal_frame_scale,
    r_obs,
    wr_all,
)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_weights_follow_the_paper():
    i_obs, sigma = t([400.0, 100.0, -5.0, 0.05]), t([20.0, 10.0, 10.0, 10.0])
    f_obs, w = amplitude_weights(i_obs, sigma, 0.01)
    # σ(F) = σ(I)/(2√I): 20/(2·20) = 0.5; w = 1/sqrt(0.5² + (0.01·20)²)
    assert f_obs[0] == 20 and w[0].item() == pytest.approx(1 / math.sqrt(0.25 + 0.04))
    assert w[1].item() == pytest.approx(1 / math.sqrt(0.5**2 + 0.1**2))
    # weak or negative (I < 0.01σ): F = 0 and σ(F) = 5√σ(I)
    for k in (2, 3):
        assert f_obs[k] == 0 and w[k].item() == pytest.approx(1 / (5 * math.sqrt(10.0)))


def test_wr_all_hand_computed():
    i_obs, sigma = t([400.0, 100.0]), t([20.0, 10.0])
    i_calc = t([441.0, 81.0])  # F_c = 21, 9
    w = [1 / math.sqrt(0.25 + 0.04), 1 / math.sqrt(0.25 + 0.01)]
    expected = math.sqrt((w[0] ** 2 * 1 + w[1] ** 2 * 1) / (w[0] ** 2 * 400 + w[1] ** 2 * 100))
    assert wr_all(i_calc, i_obs, sigma).item() == pytest.approx(expected, rel=1e-12)
    assert wr_all(i_obs, i_obs, sigma).item() < 1e-12


def test_r_obs_uses_only_observed():
    i_obs, sigma = t([400.0, 100.0, 20.0]), t([20.0, 10.0, 10.0])  # third: I < 3σ
    i_calc = t([441.0, 81.0, 1000.0])
    r, n_obs = r_obs(i_calc, i_obs, sigma)
    assert n_obs == 2 and r.item() == pytest.approx(2 / 30)
    out = WRAll()(i_calc, torch.stack([i_obs, sigma], 1))
    assert out["n_all"] == 3 and out["n_obs"] == 2 and out["r_obs"] == pytest.approx(2 / 30)


def test_optimal_frame_scale_recovers_known_scales():
    gen = torch.Generator().manual_seed(0)
    frame = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    f_calc = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    k_true = t([2.5, 0.3])
    f_obs = k_true[frame] * f_calc
    w = torch.rand(7, generator=gen, dtype=torch.float64) + 0.1
    assert torch.allclose(optimal_frame_scale(f_obs, f_calc, w, frame, 2), k_true)


def test_asu_rmsd_is_symmetry_and_lattice_aware(quartz_structure):
    from emverse_ed3d.model import SiteArrays

    s = SiteArrays(quartz_structure)
    A = s.cell_matrix
    # the same atoms written as other symmetry images, shifted by lattice vectors: RMSD 0
    moved = np.stack([s.rotations[3] @ s.frac[0] + s.translations[3] + [1, 0, -2],
                      s.rotations[2] @ s.frac[1] + s.translations[2]])
    assert asu_rmsd(moved, s.frac, A, s.rotations, s.translations) < 1e-9
    # a 0.1 Å shift of one of two atoms: RMSD = 0.1/√2
    shifted = s.frac.copy()
    shifted[1] += np.linalg.solve(A, [0.1, 0, 0])
    assert asu_rmsd(shifted, s.frac, A, s.rotations, s.translations) == pytest.approx(0.1 / math.sqrt(2), rel=1e-9)
    # an allowed origin shift is undone when given
    origin = np.array([0.0, 0.0, 0.5])
    assert asu_rmsd(s.frac - origin, s.frac, A, s.rotations, s.translations, [origin]) < 1e-9
    value = AsuRMSD()({"frac": torch.as_tensor(shifted)},
                      {"frac": s.frac, "cell_matrix": A, "rotations": s.rotations, "translations": s.translations})
    assert value["asu_rmsd_angstrom"] == pytest.approx(0.1 / math.sqrt(2))


def test_adp_and_thickness_errors():
    u = np.stack([np.eye(3) * 0.01, np.eye(3) * 0.02])
    v = u.copy()
    v[1, 0, 1] = v[1, 1, 0] = 0.003
    assert AdpError()(torch.as_tensor(v), torch.as_tensor(u))["adp_frobenius"] == pytest.approx(
        math.sqrt((2 * 0.003**2) / 2))
    out = ThicknessProfileError()(torch.tensor([110.0, 190.0]), torch.tensor([100.0, 200.0]))
    assert out["thickness_rms_angstrom"] == pytest.approx(10.0)
    assert out["thickness_relative"] == pytest.approx(10.0 / 150.0)


def test_wr_figure():
    fig = WRAll().figure(t([1.0, 10.0, 100.0]), t([[1.2, 1.0], [9.0, 3.0], [110.0, 10.0]]))
    assert fig is not None
