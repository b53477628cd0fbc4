"""Agreement with abTEM 1.0 (the peer code) for the same potential, probe and scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

abtem = pytest.importorskip("abtem")

from emverse_multislice.probe import shifted_probes  # noqa: E402
from emverse_multislice.ptychography import MultislicePtychography  # noqa: E402
from emverse_multislice.render import (  # noqa: E402
    load_structure,
    orient_structure,
    render_phase_volume,
)

A = 3.905  # SrTiO3 lattice constant, Å


def _relative_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def srtio3_setup():
    sampling, dz, shape = A / 16, A / 4, (6, 32, 32)
    atoms = orient_structure(
        load_structure("builtin:srtio3"), (shape[1] * sampling, shape[2] * sampling, shape[0] * dz)
    )
    positions = np.array([[0.0, 0.0], [1.13, 2.71], [3.3, 4.05], [6.9, 0.37], [7.8, 7.8]])
    return atoms, sampling, dz, shape, positions


@pytest.mark.parametrize("soft", [True, False])
def test_probe_matches_abtem(srtio3_setup, soft):
    atoms, sampling, dz, shape, positions = srtio3_setup
    with abtem.config.set({"precision": "float64"}):
        aperture = abtem.transfer.Aperture(semiangle_cutoff=21.4, soft=soft)
        probe = abtem.Probe(energy=300e3, aperture=aperture, defocus=-40.0, Cs=5e4,
                            gpts=shape[1:], sampling=sampling)
        reference = np.asarray(probe.build(scan=abtem.CustomScan(positions), lazy=False).array)
    model = MultislicePtychography(
        voltage_kv=300.0, semiangle_mrad=21.4, defocus_angstrom=-40.0, cs_angstrom=5e4,
        soft_aperture=soft, sampling_angstrom=sampling, slice_thickness_angstrom=dz,
        object_shape=shape, positions_angstrom=torch.tensor(positions),
    )
    mine = shifted_probes(model.probe_fourier, model.positions_angstrom, sampling).numpy()
    # abTEM normalises Σ_k |FFT ψ|² = 1 with the unnormalised FFT, so its real-space
    # wave is ours / √N
    reference = reference * np.sqrt(np.prod(shape[1:]))
    assert _relative_l2(mine, reference) < 1e-6


@pytest.mark.parametrize("defocus, cs", [(30.0, 0.0), (-60.0, 1e5)])
def test_multislice_diffraction_matches_abtem(srtio3_setup, defocus, cs):
    """Same abTEM potential slices (σ·V as our phase), probe and scan positions:
    4D-STEM intensities agree to rel. L2 < 1e-6 in float64 (issue asks ≤ 1e-3);
    measured ≈ 4e-8, the residual being abTEM's float64 arithmetic order / constants."""
    atoms, sampling, dz, shape, positions = srtio3_setup
    with abtem.config.set({"precision": "float64"}):
        potential = abtem.Potential(atoms, gpts=shape[1:], slice_thickness=(dz,) * shape[0])
        potential_array = np.asarray(potential.build(lazy=False).compute().array)
        probe = abtem.Probe(energy=300e3, semiangle_cutoff=21.4, defocus=defocus, Cs=cs)
        probe.grid.match(potential)
        exit_waves = probe.multislice(potential=potential, scan=abtem.CustomScan(positions), lazy=False)
        reference = np.asarray(
            exit_waves.diffraction_patterns(max_angle=None, fftshift=True).compute().array
        )
    phase = torch.tensor(abtem.core.energy.energy2sigma(300e3) * potential_array)[None]
    model = MultislicePtychography(
        voltage_kv=300.0, semiangle_mrad=21.4, defocus_angstrom=defocus, cs_angstrom=cs,
        sampling_angstrom=sampling, slice_thickness_angstrom=dz, object_shape=shape,
        positions_angstrom=torch.tensor(positions),
    )
    mine = model(phase)[0].numpy()
    assert mine.shape == reference.shape
    # the object scatters: patterns differ a lot from the bare probe's
    bare = model(torch.zeros_like(phase))[0].numpy()
    assert _relative_l2(bare, reference) > 0.1
    assert _relative_l2(mine, reference) < 1e-6


def test_rendered_volume_equals_sigma_times_abtem_potential(srtio3_setup):
    atoms, sampling, dz, shape, _ = srtio3_setup
    volume = render_phase_volume(
        "builtin:srtio3", shape=shape, sampling_angstrom=sampling, slice_thickness_angstrom=dz,
        voltage_kv=200.0, dtype=torch.float64,
    )
    potential = abtem.Potential(atoms, gpts=shape[1:], slice_thickness=(dz,) * shape[0])
    expected = abtem.core.energy.energy2sigma(200e3) * np.asarray(potential.build(lazy=False).compute().array)
    assert volume.shape == shape
    assert _relative_l2(volume.numpy(), expected) < 1e-5
    # projected potential of the Sr–O columns: phases of order 0.1–1 rad per 1 Å slice
    assert 0.05 < float(volume.max()) < 3.0


