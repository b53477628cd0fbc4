"""``infer`` on a measured pattern: read through emverse.readers, checked against the forward
model's calibration, resampled when only the pixel size differs, refused otherwise.

The "measurement" is a bloch.cbed pattern simulated at twice the detector sampling (64 px
of half the reciprocal pixel size), written as counts to .npy with a TOML metadata table:
resampled onto the model's 32 px it must match the model's own prediction of the same
parameters, up to the bilinear interpolation of a smooth pattern (checked on disc interiors).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("emverse_bloch")

RECIPE = """
schema_version = 1
name = "measured"
seed = 3
task = "infer"
dtype = "float64"

[options]
n_observations = 1
n_samples = 4
observation = "{observation}"
observation_units = "counts"

[forward_model]
type = "bloch.cbed"
structure = "MgB2"
zone_axis = {zone}
detector_pixels = 32
g_max = 0.8

[likelihood]
type = "core.poisson"
dose = 1000.0

[prior]
type = "core.uniform"
"""


def _write_measurement(folder: Path, *, nan: bool = False, zone=(0, 1, 0)):
    from emverse_bloch.cbed import BlochCBED

    fine = BlochCBED(structure="MgB2", detector_pixels=64, detector_pixel_size_um=27.5, g_max=0.8)
    x = fine.default_parameters()
    with torch.no_grad():
        # 250 electrons per fine pixel at full intensity: 1,000 per model pixel (4 fine pixels)
        counts = (fine(x)[0] * 250.0).numpy()
    if nan:
        counts[5, 7] = np.nan
    np.save(folder / "pattern.npy", counts)
    (folder / "pattern.npy.toml").write_text(
        f"beam_energy_kv = 200.0\nreciprocal_pixel_size = {fine.reciprocal_pixel_size!r}\n"
        f"zone_axis = {list(zone)}\n")
    return x


def _run(tmp_path, *args, zone="[0, 1, 0]"):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(observation="pattern.npy", zone=zone))
    return subprocess.run([sys.executable, "-m", "emverse.cli", *args, str(recipe)], capture_output=True,
                          text=True, cwd=tmp_path)


def test_a_measured_pattern_is_resampled_onto_the_model_detector(tmp_path):
    from emverse_bloch.cbed import BlochCBED
    from safetensors.torch import load_file

    x = _write_measurement(tmp_path)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(observation="pattern.npy", zone="[0, 1, 0]"))
    done = subprocess.run([sys.executable, "-m", "emverse.cli", "run", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    observed = load_file(out / "posterior.safetensors")["observation"][0]
    model = BlochCBED(structure="MgB2", detector_pixels=32, g_max=0.8)
    with torch.no_grad():
        expected = model(x)[0]
    # disc interiors (away from the disc edges, where bilinear resampling mixes in the dark)
    inside = expected > 0
    interior = inside.clone()
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        interior &= torch.roll(inside, shifts=shift, dims=(0, 1))
    rel = ((observed - expected).abs()[interior] / expected[interior]).median()
    assert float(rel) < 0.05
    # counts summed over the model pixel's area (×4), then fractions of the beam (÷ dose)
    assert float(observed.sum() / expected.sum()) == pytest.approx(1.0, rel=0.05)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "posterior_mean_chi2_reduced" in metrics and not any(k.startswith("truth/") for k in metrics)
    # four uniform prior draws do not explain the pattern, and the report says so
    assert metrics["posterior_mean_chi2_reduced"] > 2
    assert "do not trust its width" in json.loads((out / "texts.json").read_text())["posterior predictive check"]


def test_bad_measurements_are_refused_naming_the_file(tmp_path):
    _write_measurement(tmp_path, nan=True)
    done = _run(tmp_path, "recipe", "validate")
    assert done.returncode == 2
    assert "pattern.npy" in done.stderr and "NaN" in done.stderr and "row 5, column 7" in done.stderr


def test_a_zone_axis_other_than_the_measurements_is_refused(tmp_path):
    _write_measurement(tmp_path, zone=(0, 0, 1))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(observation="pattern.npy", zone="[0, 1, 0]"))
    done = subprocess.run([sys.executable, "-m", "emverse.cli", "run", str(recipe), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "zone axis [0, 0, 1]" in done.stderr and "zone_axis" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["no calibration", "too small"])
def test_a_pattern_that_cannot_be_matched_to_the_detector_is_refused(tmp_path, case):
    if case == "no calibration":  # another size and nothing to resample by
        np.save(tmp_path / "pattern.npy", np.ones((40, 40)))
        expected = "set detector_pixels to 40"
    else:  # calibrated, but the model's detector reaches beyond it
        from emverse_bloch.cbed import BlochCBED

        pixel = BlochCBED(structure="MgB2", detector_pixels=32, g_max=0.8).reciprocal_pixel_size
        np.save(tmp_path / "pattern.npy", np.ones((16, 16)))
        (tmp_path / "pattern.npy.toml").write_text(f"reciprocal_pixel_size = {pixel!r}\n")
        expected = "spans 32.0 measured pixels but the pattern has 16"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(observation="pattern.npy", zone="[0, 1, 0]"))
    done = subprocess.run([sys.executable, "-m", "emverse.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "pattern.npy" in done.stderr
    assert not (tmp_path / "run").exists()
