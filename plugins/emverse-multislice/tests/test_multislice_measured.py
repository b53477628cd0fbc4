"""Measured 4D-STEM in: readers → model geometry → corrected reconstruction.

The "measured" file is simulated (no experimental 4D-STEM dataset can be had here) with what
real data have: a distorted, jittery scan, a finite source, detector blur and Poisson noise,
written as a Berkeley EMD through rosettasciio and read back through ``emverse.readers``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.readers import Calibration, read
from emverse_multislice.measured import PatternStack, effective_affine, model_geometry, write_4dstem
from emverse_multislice.probe import orthogonal_modes, probe_fourier, probe_mode_set, source_offsets
from emverse_multislice.ptychography import MultislicePtychography
from emverse_multislice.refine import AdamReconstruction

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "recipes" / "multislice-measured.toml"
DATA = ROOT / "recipes" / "data"
NO_CORRECTIONS = [
    "forward_model.probe_modes=1", "forward_model.learn_probe=false", "forward_model.learn_positions=false",
    "forward_model.learn_affine=false", "refiner.refine_probe=false", "refiner.refine_positions=false",
    "refiner.refine_affine=false",
]


def _small(**kwargs):
    base = dict(voltage_kv=300.0, semiangle_mrad=25.0, defocus_angstrom=40.0, sampling_angstrom=0.25,
                slice_thickness_angstrom=2.0, object_shape=(1, 40, 40), probe_gpts=(24, 24), scan_shape=(3, 3),
                scan_step_angstrom=0.5)
    base.update(kwargs)
    return MultislicePtychography(**base)


# ---------------------------------------------------------------- physics of the new model parts
def test_mixed_state_probe_modes_are_orthonormal_and_sum_incoherently():
    """The initial modes are orthogonal with 90 % of the power in the first; the pattern of a
    mixed-state probe equals the sum of the patterns of one-mode models built on each mode; the
    SVD of the modes keeps the density matrix Σ ψψᴴ."""
    probe = probe_fourier((24, 24), 0.25, 300.0, 25.0, defocus_angstrom=40.0)
    modes = probe_mode_set(probe, 4, 0.25)
    gram = torch.einsum("mhw,nhw->mn", modes.conj(), modes)
    power = gram.diagonal().real
    assert torch.allclose(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), atol=1e-12)
    assert float(power.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(power[0]) == pytest.approx(0.9, abs=1e-12)

    mixed = _small(probe_modes=4)
    x = mixed.example_input(1, torch.Generator().manual_seed(0))
    total = sum(_small(probe=mode)(x) for mode in mixed.probe_modes_fourier)
    assert torch.allclose(mixed(x), total, rtol=1e-12, atol=1e-15)

    mixing = torch.randn(4, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    mixed_modes = torch.einsum("mn,nhw->mhw", mixing, modes)
    ortho, fractions = orthogonal_modes(mixed_modes)
    flat, flat_o = mixed_modes.reshape(4, -1), ortho.reshape(4, -1)
    assert torch.allclose(flat.T @ flat.conj(), flat_o.T @ flat_o.conj(), atol=1e-12)
    assert float(fractions.sum()) == pytest.approx(1.0) and bool((fractions[:-1] >= fractions[1:]).all())


def test_a_finite_source_leaves_a_vacuum_pattern_unchanged_and_blurs_an_object():
    """Analytic limit: in vacuum every probe shift is a phase ramp in the far field, so the
    source average changes nothing; with an object it does. The quadrature has the source's
    variance σ² per axis."""
    offsets, weights = source_offsets(0.4, 3)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float((weights * offsets[:, 0] ** 2).sum()) == pytest.approx(0.16, rel=1e-12)
    vacuum = torch.zeros(1, 1, 40, 40, dtype=torch.float64)
    coherent, partial = _small(), _small(source_size_angstrom=0.4)
    assert torch.allclose(partial(vacuum), coherent(vacuum), atol=1e-14)
    x = coherent.example_input(1, torch.Generator().manual_seed(2))
    assert float((partial(x) - coherent(x)).abs().max()) > 1e-4


def test_detector_blur_is_a_gaussian_point_spread():
    """Against scipy's Gaussian filter (periodic edges) of the unblurred patterns: the transfer
    function is the continuous Gaussian's, the filter a sampled kernel, so they agree to the
    sampling error of a σ = 1.2 px kernel; the counts are conserved exactly."""
    from scipy.ndimage import gaussian_filter

    sharp, blurred = _small(), _small(detector_blur_px=1.2)
    x = sharp.example_input(1, torch.Generator().manual_seed(3))
    a, b = sharp(x)[0].numpy(), blurred(x)[0].numpy()
    reference = np.stack([gaussian_filter(p, 1.2, mode="wrap", truncate=8.0) for p in a])
    assert np.abs(b - reference).max() < 2e-3 * a.max()
    assert np.abs(b - a).max() > 5e-2 * a.max()  # the blur is not negligible
    assert np.allclose(b.sum(axis=(-2, -1)), a.sum(axis=(-2, -1)), rtol=1e-12)


def test_scan_affine_moves_positions_about_the_scan_centre():
    model = _small(scan_affine=((1.1, 0.0), (0.0, 0.9)))
    nominal = model.nominal_positions
    centre = nominal.mean(dim=0)
    expected = centre + (nominal - centre) * torch.tensor([1.1, 0.9], dtype=torch.float64)
    assert torch.allclose(model.positions_angstrom, expected, atol=1e-12)
    assert torch.allclose(model.positions_angstrom.mean(dim=0), centre, atol=1e-12)


# ---------------------------------------------------------------- the measured file
def test_committed_dataset_is_what_the_script_writes(tmp_path):
    """recipes/data holds the output of make_multislice_measured.py (same seed, same counts)."""
    sys.path.insert(0, str(DATA))
    try:
        import make_multislice_measured as maker
    finally:
        sys.path.remove(str(DATA))
    maker.make(tmp_path)
    fresh = read(tmp_path / "srtio3-4dstem.emd", ndim=4)
    committed = read(DATA / "srtio3-4dstem.emd", ndim=4)
    assert fresh.data.shape == (12, 12, 48, 48)
    # Poisson draws from the same generator: equal counts, except where a last-bit difference in
    # a rate (another CPU's FFT) flips a draw
    assert np.mean(fresh.data != committed.data) < 1e-3
    assert abs(float(fresh.data.sum()) / float(committed.data.sum()) - 1) < 1e-4
    assert committed.calibration.reciprocal_pixel_size == pytest.approx(1 / 12)
    assert committed.calibration.scan_step_angstrom == pytest.approx(0.6)
    assert np.allclose(np.load(tmp_path / "srtio3-4dstem-truth.npy"), np.load(DATA / "srtio3-4dstem-truth.npy"))


def _run(tmp_path, name, overrides=()):
    from emverse.run import run_recipe

    run_dir = Path(run_recipe(RECIPE, tmp_path / name, list(overrides)))
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_corrections_recover_the_scan_affine_and_the_phase(tmp_path):
    """The shipped recipe on the simulated measured file, with and without probe (3 modes),
    position and affine correction, same data and epochs (200).

    Measured (2 cores): band-limited SSIM in the scanned area 0.497 with corrections, 0.371
    without; recovered affine within 0.005 of the truth's least-squares affine."""
    from emverse.checkpoint import load_checkpoint

    truth = json.loads((DATA / "srtio3-4dstem-truth.json").read_text())
    corrected_dir, corrected = _run(tmp_path, "corrected")
    _, plain = _run(tmp_path, "plain", NO_CORRECTIONS)
    gain = corrected["scanned_bandlimited_depth_sum_ssim"] - plain["scanned_bandlimited_depth_sum_ssim"]
    assert gain >= 0.1, (corrected, plain)
    assert corrected["scanned_depth_sum_ssim"] > plain["scanned_depth_sum_ssim"]
    recovered = np.array([[corrected[f"scan_affine_{i}{j}"] for j in range(2)] for i in range(2)])
    error = np.abs(recovered - np.array(truth["effective_affine"])).max()
    assert error <= 0.01, (recovered, truth["effective_affine"])
    # the per-position corrections too: the rms position error falls to a fraction of the nominal grid's
    saved = load_checkpoint(corrected_dir / "reconstruction.safetensors").tensors
    true_positions = torch.tensor(truth["positions_angstrom"], dtype=torch.float64)
    after = float((saved["positions_angstrom"].double() - true_positions).norm(dim=1).pow(2).mean().sqrt())
    nominal = _small(object_shape=(1, 77, 77), probe_gpts=(48, 48), scan_shape=(12, 12), scan_step_angstrom=0.6)
    before = float((nominal.positions_angstrom - true_positions).norm(dim=1).pow(2).mean().sqrt())
    assert after < 0.3 * before, (before, after)
    assert (corrected_dir / "figures" / "probe.png").is_file()


