"""A full MgB2 [010] CBED pattern by Bloch waves: emverse-bloch vs py4DSTEM, same beams and directions.

    python benchmarks/bloch_cbed_vs_py4dstem.py [--repeats 9] [--py4dstem-python /tmp/py4d/bin/python]

py4DSTEM 0.14 pins numpy 1.26, so it lives in its own venv
(``python3 -m venv /tmp/py4d && /tmp/py4d/bin/pip install py4dstem``) and runs in a
child process (``benchmarks/peers/py4dstem_cbed.py``), which times its own
``Crystal.generate_CBED`` calls; this process times emverse. The two alternate repeat
by repeat (one emverse pattern, one py4DSTEM pattern, ...), the child's start-up and
structure factors untimed, so a slow spell still hits both.

The workload is py4DSTEM's CBED scheme: one Bloch solve per incident direction on the
detector-pixel grid inside the α = 3 mrad aperture (609 directions at 14 pixels per
α), all 117 beams (|g| ≤ 2.0 Å⁻¹, |S_g| ≤ 0.05 Å⁻¹ on the zone axis, the same hkl on
both sides: py4DSTEM's beam list is filtered to emverse's), each beam's intensity
added to the pixel its disc puts it on; 200 kV, t = 2800 Å, Lobato f_e, U_iso 0.005 Å²,
float64, one thread. emverse's side: ``zone_axis_intensities`` for the 609 directions
batched (structure factors included), then the same placement; timed twice, once
solving every direction and once (its default) solving one direction per orbit of
the zone axis's point symmetry (MgB2 [010]: 4 operations, 166 of the 609 directions;
exact: the intensities of the others are permutations of these), both against the
same py4DSTEM runs.

Not the same as ``bloch.cbed``, which solves each pixel of each disc at its own
incident direction (exact per pixel, many more solves); see docs/emverse-bloch.md.
If py4DSTEM's venv is missing, the script prints emverse's time next to the
published 22.6 s (PEERS.md: py4DSTEM, 609 directions, 117 beams, 2 cores), labelled
as such and without a RATIO line.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import Timing, pin_threads, record, report, wall_time  # noqa: E402

pin_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from emverse.electron import wavelength_angstrom  # noqa: E402
from emverse_bloch.crystal import mgb2  # noqa: E402
from emverse_bloch.geometry import select_beams, zone_axis_orientation  # noqa: E402
from emverse_bloch.simulate import zone_axis_intensities  # noqa: E402

PUBLISHED_PY4DSTEM_S = 22.6  # PEERS.md: 609 directions, 117 beams, this machine type (2 cores)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--thickness", type=float, default=2800.0, help="Å")
    parser.add_argument("--alpha", type=float, default=3.0, help="convergence semi-angle, mrad")
    parser.add_argument("--alpha-pixels", type=int, default=14, help="aperture radius in detector pixels")
    parser.add_argument("--py4dstem-python", default="/tmp/py4d/bin/python")
    args = parser.parse_args(argv)

    crystal = mgb2()
    lam = wavelength_angstrom(200.0)
    orientation = zone_axis_orientation(crystal, (0, 1, 0))
    beams = select_beams(crystal, orientation, 1.0 / lam, 2.0, 0.05)
    pixel = args.alpha * 1e-3 / lam / args.alpha_pixels  # Å⁻¹ per detector pixel
    steps = np.arange(-args.alpha_pixels, args.alpha_pixels + 1)
    tx_pix, ty_pix = np.meshgrid(steps, steps)
    inside = np.hypot(tx_pix, ty_pix) < args.alpha_pixels
    tx_pix, ty_pix = tx_pix[inside], ty_pix[inside]
    tilt_x = torch.as_tensor(tx_pix * args.alpha * 1e-3 / args.alpha_pixels, dtype=torch.float64)
    tilt_y = torch.as_tensor(ty_pix * args.alpha * 1e-3 / args.alpha_pixels, dtype=torch.float64)
    g_lab = crystal.g_vectors(beams) @ orientation.T
    disc = np.round(g_lab[:, :2] / pixel).astype(int)  # disc centres in pixels
    size = 2 * (np.abs(disc).max(0) + 2 * args.alpha_pixels)
    rows = torch.as_tensor(disc[None, :, 0] + tx_pix[:, None] + size[0] // 2)
    cols = torch.as_tensor(disc[None, :, 1] + ty_pix[:, None] + size[1] // 2)

    def emverse_pattern(share=True):
        with torch.no_grad():
            _, intensity = zone_axis_intensities(crystal, (0, 1, 0), [args.thickness], beams=beams,
                                                 orientation=orientation, tilt_rad=(tilt_x, tilt_y),
                                                 mip_corrected=False, share_symmetric_directions=share)
        pattern = torch.zeros(*size.tolist(), dtype=torch.float64)
        return pattern.index_put_((rows.reshape(-1), cols.reshape(-1)), intensity[:, 0].reshape(-1),
                                  accumulate=True)

    print(f"MgB2 [010], 200 kV, t = {args.thickness} Å, α = {args.alpha} mrad, {len(tilt_x)} directions, "
          f"{len(beams)} beams, float64, one thread")
    emverse_pattern()  # warm-up
    request = dict(hkl=beams.tolist(), g_max=2.0, sigma=math.sqrt(0.005), voltage_ev=200e3,
                   thickness=args.thickness, alpha_mrad=args.alpha, pixel_size=pixel, repeats=1)
    if not Path(args.py4dstem_python).exists():
        times = [wall_time(emverse_pattern) for _ in range(args.repeats)]
        ours = Timing(times)
        print(f"py4DSTEM's venv {args.py4dstem_python} is missing: no side-by-side run. emverse "
              f"min {ours.min:.3f} s, median {ours.median:.3f} s; py4DSTEM's PUBLISHED time (PEERS.md, "
              f"not measured here): {PUBLISHED_PY4DSTEM_S} s -> {PUBLISHED_PY4DSTEM_S / ours.min:.0f}x")
        record("CBED 609 directions 117 beams, emverse (published py4DSTEM: 22.6 s)", ours.min, "s")
        return
    shared, every, theirs = [], [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            shared.append(wall_time(emverse_pattern))
            every.append(wall_time(lambda: emverse_pattern(share=False)))
            theirs.append(_py4dstem(args.py4dstem_python, request))
        else:
            theirs.append(_py4dstem(args.py4dstem_python, request))
            every.append(wall_time(lambda: emverse_pattern(share=False)))
            shared.append(wall_time(emverse_pattern))
    with torch.no_grad():
        difference = (emverse_pattern() - emverse_pattern(share=False)).abs().max().item()
    record("CBED pattern: max |difference| symmetry-shared vs every direction solved", difference, "")
    case = f"CBED {len(tilt_x)} directions {len(beams)} beams float64"
    report(f"{case}, every direction solved", Timing(every), Timing(theirs), "py4DSTEM generate_CBED", "s")
    report(f"{case}, symmetric directions shared (exact)", Timing(shared), Timing(theirs),
           "py4DSTEM generate_CBED", "s")


def _py4dstem(python: str, request: dict) -> float:
    done = subprocess.run([python, str(HERE / "peers" / "py4dstem_cbed.py")], input=json.dumps(request),
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["beams"] != len(request["hkl"]) or result["missing"]:
        raise SystemExit(f"py4DSTEM used {result['beams']} beams, not {len(request['hkl'])}: {result['missing']}")
    return result["times"][0]


if __name__ == "__main__":
    main()
