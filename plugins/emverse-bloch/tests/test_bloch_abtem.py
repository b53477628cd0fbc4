"""Agreement with abTEM's own Bloch-wave solver (abtem.BlochWaves), run in the test.

Same beams (|g| ≤ g_max, |S_g| ≤ sg_max), same Lobato parametrisation, same
Debye–Waller factor (thermal_sigma = √U_iso), hard cutoff of the couplings at
2 g_max, vacuum K = 1/λ (``mip_corrected=False``, as abTEM).
"""

import warnings

import numpy as np
import pytest
from emverse_bloch.geometry import zone_axis_orientation
from emverse_bloch.simulate import zone_axis_intensities

abtem_bloch = pytest.importorskip("abtem.bloch")


def _abtem_intensities(crystal, zone_axis, g_max, sg_max, thicknesses, sigma):
    orientation = zone_axis_orientation(crystal, zone_axis)
    sf = abtem_bloch.StructureFactor(crystal.to_ase(), g_max=2 * g_max, parametrization="lobato",
                                     thermal_sigma=sigma, cutoff="hard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bw = abtem_bloch.BlochWaves(sf, energy=200e3, sg_max=sg_max, g_max=g_max,
                                    orientation_matrix=orientation)
        patterns = bw.calculate_diffraction_patterns(thicknesses, lazy=False)
    return patterns.miller_indices, np.asarray(patterns.array)


@pytest.mark.parametrize(
    "crystal_name, zone_axis, g_max, u_iso",
    [("mgb2_crystal", (0, 1, 0), 1.5, 0.005), ("silicon_crystal", (1, 1, 0), 1.5, 0.0045)],
)
def test_beam_intensities_match_abtem_blochwaves(crystal_name, zone_axis, g_max, u_iso, request):
    crystal = request.getfixturevalue(crystal_name)
    thicknesses = [50.0, 200.0, 1000.0, 2800.0]
    sigma = {e: np.sqrt(u_iso) for e in crystal.elements}
    hkl_abtem, i_abtem = _abtem_intensities(crystal, zone_axis, g_max, 0.05, thicknesses, sigma)
    beams, i_ours = zone_axis_intensities(crystal, zone_axis, thicknesses, g_max=g_max,
                                          sg_max=0.05, mip_corrected=False)
    assert sorted(map(tuple, beams)) == sorted(map(tuple, hkl_abtem))  # same beam set
    order = {tuple(h): i for i, h in enumerate(beams)}
    i_ours = i_ours[:, [order[tuple(h)] for h in hkl_abtem]].numpy()
    strong = i_abtem > 1e-3
    rel = np.abs(i_ours - i_abtem)[strong] / i_abtem[strong]
    assert rel.max() < 1e-3, f"max relative difference {rel.max():.2e}"
    assert np.abs(i_ours - i_abtem).max() < 1e-5
