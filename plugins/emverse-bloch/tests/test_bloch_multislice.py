"""Thin crystal (≈10 nm): Bloch waves against abTEM multislice, and convergence.

MgB2 [010], 200 kV, plane wave, no thermal damping (a static multislice has
none), Lobato potentials. abTEM: orthogonal cell 2a+b × −c × b (b along the
beam), 32 cells thick, 4 slices per b, finite projection, sampling 0.05 Å
(antialiased to 2/3 Nyquist: 6.7 Å⁻¹). Bloch: zero-order-Laue-zone beams
(sg_max = 0.2 Å⁻¹), g_max = 1.5, 2.0, 3.0 Å⁻¹ (67, 117, 269 beams), K = 1/λ.

Measured here: I000 = 0.334, 0.312, 0.299 (Bloch) vs 0.305 (abTEM, 4 slices/b;
0.304 with 2 slices and infinite projection; the converged value quoted in
PEERS.md is 0.296). The agreement improves as the beam count grows; the few-per-
cent remainder is on the multislice side (its projection/cutoff model), which
is why the tolerance is 5 % and not tighter.
"""

import warnings

import numpy as np
import pytest
from emverse_bloch.geometry import zone_axis_orientation
from emverse_bloch.simulate import zone_axis_intensities
from emverse_bloch.structure_factors import StructureParameters

abtem = pytest.importorskip("abtem")


def _abtem_spots(crystal, n_cells, slices_per_cell, sampling):
    from ase import Atoms
    from ase.build import make_supercell

    ortho = make_supercell(crystal.to_ase(), [[2, 1, 0], [0, 0, -1], [0, 1, 0]])
    lengths = ortho.cell.lengths()
    ortho = Atoms(ortho.get_chemical_symbols(), scaled_positions=ortho.get_scaled_positions(),
                  cell=np.diag(lengths), pbc=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        potential = abtem.Potential(ortho * (1, 1, n_cells), sampling=sampling,
                                    slice_thickness=lengths[2] / slices_per_cell,
                                    parametrization="lobato", projection="finite")
        exit_wave = abtem.PlaneWave(energy=200e3).multislice(potential).compute(progress_bar=False)
        patterns = exit_wave.diffraction_patterns(max_angle=None, block_direct=False)
        array = np.asarray(patterns.compute(progress_bar=False).array)
    return array, lengths


def test_thin_crystal_agrees_with_abtem_multislice_and_converges(mgb2_crystal):
    c = mgb2_crystal
    n_cells = 32
    spots, lengths = _abtem_spots(c, n_cells, 4, 0.05)
    thickness = n_cells * lengths[2]
    nx, ny = spots.shape
    orientation = zone_axis_orientation(c, (0, 1, 0))
    static = StructureParameters.from_crystal(c)
    static.u_cif = static.u_cif * 0.0
    errors = []
    for g_max in (1.5, 2.0, 3.0):
        beams, intensity = zone_axis_intensities(c, (0, 1, 0), [thickness], g_max=g_max, sg_max=0.2,
                                                 structure=static, mip_corrected=False)
        g_lab = c.g_vectors(beams) @ orientation.T
        ix = np.rint(g_lab[:, 0] * lengths[0]).astype(int) + nx // 2
        iy = np.rint(g_lab[:, 1] * lengths[1]).astype(int) + ny // 2
        ms = spots[ix, iy]
        bloch = intensity[0].numpy()
        strong = ms > 0.01
        assert strong.sum() >= 5
        errors.append(np.abs(bloch[strong] - ms[strong]) / ms[strong])
    final = errors[-1]
    assert final.max() < 0.05, f"269 beams: max relative difference {final.max():.3f}"
    # the difference shrinks as the Bloch side converges (more beams)
    rms = [float(np.sqrt(np.mean(e**2))) for e in errors]
    assert rms[0] > rms[1] > rms[2], rms


@pytest.mark.slow
def test_cbed_disc_intensities_agree_with_abtem_multislice(tmp_path):
    """benchmarks/bloch_cbed_vs_abtem.py: MgB2 [010] CBED, 9.9 nm, α = 3 mrad, 117 beams vs
    abTEM probe multislice (2 slices/b): every disc's intensity fraction within 5 %
    (measured: 2.1-4.3 %). Takes ~5 min on a loaded CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bloch_cbed_vs_abtem.py"
    out = subprocess.run(
        [sys.executable, str(script), "--sub", "2", "--g-max", "2.0", "--sg-max", "0.2",
         "--out", str(tmp_path / "cbed.png")],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.strip().startswith("(")]
    assert len(rows) >= 5
    for line in rows:
        rel = float(line.split()[-1].rstrip("%")) / 100
        assert abs(rel) < 0.05, line
    assert (tmp_path / "cbed.png").exists()