def test_cubic_crystal_renders_the_same_along_equivalent_axes():
    """SrTiO3 is cubic: [100] and [001] give the same volume (a 90° rotation maps the crystal on itself)."""
    kwargs = dict(shape=(4, 32, 32), sampling_angstrom=A / 16, slice_thickness_angstrom=A / 2,
                  dtype=torch.float64)
    along_z = render_phase_volume("builtin:srtio3", zone_axis=(0, 0, 1), **kwargs)
    along_x = render_phase_volume("builtin:srtio3", zone_axis=(1, 0, 0), **kwargs)
    along_110 = render_phase_volume("builtin:srtio3", zone_axis=(1, 1, 0), **kwargs)
    assert _relative_l2(along_x.numpy(), along_z.numpy()) < 1e-6
    assert _relative_l2(along_110.numpy(), along_z.numpy()) > 0.1
    # any axis: the zone axis ends up along the beam, so atoms stack in columns of equal
    # (x, y); the density stays 5 atoms / a³ (up to the boundary planes of the cut)
    box = (20.0, 20.0, 30.0)
    for axis in [(0, 0, 1), (1, 1, 0), (1, 1, 1), (2, 1, 0)]:
        atoms = orient_structure(load_structure("builtin:srtio3"), box, zone_axis=axis)
        expected = 5 * np.prod(box) / A**3
        # a box that is not a multiple of the lattice repeat holds up to one extra atomic
        # plane per direction: ≤ a(1/Lx + 1/Ly + 1/Lz) ≈ 0.5 in the worst case, 0.16 for [001]
        assert abs(len(atoms) - expected) < 0.2 * expected, axis
        # no atom duplicated by the tiling: the shortest distance is Ti–O = a/2
        from scipy.spatial.distance import pdist

        assert pdist(atoms.positions).min() > 0.49 * A, axis
        columns = np.unique(np.round(atoms.positions[:, :2], 3), axis=0)
        period = A * np.linalg.norm(axis)  # repeat distance along [uvw] of a cubic cell (≤ this)
        assert len(atoms) / len(columns) > 0.8 * box[2] / period, axis
    tilted = orient_structure(load_structure("builtin:srtio3"), box, zone_axis=(0, 0, 1),
                              in_plane_rotation_deg=0.0)
    wrong = orient_structure(load_structure("builtin:srtio3"), box, zone_axis=(0, 0, 1))
    wrong.positions[:] = wrong.positions @ np.array([[1, 0, 0], [0, 0.995, 0.0998], [0, -0.0998, 0.995]])
    assert len(np.unique(np.round(wrong.positions[:, :2], 3), axis=0)) > 2 * len(
        np.unique(np.round(tilted.positions[:, :2], 3), axis=0)
    )


def test_windowed_probe_equals_periodic_model_on_the_cropped_object():
    """With a probe window smaller than the object, each pattern equals the whole-field
    model applied to the object patch under the window (no antialias on the object)."""
    torch.manual_seed(0)
    shape, window, s = (3, 40, 48), (24, 24), 0.25
    phase = 0.4 * torch.rand((1, *shape), dtype=torch.float64)
    positions = torch.tensor([[4.1, 4.6], [5.0, 7.13], [6.9, 8.8]], dtype=torch.float64)
    common = dict(voltage_kv=200.0, semiangle_mrad=18.0, defocus_angstrom=20.0,
                  sampling_angstrom=s, slice_thickness_angstrom=2.0, antialias=False)
    windowed = MultislicePtychography(object_shape=shape, probe_gpts=window,
                                      positions_angstrom=positions, **common)
    y = windowed(phase)[0]
    corner = windowed._window_corner(positions)
    for i in range(len(positions)):
        r, c = (int(v) for v in corner[i])
        patch = phase[:, :, r : r + window[0], c : c + window[1]]
        local = positions[i : i + 1] - corner[i : i + 1].double() * s
        single = MultislicePtychography(object_shape=(3, *window), positions_angstrom=local, **common)
        assert torch.allclose(y[i], single(patch)[0, 0], atol=1e-13, rtol=0)


@pytest.mark.slow
def test_paper_scale_float32_stack_matches_abtem():
    """MEP-Diffusion optics on a (16, 100, 100) volume, 32 of the 26 × 26 positions, float32."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "multislice_forward.py"
    spec = importlib.util.spec_from_file_location("multislice_forward_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    numbers = bench.main(["--positions", "32", "--batch", "32", "--repeats", "1"])
    assert numbers["relative_l2"] < 1e-4  # float32 round-off over 16 slices (measured 2.9e-6)
