"""Shared small problems for the emverse-multislice tests."""

from __future__ import annotations

import pytest
import torch

SRTIO3_A = 3.905  # Å, cubic perovskite lattice constant


@pytest.fixture(scope="session")
def srtio3_problem():
    """SrTiO3 [001]: 2×2 unit cells laterally (32×32 px of a/16 = 0.244 Å),
    4 slices of a/2 = 1.95 Å; 5×5 scan with a 1.56 Å step over one 2×2 cell
    period; 300 kV, 25 mrad, 30 Å defocus. Truth rendered with abTEM (Lobato)."""
    from emverse_multislice.ptychography import MultislicePtychography
    from emverse_multislice.render import render_phase_volume

    sampling = SRTIO3_A / 16
    dz = SRTIO3_A / 2
    truth = render_phase_volume(
        "builtin:srtio3",
        shape=(4, 32, 32),
        sampling_angstrom=sampling,
        slice_thickness_angstrom=dz,
        voltage_kv=300.0,
        dtype=torch.float32,
    )
    model = MultislicePtychography(
        voltage_kv=300.0,
        semiangle_mrad=25.0,
        defocus_angstrom=30.0,
        sampling_angstrom=sampling,
        slice_thickness_angstrom=dz,
        object_shape=(4, 32, 32),
        scan_shape=(5, 5),
        scan_step_angstrom=2 * SRTIO3_A / 5,
        scan_origin_angstrom=(0.0, 0.0),
    )
    with torch.no_grad():
        y = model(truth[None])
    return model, truth, y
