"""emverse-ed3d: one refinement epoch at diffBloch's settings, against diffBloch's measured time.

The case (the 3D-ED paper's code, diffBloch 0.2.0, on the experimental quartz file; PEERS.md):
all 99 virtual frames of ``ed3d_pets/quartz/quartz_exp.cif_pets``, reflections selected by
Rsg < 0.9 with |g| ≤ 2.0 Å⁻¹, 42 rocking-curve samples per frame, orientation refinement on,
≤ 88 beams per frame; diffBloch takes 6.6 s per epoch on one thread of this machine type.

diffBloch needs Python ≥ 3.12 and cannot run in this venv, so its side is the *measured figure*
from PEERS.md, not a run interleaved in this process: the RATIO line compares our minimum with
that figure (labelled so) and is only as good as the two machines' likeness.

One epoch here = forward + backward of wR(all) over every reflection of every frame with the
structure (positions, ADPs), the thickness network and per-frame orientation angles all
requiring gradients — what ``ed3d.adam`` does per epoch. Differences in settings, stated:
our beams are |g| ≤ g_max with |S_g| ≤ sg_max somewhere in the frame plus every requested
reflection (diffBloch caps the count at 88; ``--sg-max`` is chosen so our largest frame is
about as large, and the beam counts are printed); our rocking samples are weighted by the
trapezoid rule.

    OMP_NUM_THREADS=1 python benchmarks/ed3d_epoch.py [--repeats 3] [--frame-stride 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Timing, peak_memory, pin_threads, record, report, timed  # noqa: E402

DIFFBLOCH_SECONDS_PER_EPOCH = 6.6  # measured, one thread (PEERS.md)


def build(args):
    import torch
    from emverse.crystal import Crystal
    from emverse.testing import shared_data_dir
    from emverse_ed3d.pets import read_pets
    from emverse_ed3d.problem import build_model

    root = shared_data_dir() / "ed3d_pets" / "quartz"
    data = read_pets(root / "quartz_exp.cif_pets")
    if args.frame_stride > 1:
        data = data.select_frames(range(0, data.n_frames, args.frame_stride))
    crystal = Crystal.from_cif(root / "quartz_refined_P3221.cif")
    model = build_model(data, crystal, thickness_model="nn", t_min=100.0, t_max=1500.0, t_init=850.0,
                        g_max=2.0, rsg_max=0.9, n_tilts=42, sg_max=args.sg_max, bucket_ratio=args.bucket_ratio,
                        bethe_sg=args.bethe_sg, solve_precision=args.precision, generator=torch.Generator().manual_seed(1))
    model.orientation_angles.requires_grad_(True)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed (each ~ a minute on a loaded core)")
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--sg-max", type=float, default=0.01, help="Å⁻¹, beam selection")
    parser.add_argument("--bucket-ratio", type=float, default=1.3)
    parser.add_argument("--precision", default="float64", choices=("float64", "float32"), help="eigensolves")
    parser.add_argument("--bethe-sg", type=float, default=0.0, help="Å⁻¹; 0 = every beam solved exactly")
    args = parser.parse_args()
    pin_threads(1)
    import numpy as np

    model = build(args)
    beams = np.asarray(model.physics.n_beams)
    print(f"  {model.data.n_frames} frames, {int(model.i_obs.numel())} reflections, "
          f"beams per frame max {beams.max()} / mean {beams.mean():.1f}, 42 rocking samples, "
          f"{len(model.physics.buckets)} batches")

    def epoch():
        model.zero_grad(set_to_none=True)
        loss = model.loss()
        loss.backward()
        return loss

    ours = timed(epoch, repeats=args.repeats, warmup=1)
    scale = args.frame_stride  # per full data set when frames were thinned
    ours = Timing([t * scale for t in ours.times])
    peer = Timing([DIFFBLOCH_SECONDS_PER_EPOCH])
    report("3D-ED epoch, quartz, diffBloch settings, 1 thread", ours, peer,
           "diffBloch 0.2.0 (measured figure, PEERS.md, not run here)")
    record("3D-ED epoch peak memory (forward + backward)", peak_memory(epoch), "MiB")


if __name__ == "__main__":
    main()