def test_streamed_zarr_gives_the_in_memory_result(tmp_path):
    """Patterns read a mini-batch at a time from a Zarr store (lazy, dask) reconstruct exactly
    as the same patterns held in memory."""
    import dask.array

    measured = read(DATA / "srtio3-4dstem.emd", ndim=4)
    data = measured.data[:4, :4]
    cal = Calibration(reciprocal_pixel_size=1 / 12, scan_step_angstrom=0.6, beam_energy_kv=300.0,
                      convergence_semiangle_mrad=25.0)
    write_4dstem(tmp_path / "part.zarr", np.asarray(data), cal)
    lazy = read(tmp_path / "part.zarr", ndim=4, lazy=True)
    assert isinstance(lazy.data, dask.array.Array)
    assert lazy.calibration.reciprocal_pixel_size == pytest.approx(1 / 12)
    geometry = model_geometry(lazy.data.shape, lazy.calibration, probe_gpts=(32, 32), detector_binning=1.25,
                              depth=1, padding_px=2, scan_affine=((1.0, 0.0), (0.0, 1.0)))
    pixel = geometry.pop("model_pixel")
    stream = PatternStack(lazy.data, 1 / 12, pixel, (32, 32), dtype=torch.float64)
    memory = stream.to_tensor()
    assert memory.shape == (1, 16, 32, 32)
    kept = PatternStack(lazy.data, 1 / 12, pixel, (32, 32), dtype=torch.float64, keep=True)
    assert torch.equal(kept.to_tensor(), memory)  # held after the scale pass, not read again
    # resampling keeps the counts of the area it covers
    assert float(memory.sum(dim=(-2, -1)).mean()) == pytest.approx(1.0, rel=1e-9)

    def reconstruct(observation):
        model = MultislicePtychography(**geometry, defocus_angstrom=120.0, slice_thickness_angstrom=1.9525)
        return AdamReconstruction(epochs=3, batch_size=5).refine(
            model, observation, generator=torch.Generator().manual_seed(0)).parameters["object"]

    assert torch.allclose(reconstruct(stream), reconstruct(memory), atol=1e-12)


