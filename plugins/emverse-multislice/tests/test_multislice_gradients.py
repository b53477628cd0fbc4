"""Gradients against finite differences, and the core ForwardModel conformance kit."""

from __future__ import annotations

import pytest
import torch
from emverse.testing import check_forward_model
from emverse_multislice.ptychography import MultislicePtychography


def _small(**kwargs):
    base = dict(voltage_kv=200.0, semiangle_mrad=20.0, defocus_angstrom=25.0, sampling_angstrom=0.25,
                slice_thickness_angstrom=2.0, object_shape=(3, 24, 24), scan_shape=(2, 3),
                scan_step_angstrom=0.6)
    base.update(kwargs)
    return MultislicePtychography(**base)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"probe_gpts": (16, 16), "scan_shape": (2, 2), "scan_step_angstrom": 0.9},
        {"propagator": "angular_spectrum", "propagate_last_slice": False, "dose_e_per_angstrom2": 1e4},
    ],
    ids=["periodic", "windowed", "angular-poisson"],
)
def test_conformance_kit(kwargs):
    report = check_forward_model(_small(**kwargs), batch=3, dtype=torch.float64)
    assert report.output_shape[0] == 3
    assert report.grad_relative_error < 1e-4


def test_object_gradient_matches_central_differences_voxel_by_voxel():
    model = _small()
    gen = torch.Generator().manual_seed(1)
    x = model.example_input(1, gen)
    y_obs = model(model.example_input(1, gen))

    def loss(v):
        return ((torch.sqrt(model(v) + 1e-12) - torch.sqrt(y_obs + 1e-12)) ** 2).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xg), xg)
    eps = 1e-6
    voxels = [(0, 0, 3, 5), (0, 1, 12, 12), (0, 2, 23, 0), (0, 1, 7, 19)]
    for voxel in voxels:
        plus, minus = x.clone(), x.clone()
        plus[voxel] += eps
        minus[voxel] -= eps
        fd = float((loss(plus) - loss(minus)) / (2 * eps))
        assert float(grad[voxel]) == pytest.approx(fd, rel=1e-5, abs=1e-10), voxel
    assert float(grad.abs().max()) > 1e-4  # the test would catch a zero gradient


@pytest.mark.parametrize("extras", [
    {},
    # mixed-state probe, partial spatial coherence (source points) and detector blur
    {"probe_modes": 3, "source_size_angstrom": 0.3, "detector_blur_px": 0.8},
])
def test_probe_and_position_gradients_match_finite_differences(extras):
    model = _small(learn_probe=True, learn_positions=True, learn_affine=True, **extras)
    gen = torch.Generator().manual_seed(2)
    x = model.example_input(1, gen)
    weights = torch.randn(model(x).shape, generator=gen, dtype=torch.float64)

    def objective():
        return (model(x) * weights).sum()

    params = [model.probe_fourier_ri, model.position_offsets, model.scan_affine]
    grads = torch.autograd.grad(objective(), params)
    for param, grad in zip(params, grads, strict=True):
        direction = torch.randn(param.shape, generator=gen, dtype=torch.float64)
        analytic = float((grad * direction).sum())
        eps = 1e-6
        with torch.no_grad():
            param += eps * direction
            up = float(objective())
            param -= 2 * eps * direction
            down = float(objective())
            param += eps * direction
        fd = (up - down) / (2 * eps)
        assert analytic == pytest.approx(fd, rel=1e-5), param.shape
        assert abs(fd) > 1e-6


def test_float32_agrees_with_float64():
    model = _small()
    x = model.example_input(2, torch.Generator().manual_seed(0))
    y64 = model(x)
    y32 = model(x.float())
    assert y32.dtype == torch.float32
    assert float((y32.double() - y64).norm() / y64.norm()) < 1e-5


def test_scan_index_subsets_match_the_full_stack():
    model = _small()
    x = model.example_input(2, torch.Generator().manual_seed(4))
    full = model(x)
    idx = torch.tensor([4, 0, 2])
    assert torch.allclose(model(x, scan_indices=idx), full[:, idx], atol=1e-14)


def test_chunked_simulation_equals_one_pass():
    model = _small(positions_per_pass=4)
    x = model.example_input(2, torch.Generator().manual_seed(6))
    with torch.no_grad():
        chunked = model(x)
        model.positions_per_pass = None
        whole = model(x)
    assert torch.allclose(chunked, whole, atol=1e-14)


def test_complex_transmission_input_equals_phase_input():
    model = _small()
    x = model.example_input(1, torch.Generator().manual_seed(5))
    assert torch.allclose(model(torch.polar(torch.ones_like(x), x)), model(x), atol=1e-14)
