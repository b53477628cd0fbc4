"""PETS2 reader: real files, orientation convention, bad input."""

import math

import numpy as np
import pytest
from emverse.errors import EmverseError
from emverse_ed3d.model import cell_columns, frame_orientations, reciprocal_columns
from emverse_ed3d.pets import read_pets, wavelength_to_voltage_kv


def test_quartz_file_contents(quartz_exp):
    d = quartz_exp
    assert d.cell == pytest.approx((4.9226, 4.9226, 5.4003, 90, 90, 120))
    assert d.wavelength_angstrom == pytest.approx(0.02510)
    assert d.n_frames == 99
    # every data row of the reflection loop is kept (this file has no σ <= 0 / NaN rows)
    assert d.n_reflections == 6666 and d.skipped == {}
    assert d.ub[0, 0] == pytest.approx(-0.07048) and d.ub[2, 2] == pytest.approx(-0.02054)
    assert d.frames.alpha_deg[0] == pytest.approx(-49.197) and d.frames.scale[-1] == pytest.approx(0.710)
    assert tuple(d.hkl[0]) == (2, -3, -8) and d.intensity[0] == pytest.approx(146.10)
    assert d.frame_index.min() == 0 and d.frame_index.max() == 98
    assert d.geometry == "continuous rotation" and d.dstarmax_inv_angstrom == pytest.approx(1.8)


@pytest.mark.parametrize("name", ["cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets",
                                  "paracetamol_formII/APAP_dyn_reference.cif_pets"])
def test_other_experimental_files(pets_dir, name):
    d = read_pets(pets_dir / name)
    assert d.n_frames > 40 and d.n_reflections > 30000
    assert np.all(d.sigma > 0) and np.all(np.isfinite(d.intensity))


def test_synthetic_files_count_skipped_zero_sigma(pets_dir):
    d = read_pets(pets_dir / "paracetamol_formII" / "paracetamol_synthetic.cif_pets")
    # Poisson zeros come with σ = √0 = 0: skipped and counted, not silently used
    assert d.skipped == {"sigma_not_positive": 79}
    with pytest.raises(EmverseError, match="sigma not positive"):
        read_pets(pets_dir / "paracetamol_formII" / "paracetamol_synthetic.cif_pets", strict=True)


@pytest.mark.parametrize("name", ["quartz/quartz_exp.cif_pets", "cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets",
                                  "paracetamol_formII/APAP_dyn_reference.cif_pets"])
def test_orientation_convention_reproduces_zone_axes(pets_dir, name):
    """M_i = R_z(ω) R_x(α) R_y(β) U0 puts the beam (lab z) along the zone axis PETS lists."""
    d = read_pets(pets_dir / name)
    A = cell_columns(d.cell)
    R, _ = frame_orientations(d, d.cell)
    worst = 0.0
    for f in range(d.n_frames):
        beam_crystal = R[f].T @ np.array([0.0, 0.0, 1.0])  # Cartesian crystal frame
        zone = A @ d.frames.zone_axis[f]
        cos = abs(beam_crystal @ zone) / np.linalg.norm(zone)
        worst = max(worst, math.degrees(math.acos(min(1.0, cos))))
    assert worst < 0.05  # degrees; a wrong rotation order gives 0.1-17°


def test_observed_reflections_lie_on_the_ewald_sphere_for_beam_along_minus_z(quartz_exp):
    d = quartz_exp
    R, _ = frame_orientations(d, d.cell)
    B = reciprocal_columns(d.cell)
    k0 = 1 / d.wavelength_angstrom
    g = np.einsum("nij,jk,nk->ni", R[d.frame_index], B, d.hkl)
    g2 = (g**2).sum(1)
    s_minus = np.median(np.abs(g[:, 2] - g2 / (2 * k0)))  # beam along -z
    s_plus = np.median(np.abs(-g[:, 2] - g2 / (2 * k0)))  # beam along +z
    assert s_minus < 0.02 and s_plus > 2 * s_minus


def test_wavelength_to_voltage():
    assert wavelength_to_voltage_kv(0.025079) == pytest.approx(200.0, abs=0.05)
    assert wavelength_to_voltage_kv(0.033492) == pytest.approx(120.0, abs=0.05)


def test_missing_column_header_is_refused(small_pets):
    # every row then has one value more than the loop declares: refused, not dropped
    path = small_pets({"_refln_intensity_sigma\n": ""})
    with pytest.raises(EmverseError, match="wrong number 6 of tokens, expected 5"):
        read_pets(path)


def test_frames_without_reflections_are_dropped_and_counted(small_pets):
    # frame 2 has no reflections, frame 3 does: a gap in the data, not a cut file
    path = small_pets({"   1   1  -7      512.40      120.31     3\n": "",
                       "2   0  -8      151.36      164.95     2": "2   0  -8      151.36      164.95     3",
                       "2   1  -7     2278.28      296.96     2": "2   1  -7     2278.28      296.96     3"})
    d = read_pets(path)
    assert d.n_frames == 2 and d.skipped == {"frames_without_reflections": 1}
    assert d.frames.frame_id.tolist() == [1, 3]
    with pytest.raises(EmverseError, match="no reflections"):
        read_pets(path, strict=True)


def test_a_file_cut_at_a_row_boundary_is_refused(small_pets):
    # the last frame (3) has no reflections and the rows run frame by frame: a truncated file
    cut = {"   1   1  -7      512.40      120.31     3\n": ""}
    with pytest.raises(EmverseError, match=r"last 1 frame\(s\) \(ids \[3\]\).*looks truncated"):
        read_pets(small_pets(cut))
    # the same rows out of frame order are not the signature of a cut: read, frame 3 dropped
    swapped = small_pets({**cut,
                          "2  -3  -8      146.10      114.69     1": "2  -3  -8      146.10      114.69     2",
                          "2   0  -8      151.36      164.95     2": "2   0  -8      151.36      164.95     1"})
    assert read_pets(swapped).skipped == {"frames_without_reflections": 1}


def test_bad_sigma_and_nan_are_skipped_with_counts(small_pets):
    path = small_pets({"146.10      114.69": "146.10      0.0", "1374.61      409.41": "nan      409.41"})
    d = read_pets(path)
    assert d.n_reflections == 4  # 6 rows, 2 skipped
    assert d.skipped["sigma_not_positive"] == 1 and d.skipped["nonfinite_intensity_or_sigma"] == 1


def test_unknown_frame_id_is_an_error(small_pets):
    path = small_pets({"2278.28      296.96     2": "2278.28      296.96     7"})
    with pytest.raises(EmverseError, match=r"frame id\(s\) \[7\]"):
        read_pets(path)


def test_missing_file_and_non_pets_file(tmp_path):
    with pytest.raises(EmverseError, match="does not exist"):
        read_pets(tmp_path / "nope.cif_pets")
    other = tmp_path / "x.cif"
    other.write_text("data_x\n_cell_length_a 1\n_cell_length_b 1\n_cell_length_c 1\n_cell_angle_alpha 90\n"
                     "_cell_angle_beta 90\n_cell_angle_gamma 90\n_diffrn_radiation_wavelength 0.025\n"
                     + "".join(f"_diffrn_orient_matrix_UB_{i}{j} {1.0 if i == j else 0.0}\n"
                               for i in (1, 2, 3) for j in (1, 2, 3)))
    with pytest.raises(EmverseError, match="no frame"):
        read_pets(other)