# ---------------------------------------------------------------- bad input
def _recipe_with(tmp_path, **options):
    text = RECIPE.read_text().replace('observation = "data/', f'observation = "{DATA}/').replace(
        'truth = "data/', f'truth = "{DATA}/')
    for key, value in options.items():
        text = text.replace("[options]\n", f"[options]\n{key} = {value}\n", 1)
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def _refused(tmp_path, path, match, overrides=()):
    from emverse.run import run_recipe

    with pytest.raises(EmverseError, match=match):
        run_recipe(path, tmp_path / "run", list(overrides))
    assert not (tmp_path / "run").exists()


def test_a_3d_file_is_refused_at_validation(tmp_path):
    from emverse.recipe import load_recipe

    np.save(tmp_path / "stack.npy", np.ones((5, 8, 8)))
    path = _recipe_with(tmp_path)
    with pytest.raises(EmverseError, match=r"stack\.npy.*3D.*4D"):
        load_recipe(path, [f"options.observation={tmp_path / 'stack.npy'}"])


@pytest.mark.parametrize("value", ["0.0", "nan"])
def test_a_zero_or_nan_scan_step_is_refused_at_validation(tmp_path, value):
    from emverse.recipe import load_recipe

    with pytest.raises(EmverseError, match="scan_step_angstrom"):
        load_recipe(_recipe_with(tmp_path, scan_step_angstrom=value))


