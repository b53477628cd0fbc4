"""bloch.cbed's parameter tables: the paper's MgB2 vector and tables built from any crystal.

* The "symmetry" table of MgB2 with anisotropic ADPs (U11, U33 free on the 6/mmm sites,
  U22 = U11, U12 = U11/2 implied) reproduces the paper table's pattern exactly when the
  paper's U12 is set to U11/2: two layouts, one physics.
* At [010] only h0l beams are excited and hᵀUh has no U12 term: the paper's U12 leave the
  pattern unchanged (why their posterior is their prior).
* Si from a CIF in origin choice 1: F(111) is complex with a phase fixed at ±45° by
  symmetry; freeing it along that phase at its independent-atom value changes nothing.
* The thickness scan (one eigendecomposition for every thickness) equals one forward pass
  per thickness.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel
from emverse_bloch.cbed import BlochCBED
from emverse_bloch.crystal import load_structure

SI = Path(__file__).resolve().parents[3] / "recipes" / "structures" / "Si.cif"
SMALL = {"detector_pixels": 24, "g_max": 0.8}


def test_paper_and_symmetry_tables_give_the_same_mgb2_pattern():
    paper = BlochCBED(structure="MgB2", **SMALL)
    symmetric = BlochCBED(structure="MgB2", parameter_table="symmetry", adp="anisotropic",
                          free_reflections=[(0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 0, 2)],
                          thickness_range_angstrom=(1800.0, 3800.0), **SMALL)
    assert symmetric.parameter_space.names == ("Mg1_U11", "Mg1_U33", "B1_U11", "B1_U33", "F_001", "F_100",
                                               "F_101", "F_002", "tilt_x", "tilt_y", "thickness")
    x = paper.parameter_space.sample_uniform(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 2], x[:, 5] = x[:, 0] / 2, x[:, 3] / 2
    xs = torch.cat([x[:, [0, 1, 3, 4]], x[:, 6:]], dim=1)
    assert float((paper(x) - symmetric(xs)).abs().max()) < 1e-14
    # and a U12 off U11/2 does change the tensors the two tables build
    x[:, 2] += 5.0
    assert not torch.allclose(paper.table.u_cif(x), symmetric.table.u_cif(xs))


def test_u12_does_not_reach_a_010_pattern():
    model = BlochCBED(structure="MgB2", **SMALL)
    x = model.default_parameters()
    y = model(x)
    for j in (2, 5):  # Mg_U12, B_U12
        moved = x.clone()
        moved[0, j] += 8.0
        assert float((model(moved) - y).abs().max()) < 1e-14
    moved = x.clone()
    moved[0, 0] += 8.0  # Mg_U11 does
    assert float((model(moved) - y).abs().max()) > 1e-4


def test_si_table_from_a_cif_frees_f_along_its_symmetry_phase():
    model = BlochCBED(structure=str(SI), crystal=load_structure(SI), zone_axis=(1, 1, 0),
                      free_reflections=[(1, 1, 1), (2, 2, 0)], **SMALL)
    assert model.table.kind == "symmetry"
    assert model.parameter_space.names == ("Si1_Uiso", "F_111", "F_220", "tilt_x", "tilt_y", "thickness")
    phase_111 = model.table.phases[0]
    assert abs(abs(torch.tensor(phase_111).angle()) - torch.pi / 4) < 1e-9  # origin choice 1: ±45°
    assert model.table.phases[1] == 1
    # the free F at the box centre are the independent-atom values: overriding changes nothing
    x = model.default_parameters()
    free = model(x)
    model.override_plan = None
    assert float((model(x) - free).abs().max()) < 1e-12


def test_thickness_scan_equals_one_forward_per_thickness():
    model = BlochCBED(structure="MgB2", **SMALL)
    x = model.parameter_space.sample_uniform(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = torch.tensor([1900.0, 2500.5, 3700.0], dtype=torch.float64)
    fast = model.scan(x, "thickness", values)
    slow = ForwardModel.scan(model, x, "thickness", values)
    assert fast.shape == (2, 3, 24, 24)
    assert float((fast - slow).abs().max()) < 1e-13


def test_bad_tables_are_refused_with_the_field_named():
    with pytest.raises(EmverseError, match="two-site"):
        BlochCBED(structure=str(SI), crystal=load_structure(SI), zone_axis=(1, 1, 0),
                  parameter_table="paper", **SMALL)
    with pytest.raises(EmverseError, match="thickness_range_angstrom"):
        BlochCBED(structure=str(SI), crystal=load_structure(SI), zone_axis=(1, 1, 0),
                  thickness_range_angstrom=(900.0, 500.0), **SMALL)
    with pytest.raises(EmverseError, match="forbidden"):
        BlochCBED(structure=str(SI), crystal=load_structure(SI), zone_axis=(1, 1, 0),
                  free_reflections=[(1, 0, 0)], **SMALL)


def test_si_physics_only_posterior_recovers_thickness_and_tilt(tmp_path):
    """recipes/cbed-si-physics.toml at reduced settings: uniform draws over the Si table's box,
    thickness scans, Fisher scoring and importance resampling find the truth's mode."""
    import json

    from emverse.run import run_recipe

    recipe = SI.parents[1] / "cbed-si-physics.toml"
    truth = [60.0, 18.0, 14.5, 0.05, -0.08, 1400.0]
    run = run_recipe(recipe, tmp_path / "run", overrides=[
        f"options.truth={truth}", "options.n_samples=96", "correction.n_starts=3",
        "correction.proposals=256", "correction.max_iterations=20", "correction.scan_points=64"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.7 < metrics["posterior_mean_chi2_reduced"] < 1.4
    for name, value in (("thickness", 1400.0), ("tilt_x", 0.05), ("tilt_y", -0.08)):
        z = abs(metrics[f"posterior_mean/{name}"] - value) / metrics[f"posterior_std/{name}"]
        assert z < 4.0, (name, metrics[f"posterior_mean/{name}"], metrics[f"posterior_std/{name}"])
    assert metrics["posterior_std/thickness"] < 10.0  # Å, from a 2,000 Å wide prior
