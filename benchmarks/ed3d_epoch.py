"""emverse-ed3d benchmark: time per epoch, and Adam vs L-BFGS time to reach wR(all) = 0.02.

Synthetic quartz (the ``ed3d-quartz-synthetic`` recipe's data: experimental frame
geometry, sinusoidal thickness 400 ± 150 Å, dynamic range 1e6 + Poisson), start
displaced by up to 0.2 Å with U_iso = 0.025 Å², ThicknessNN + positions + ADPs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ed3d_epoch.py [--frame-stride 1] [--max-epochs 300]

Prints one JSON object: seconds per epoch (forward + backward) for each engine, and for each
optimiser the epochs, wall time and loss evaluations needed to reach the target wR (or the
best wR within the budget). Time is wall-clock on whatever machine runs it; state the load.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from emverse.testing import shared_data_dir
from emverse.crystal import Crystal
from emverse_ed3d.pets import read_pets
from emverse_ed3d.problem import build_model
from emverse_ed3d.refiners import Ed3dAdam, Ed3dLBFGS
from emverse_ed3d.synthetic import make_synthetic


def setup(args, backend):
    root = shared_data_dir() / "ed3d_pets" / "quartz"
    geometry = read_pets(root / "quartz_exp.cif_pets").select_frames(range(0, 99, args.frame_stride))
    truth = Crystal.from_cif(root / "quartz_refined_P3221.cif")
    data, t_true = make_synthetic(geometry, truth, profile="sinusoidal", mean_angstrom=400.0,
                                  amplitude_angstrom=150.0, dynamic_range=1e6, g_max=args.g_max,
                                  n_tilts=args.n_tilts,
                                  generator=torch.Generator().manual_seed(7), rng=np.random.default_rng(7))
    model = build_model(data, truth, thickness_model="nn", t_min=50.0, t_max=1000.0, t_init=400.0,
                        g_max=args.g_max, n_tilts=args.n_tilts, check_cell=False,
                        generator=torch.Generator().manual_seed(1))
    model.structure.perturb(0.2, torch.Generator().manual_seed(2))
    st = model.structure
    st.set_adp(torch.eye(3, dtype=torch.float64).repeat(st.x0.shape[0], 1, 1) * 0.025)
    return model


def time_epoch(model, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = model.loss()
        loss.backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--g-max", type=float, default=1.4)
    parser.add_argument("--n-tilts", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.02)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"settings": vars(args), "seconds_per_epoch": {}}
    from emverse_ed3d.physics import bloch_available

    for backend in (["bloch"] if bloch_available() else []) + ["native"]:
        out["seconds_per_epoch"][backend] = time_epoch(setup(args, backend))
    for name, refiner in (("adam", Ed3dAdam(epochs=args.max_epochs, lr=1e-3, target_wr=args.target)),
                          ("lbfgs", Ed3dLBFGS(epochs=max(args.max_epochs // 5, 10), max_iter=5,
                                              target_wr=args.target))):
        model = setup(args, "bloch" if bloch_available() else "native")
        t0 = time.perf_counter()
        result = refiner.refine(model, None)
        out[name] = {
            "reached_target": bool(result.converged), "epochs": result.iterations,
            "seconds": time.perf_counter() - t0, "final_wr": result.final_loss,
            "loss_evaluations": int(result.history.get("evaluations", [result.iterations])[-1]),
        }
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