def test_data_without_a_detector_calibration_is_refused_before_the_run(tmp_path):
    np.save(tmp_path / "raw.npy", np.ones((3, 3, 48, 48), dtype=np.uint16))
    _refused(tmp_path, _recipe_with(tmp_path), r"raw\.npy.*reciprocal_pixel_size",
             [f"options.observation={tmp_path / 'raw.npy'}", "options.truth="])


def test_a_window_larger_than_the_patterns_is_refused_before_the_run(tmp_path):
    _refused(tmp_path, _recipe_with(tmp_path), r"probe_gpts = 64.*48 × 48", ["forward_model.probe_gpts=[64, 64]"])


def test_a_truth_on_another_grid_is_refused_before_the_run(tmp_path):
    np.save(tmp_path / "truth.npy", np.zeros((1, 10, 10), dtype=np.float32))
    _refused(tmp_path, _recipe_with(tmp_path), r"options.truth.*\(1, 10, 10\)",
             [f"options.truth={tmp_path / 'truth.npy'}"])


def test_effective_affine_is_the_least_squares_fit():
    nominal = _small().nominal_positions
    a = torch.tensor([[1.02, 0.03], [-0.01, 0.97]], dtype=torch.float64)
    moved = nominal.mean(0) + 0.3 + (nominal - nominal.mean(0)) @ a.T
    assert torch.allclose(effective_affine(nominal, moved), a, atol=1e-12)


