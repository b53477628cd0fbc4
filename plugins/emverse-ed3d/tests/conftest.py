
import pytest
from emverse.testing import shared_data_dir


@pytest.fixture(autouse=True)
def _one_thread():
    """Our tensors are small: with 2 intra-op threads on a loaded 2-core machine torch
    spins and a 60-point MLP step takes 35x longer than with one. Restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pets_dir():
    path = shared_data_dir() / "ed3d_pets"
    if not path.is_dir():
        pytest.skip("shared ed3d_pets data not present")
    return path


@pytest.fixture(scope="session")
def quartz_exp(pets_dir):
    from emverse_ed3d.pets import read_pets

    return read_pets(pets_dir / "quartz" / "quartz_exp.cif_pets")


@pytest.fixture(scope="session")
def quartz_structure(pets_dir):
    from emverse.crystal import Crystal

    return Crystal.from_cif(pets_dir / "quartz" / "quartz_refined_P3221.cif")


@pytest.fixture
def small_pets(tmp_path):
    """A tiny, valid .cif_pets text (two frames) that tests can break on purpose."""
    text = """data_pets
_cell_length_a 4.9226
_cell_length_b 4.9226
_cell_length_c 5.4003
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_diffrn_radiation_wavelength 0.02510
_diffrn_orient_matrix_UB_11 -0.07048
_diffrn_orient_matrix_UB_12 -0.02116
_diffrn_orient_matrix_UB_13  0.17811
_diffrn_orient_matrix_UB_21  0.22434
_diffrn_orient_matrix_UB_22  0.14328
_diffrn_orient_matrix_UB_23  0.05362
_diffrn_orient_matrix_UB_31 -0.02954
_diffrn_orient_matrix_UB_32  0.18790
_diffrn_orient_matrix_UB_33 -0.02054
_diffrn_measurement_details
;
data collection geometry: continuous rotation
dstarmax:  1.800
;
loop_
_diffrn_zone_axis_id
_diffrn_zone_axis_u
_diffrn_zone_axis_v
_diffrn_zone_axis_w
_diffrn_zone_axis_precession_angle
_diffrn_zone_axis_alpha
_diffrn_zone_axis_beta
_diffrn_zone_axis_omega
_diffrn_zone_axis_scale
   1 -1.00000  0.07564 -0.28404     1.000   -49.197    -0.130     0.287     0.748
   2 -1.00000  0.10206 -0.28473     1.000   -48.037    -0.210     0.164     0.788
   3 -1.00000  0.12510 -0.28591     1.000   -47.055    -0.230     0.249     0.700

loop_
_refln_index_h
_refln_index_k
_refln_index_l
_refln_intensity_meas
_refln_intensity_sigma
_refln_zone_axis_id
   2  -3  -8      146.10      114.69     1
   2  -2  -8      -28.50      163.17     1
   2  -1  -8     1374.61      409.41     1
   2   0  -8      151.36      164.95     2
   2   1  -7     2278.28      296.96     2
   1   1  -7      512.40      120.31     3
"""

    def write(replace=None, name="small.cif_pets"):
        body = text
        for old, new in (replace or {}).items():
            assert old in body, old
            body = body.replace(old, new)
        path = tmp_path / name
        path.write_text(body)
        return path

    return write
