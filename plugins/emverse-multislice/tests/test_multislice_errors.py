"""Bad input gives errors that name the field, the value and the fix."""

from __future__ import annotations

import attrs
import pytest
import torch
from emverse.errors import EmverseError
from emverse_multislice.params import AdamParams, PtychographyParams
from emverse_multislice.ptychography import MultislicePtychography
from emverse_multislice.refine import AdamReconstruction


def test_object_grid_mismatch_names_both_shapes():
    model = MultislicePtychography(object_shape=(4, 32, 32), scan_shape=(2, 2))
    with pytest.raises(EmverseError, match=r"x has shape \(1, 4, 30, 32\).*object_shape"):
        model(torch.zeros(1, 4, 30, 32))
    with pytest.raises(EmverseError, match="x has shape"):
        model(torch.zeros(4, 32, 32))


def test_probe_window_larger_than_object_is_refused():
    with pytest.raises(EmverseError, match=r"probe_gpts \(40, 40\) does not fit"):
        MultislicePtychography(object_shape=(2, 32, 32), probe_gpts=(40, 40))


def test_probe_array_of_wrong_shape_is_refused():
    with pytest.raises(EmverseError, match=r"probe has shape \(16, 16\).*\(32, 32\)"):
        MultislicePtychography(object_shape=(2, 32, 32), probe=torch.ones(16, 16, dtype=torch.complex128))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(object_shape=(2, 32, 32), scan_shape=(20, 2), scan_step_angstrom=0.5),  # 9.5 Å > 6.4 Å
        dict(object_shape=(2, 32, 32), scan_origin_angstrom=(-1.0, 0.0), scan_shape=(2, 2)),
        dict(object_shape=(2, 48, 48), probe_gpts=(32, 32), scan_shape=(2, 2),
             scan_origin_angstrom=(1.0, 1.0)),  # window would start left of the object
    ],
)
def test_scan_outside_the_object_is_refused(kwargs):
    with pytest.raises(EmverseError, match=r"scan position \d+ at .* lies outside"):
        MultislicePtychography(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("sampling_angstrom", 0.0), ("sampling_angstrom", -0.2), ("slice_thickness_angstrom", 0.0),
     ("dose_e_per_angstrom2", 0.0), ("dose_e_per_angstrom2", -5.0), ("voltage_kv", -1.0),
     ("scan_step_angstrom", 0.0)],
)
def test_non_positive_physical_values_are_refused(field, value):
    with pytest.raises(EmverseError, match=f"{field} must be a positive number, got {value}"):
        MultislicePtychography(**{field: value})
    with pytest.raises(ValueError, match=field):
        PtychographyParams(**{field: value})


def test_params_validate_shapes_and_choices():
    with pytest.raises(ValueError, match="object_shape must be 3 positive integers"):
        PtychographyParams(object_shape=(4, 32))
    with pytest.raises(ValueError, match="propagator must be one of"):
        PtychographyParams(propagator="fresnel")
    params = PtychographyParams(object_shape=[4, 16, 16], scan_shape=[2, 2])
    assert params.object_shape == (4, 16, 16)
    assert attrs.asdict(params)["scan_shape"] == (2, 2)
    with pytest.raises(ValueError, match="loss must be one of"):
        AdamParams(loss="l2")


def test_refiner_refuses_an_observation_of_the_wrong_shape():
    model = MultislicePtychography(object_shape=(2, 32, 32), scan_shape=(2, 2))
    with pytest.raises(EmverseError, match=r"observation has shape \(1, 3, 32, 32\).*\(B, 4, 32, 32\)"):
        AdamReconstruction(epochs=1).refine(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(EmverseError, match="refine_probe = true needs a model built with learn_probe"):
        AdamReconstruction(epochs=1, refine_probe=True).refine(model, torch.zeros(1, 4, 32, 32))


def test_zone_axis_and_structure_errors():
    from emverse_multislice.render import load_structure, render_phase_volume

    with pytest.raises(EmverseError, match="zone_axis .* is not a direction"):
        render_phase_volume("builtin:srtio3", shape=(2, 16, 16), zone_axis=(0, 0, 0))
    with pytest.raises(EmverseError, match="does not exist"):
        load_structure("/nonexistent/file.cif")
    with pytest.raises(EmverseError, match="sampling_angstrom must be > 0"):
        render_phase_volume("builtin:srtio3", shape=(2, 16, 16), sampling_angstrom=0.0)


@pytest.mark.parametrize("name", ["multislice-reconstruct.toml", "multislice-reconstruct-paper.toml"])
def test_shipped_recipes_validate(name):
    from pathlib import Path

    from emverse.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[3] / "recipes" / name)
    assert recipe.task.type == "multislice.reconstruct"
