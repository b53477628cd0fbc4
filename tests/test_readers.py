"""emverse.readers: measured files and in-memory signals with their calibrations."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from emverse.errors import EmverseError
from emverse.paths import shared_data_dir
from emverse.readers import read

pytest.importorskip("rsciio")
pytest.importorskip("h5py")

DIAMOND_000 = shared_data_dir() / "lacbed/diamond_felixpython/DM3_100x100/C_+0+0+0.dm3"


def _stem_4d(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((3, 4, 8, 8)).astype(np.float32)


def _axes(scan_nm=0.05, k_inv_nm=0.2):
    nav = [{"name": n, "size": s, "scale": scan_nm, "offset": 0.0, "units": "nm", "navigate": True}
           for n, s in (("y", 3), ("x", 4))]
    sig = [{"name": n, "size": 8, "scale": k_inv_nm, "offset": 0.0, "units": "1/nm", "navigate": False}
           for n in ("ky", "kx")]
    return nav + sig


def _write_emd(path: Path, data, axes):
    """A Berkeley EMD (HDF5) file through rosettasciio's writer (it keeps axes, not metadata)."""
    from rsciio.emd import file_writer

    file_writer(str(path), {"data": data, "axes": axes, "metadata": {"General": {"title": "sim"},
                                                                      "Signal": {}},
                            "original_metadata": {}})


def test_emd_file_calibrations_in_angstrom(tmp_path):
    data = _stem_4d()
    path = tmp_path / "scan.emd"
    _write_emd(path, data, _axes())
    with pytest.raises(EmverseError, match=r"scan\.emd.*beam_energy_kv \(kV\).*set beam_energy_kv"):
        read(path, ndim=4, required=("beam_energy_kv", "scan_step_angstrom"))
    m = read(path, ndim=4, required=("scan_step_angstrom",))
    np.testing.assert_array_equal(m.data, data)
    c = m.calibration
    assert c.scan_step_angstrom == pytest.approx(0.5)  # 0.05 nm
    assert c.reciprocal_pixel_size == pytest.approx(0.02)  # 0.2 nm⁻¹ = 0.02 Å⁻¹
    report = c.report()
    assert report["scan_step_angstrom"] == {"value": pytest.approx(0.5), "unit": "Å", "source": "file"}


def test_recipe_overrides_the_file_and_is_reported(tmp_path):
    path = tmp_path / "scan.emd"
    _write_emd(path, _stem_4d(), _axes())
    m = read(path, overrides={"beam_energy_kv": 200.0, "zone_axis": [1, -1, 0]})
    assert m.calibration.beam_energy_kv == 200.0
    assert m.calibration.report()["beam_energy_kv"]["source"] == "recipe"
    assert m.calibration.zone_axis == (1, -1, 0)


def test_duck_typed_signal_gives_the_same_as_the_file(tmp_path):
    data = _stem_4d(1)
    path = tmp_path / "scan.emd"
    _write_emd(path, data, _axes())
    from_file = read(path, ndim=4)
    axes = [SimpleNamespace(index_in_array=i, **{k: a[k] for k in ("scale", "units", "navigate")})
            for i, a in enumerate(_axes())]
    signal = SimpleNamespace(data=data, axes_manager=SimpleNamespace(_axes=axes), metadata={})
    from_signal = read(signal, ndim=4)
    np.testing.assert_array_equal(from_signal.data, from_file.data)
    assert from_signal.calibration.report() == from_file.calibration.report()


def test_datacube_like_object_gives_the_same_as_the_file(tmp_path):
    """A py4DSTEM DataCube stand-in (py4DSTEM pins numpy 1.26, so it is not installed here):
    same data and calibrations as the EMD file (Q in Å⁻¹, R in Å, py4DSTEM's default units)."""
    data = _stem_4d(4)
    path = tmp_path / "scan.emd"
    _write_emd(path, data, _axes(scan_nm=0.05, k_inv_nm=0.2))
    calibration = SimpleNamespace(get_Q_pixel_size=lambda: 0.02, get_Q_pixel_units=lambda: "A^-1",
                                  get_R_pixel_size=lambda: 0.5, get_R_pixel_units=lambda: "A",
                                  get_QR_rotation_degrees=lambda: None)
    cube = SimpleNamespace(data=data, calibration=calibration, name="cube")
    from_cube, from_file = read(cube, ndim=4), read(path, ndim=4)
    np.testing.assert_array_equal(from_cube.data, from_file.data)
    assert from_cube.calibration.scan_step_angstrom == pytest.approx(from_file.calibration.scan_step_angstrom)
    assert from_cube.calibration.reciprocal_pixel_size == pytest.approx(
        from_file.calibration.reciprocal_pixel_size)


def test_npy_with_metadata_table_and_tiff(tmp_path):
    data = _stem_4d(2)
    np.save(tmp_path / "cube.npy", data)
    (tmp_path / "cube.npy.toml").write_text("beam_energy_kv = 200.0\nscan_step_angstrom = 0.4\n"
                                            "reciprocal_pixel_size = 0.011\n")
    m = read(tmp_path / "cube.npy", ndim=4, required=("scan_step_angstrom",))
    assert m.calibration.scan_step_angstrom == 0.4 and m.calibration.reciprocal_pixel_size == 0.011
    from rsciio.tiff import file_writer

    image = data[0, 0]
    file_writer(str(tmp_path / "img.tif"), {"data": image, "axes": _axes()[2:], "metadata": {},
                                            "original_metadata": {}})
    np.testing.assert_allclose(read(tmp_path / "img.tif", ndim=2).data, image)


def test_zarr_with_attributes(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = _stem_4d(3)
    array = zarr.create_array(str(tmp_path / "cube.zarr"), shape=data.shape, dtype=data.dtype)
    array[...] = data
    array.attrs.update({"beam_energy_kv": 80.0, "scan_step_angstrom": 0.3})
    m = read(tmp_path / "cube.zarr", ndim=4)
    np.testing.assert_array_equal(m.data, data)
    assert m.calibration.beam_energy_kv == 80.0


@pytest.mark.skipif(not DIAMOND_000.exists(), reason="shared LACBED data not present")
def test_dm3_without_calibration_names_file_and_field():
    with pytest.raises(EmverseError, match=r"C_\+0\+0\+0\.dm3.*reciprocal_pixel_size"):
        read(DIAMOND_000, ndim=2, required=("reciprocal_pixel_size",))
    m = read(DIAMOND_000, ndim=2, overrides={"reciprocal_pixel_size": 0.01778},
             required=("reciprocal_pixel_size",))
    assert m.data.shape == (100, 100) and m.calibration.sources["reciprocal_pixel_size"] == "recipe"


def test_bad_input_is_refused(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((5, 8, 8)))
    with pytest.raises(EmverseError, match=r"stack\.npy.*3D.*4D"):
        read(tmp_path / "stack.npy", ndim=4)
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 8, 8)))
    for bad in (0.0, math.nan):
        with pytest.raises(EmverseError, match=r"cube\.npy.*scan_step_angstrom"):
            read(tmp_path / "cube.npy", ndim=4, overrides={"scan_step_angstrom": bad})
    path = tmp_path / "zero.emd"
    _write_emd(path, _stem_4d(), _axes(scan_nm=0.0))
    with pytest.raises(EmverseError, match=r"zero\.emd.*scan_step_angstrom = 0"):
        read(path, ndim=4)