def test_refine_amplitude_recovers_an_absorbing_object():
    """Data from a complex transmission (phase and an absorbing patch, amplitude 0.7): with
    refine_amplitude the reconstruction fits the data far better than phase only, returns an
    amplitude ≤ 1, the patch at its amplitude and the rest transparent."""
    model = _small(object_shape=(1, 32, 32), probe_gpts=None, scan_shape=(4, 4), scan_step_angstrom=1.5)
    phase = 0.3 * torch.rand((1, 1, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    amplitude = torch.ones_like(phase)
    amplitude[..., 8:16, 18:26] = 0.7
    y = model(torch.polar(amplitude, phase))
    runs = {}
    for flag in (False, True):
        runs[flag] = AdamReconstruction(epochs=80, learning_rate=0.02, refine_amplitude=flag,
                                        object_bandlimit=False).refine(model, y, generator=torch.Generator().manual_seed(0))
    assert runs[True].history["loss"][-1] < 0.1 * runs[False].history["loss"][-1]
    recovered = runs[True].parameters["amplitude"][0, 0]
    assert float(recovered.max()) <= 1.0
    assert float(recovered[8:16, 18:26].mean()) == pytest.approx(0.7, abs=0.06)  # measured 0.730
    assert float(recovered.mean()) > 0.95  # the rest stays transparent (measured 0.977)
    assert "amplitude" not in runs[False].parameters


def test_a_signal_or_datacube_from_python_gives_the_file_result(tmp_path):
    """A hyperspy-like signal and a py4DSTEM-like DataCube (stand-ins: neither library is
    installed here) holding the file's data and calibration, passed to emverse.run where the
    recipe takes a path, give the same reconstruction as the file; the signal is written once
    as a content-addressed Zarr store beside the run and the recipe names it."""
    from types import SimpleNamespace

    import emverse

    measured = read(DATA / "srtio3-4dstem.emd", ndim=4)
    quick = {"refiner.epochs": 4, "options.truth": str(DATA / "srtio3-4dstem-truth.npy")}
    from_file = emverse.run(RECIPE, out=tmp_path / "file", **quick,
                            **{"options.observation": str(DATA / "srtio3-4dstem.emd")})
    units = [(0.6, "Å", True), (0.6, "Å", True), (1 / 12, "1/Å", False), (1 / 12, "1/Å", False)]
    axes = [SimpleNamespace(index_in_array=i, scale=s, units=u, navigate=n) for i, (s, u, n) in enumerate(units)]
    signal = SimpleNamespace(data=measured.data, axes_manager=SimpleNamespace(_axes=axes), metadata={})
    calibration = SimpleNamespace(get_Q_pixel_size=lambda: 1 / 12, get_Q_pixel_units=lambda: "A^-1",
                                  get_R_pixel_size=lambda: 0.6, get_R_pixel_units=lambda: "A",
                                  get_QR_rotation_degrees=lambda: None)
    cube = SimpleNamespace(data=measured.data, calibration=calibration, name="cube")
    for name, source in (("signal", signal), ("cube", cube)):
        result = emverse.run(RECIPE, out=tmp_path / name, **quick, **{"options.observation": source})
        # equal up to float rounding (reductions may round differently with memory alignment)
        assert result.metrics == pytest.approx(from_file.metrics, rel=1e-9, abs=1e-12), name
        recorded = (tmp_path / name / "recipe.toml").read_text()
        assert str(tmp_path / "inputs") in recorded and ".zarr" in recorded
    assert len(list((tmp_path / "inputs").glob("*.zarr"))) == 1  # same content, one store


def test_object_lowpass_is_a_gaussian_blur_of_the_stated_width():
    """σ_k = 0.5 Å⁻¹ in Fourier space is a real-space Gaussian of σ = 1/(2π·0.5) Å: against
    scipy's periodic Gaussian filter of the same width in pixels (0.25 Å pixels)."""
    from scipy.ndimage import gaussian_filter

    model = _small(object_shape=(1, 64, 64), probe_gpts=None, antialias=False)
    x = torch.randn((1, 1, 64, 64), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    blurred = AdamReconstruction(object_lowpass=0.5)._volume(model, x)
    sigma_px = 1 / (2 * np.pi * 0.5) / 0.25
    reference = gaussian_filter(x[0, 0].numpy(), sigma_px, mode="wrap", truncate=10.0)
    assert np.abs(blurred[0, 0].numpy() - reference).max() < 1e-3 * np.abs(reference).max()
    assert torch.equal(AdamReconstruction()._volume(model, x), x)
    with pytest.raises(EmverseError, match="object_lowpass"):
        AdamReconstruction(object_lowpass=-1.0)


def test_a_transposed_detector_is_undone_by_detector_transpose(tmp_path):
    """The same counts with the detector axes swapped on disk, read with detector_transpose,
    give the original file's reconstruction exactly; read without it, a different one."""
    from emverse.run import run_recipe

    measured = read(DATA / "srtio3-4dstem.emd", ndim=4)
    cal = Calibration(reciprocal_pixel_size=1 / 12, scan_step_angstrom=0.6)
    write_4dstem(tmp_path / "mirrored.npy", np.ascontiguousarray(measured.data.transpose(0, 1, 3, 2)), cal)
    quick = ["refiner.epochs=2"]
    metrics = {}
    for name, extra in (("file", []), ("mirrored", [f"options.observation={tmp_path / 'mirrored.npy'}",
                                                     "options.detector_transpose=true"]),
                        ("mirrored-as-stored", [f"options.observation={tmp_path / 'mirrored.npy'}"])):
        run_dir = Path(run_recipe(_recipe_with(tmp_path), tmp_path / name, quick + extra))
        metrics[name] = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mirrored"]["final_loss"] == pytest.approx(metrics["file"]["final_loss"], rel=1e-6)
    assert metrics["mirrored-as-stored"]["final_loss"] != pytest.approx(metrics["file"]["final_loss"], rel=1e-3)
