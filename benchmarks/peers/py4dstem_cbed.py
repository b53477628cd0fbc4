"""py4DSTEM's Bloch-wave CBED of MgB2 [010], run in py4DSTEM's own venv (numpy 1.26).

Driven by ``benchmarks/bloch_cbed_vs_py4dstem.py``: reads one JSON request on stdin
(beams hkl, thickness Å, alpha mrad, pixel size Å⁻¹, repeats), times
``Crystal.generate_CBED`` (one Bloch solve per incident direction inside the
aperture, each placed in every disc) and writes one JSON line with the wall times
(s), the number of directions and beams, and the beam set py4DSTEM used.
"""

import json
import os
import sys
import time

for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[name] = "1"  # before numpy is imported

import numpy as np  # noqa: E402
from emdfile import PointList  # noqa: E402
from py4DSTEM.process.diffraction import Crystal  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402


def main():
    request = json.loads(sys.stdin.read())
    threadpool_limits(1)
    a, c = 3.086, 3.524
    positions = np.array([[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])
    crystal = Crystal(positions, [12, 5, 5], [a, a, c, 90, 90, 120])
    g_max = request["g_max"]
    crystal.calculate_structure_factors(2 * g_max)
    sigma = {12: request["sigma"], 5: request["sigma"]}
    crystal.calculate_dynamical_structure_factors(request["voltage_ev"], "Lobato", k_max=2 * g_max,
                                                  thermal_sigma=sigma)
    superset = crystal.generate_diffraction_pattern(zone_axis_lattice=[0, 1, 0], sigma_excitation_error=0.1,
                                                    tol_excitation_error_mult=3, tol_intensity=0.0, k_max=g_max)
    wanted = {tuple(h) for h in request["hkl"]}
    columns = zip(superset.data["h"], superset.data["k"], superset.data["l"], strict=True)
    have = [tuple(int(v) for v in hkl) for hkl in columns]
    mask = np.array([h in wanted for h in have])
    beams = PointList(data=superset.data[mask])
    times = []
    for _ in range(request["repeats"]):
        start = time.perf_counter()
        pattern = crystal.generate_CBED(beams, request["thickness"], request["alpha_mrad"], request["pixel_size"],
                                        zone_axis_lattice=[0, 1, 0], progress_bar=False, dtype=np.float64)
        times.append(time.perf_counter() - start)
    alpha_pix = np.round(request["alpha_mrad"] * 1e-3 / crystal.wavelength / request["pixel_size"])
    t = np.arange(-alpha_pix, alpha_pix + 1)
    directions = int((np.hypot(*np.meshgrid(t, t)) < alpha_pix).sum())
    print(json.dumps({"times": times, "directions": directions, "beams": int(mask.sum()),
                      "missing": sorted(map(list, wanted - set(have))), "shape": list(pattern.shape)}))


if __name__ == "__main__":
    main()
