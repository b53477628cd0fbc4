"""Write the simulated "measured" 4D-STEM dataset that ``recipes/multislice-measured.toml`` reads.

    python recipes/data/make_multislice_measured.py          # writes srtio3-4dstem.emd + srtio3-4dstem-truth.npy

SrTiO3 [001] turned 17° about the beam with 30 % of its atoms removed (point defects, so the
object is not periodic), one 1.95 Å slice, 300 kV, 25 mrad, 120 Å defocus, a 48 × 48 px
detector at 0.0833 Å⁻¹ per pixel (0.25 Å real-space pixels), a 12 × 12 scan at 0.6 Å. The
scan is what a real one is: distorted by a global affine (a 4° scan rotation times a 3 % / −2 %
scale with shear), with 0.3 Å rms jitter, a 0.3 Å Gaussian source (partial spatial
coherence), a detector blur of 0.5 px and Poisson noise at 10⁶ e⁻/Å². The file is a Berkeley
EMD written through rosettasciio; that format keeps the scan step and the detector pixel size
but not the beam energy or semi-angle, which the recipe gives. The truth (the phase volume,
the true positions and the least-squares affine of the true positions) goes beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

ROTATION_DEG = 4.0
SCALE_SHEAR = ((1.03, 0.02), (-0.01, 0.98))


def true_affine() -> tuple[tuple[float, float], tuple[float, float]]:
    a = math.radians(ROTATION_DEG)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return tuple(tuple(float(v) for v in row) for row in rotation @ np.array(SCALE_SHEAR))


def make(out_dir: Path = HERE, *, dose: float = 1e6, seed: int = 1, name: str = "srtio3-4dstem") -> dict:
    from emverse_multislice.measured import effective_affine, simulate_measurement

    truth = simulate_measurement(
        out_dir / f"{name}.emd", structure="builtin:srtio3", zone_axis=(0, 0, 1), in_plane_rotation_deg=17.0,
        vacancy_fraction=0.3, voltage_kv=300.0, semiangle_mrad=25.0, defocus_angstrom=120.0,
        reciprocal_pixel_size=1 / 12, detector_pixels=48, depth=1, slice_thickness_angstrom=1.9525,
        scan_shape=(12, 12), scan_step_angstrom=0.6, padding_px=8, true_affine=true_affine(),
        jitter_angstrom=0.3, source_size_angstrom=0.3, detector_blur_px=0.5, dose_e_per_angstrom2=dose, seed=seed)
    np.save(out_dir / f"{name}-truth.npy", truth["phase"].to(torch.float32).numpy())
    record = {"affine": truth["affine"].tolist(),
              "effective_affine": effective_affine(truth["nominal"], truth["positions"]).tolist(),
              "positions_angstrom": truth["positions"].tolist(), "dose_e_per_angstrom2": dose, "seed": seed}
    (out_dir / f"{name}-truth.json").write_text(json.dumps(record, indent=1) + "\n")
    return truth


if __name__ == "__main__":
    make()
