"""emverse-ed3d: one refinement epoch at diffBloch's settings, beside diffBloch's own epoch.

The case (the 3D-ED paper's code on the experimental quartz file; PEERS.md): all 99 virtual
frames of ``ed3d_pets/quartz/quartz_exp.cif_pets``, reflections selected by Rsg < 0.9 with
|g| ≤ 2.0 Å⁻¹, beams with |S_g| ≤ 0.01 Å⁻¹ somewhere in the frame, 42 rocking-curve samples
per frame, one thread.

diffBloch needs Python ≥ 3.12, so it runs in its own venv, in a child process, alternated
with emverse's epochs in every repeat: ``diffbloch refine --device cpu --profile`` on an
experiment directory written here (its default Adam refinement, ``steps`` epochs, the
orientation and thickness preprocessing switched off: they run once, before the epochs, and
are not part of an epoch), and its ``epoch k (total)`` lines are read (the first epoch is its
warm-up). Install it with ``python3.12 -m venv /tmp/diffbloch && /tmp/diffbloch/bin/pip
install torch==2.13.0 diffbloch`` (or give ``--diffbloch PATH``). Without it the peer side is
the figure measured in PEERS.md (6.6 s, diffBloch 0.2.0), labelled so.

One emverse epoch = forward + backward of wR(all) over every reflection of every frame with
the structure (positions, ADPs), the thickness network and per-frame orientation angles all
requiring gradients — what ``ed3d.adam`` does per epoch. Three emverse settings are timed:

* ``exact``: every beam solved in float64 (the default);
* ``float32``: every beam solved in complex64 (diffBloch's own ``fp32`` refinement option);
* ``fast``: the weak beams folded in by Bethe potentials (``--bethe-sg``, Å⁻¹) and complex64.

The ratio printed last is ``fast`` / diffBloch; the error of each setting against ``exact``
(relative change of the loss and of its gradient) is printed with it. Differences in
settings, stated: our reflection set is the Rsg selection of emverse-ed3d (printed; diffBloch
reports its own), our rocking samples are weighted by the trapezoid rule, diffBloch integrates
with ``matrix_exp`` and gradient checkpointing.

    python benchmarks/ed3d_epoch.py [--repeats 3] [--frame-stride 1] [--bethe-sg 0.005]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Timing, peak_memory, pin_threads, record, report, wall_time  # noqa: E402

DIFFBLOCH_SECONDS_PER_EPOCH = 6.6  # measured, one thread (PEERS.md, diffBloch 0.2.0)
DIFFBLOCH = "/tmp/diffbloch/bin/diffbloch"
EPOCH_LINE = re.compile(r"epoch (\d+) \(total\)\s+([0-9.]+) ms")


def build(args, *, bethe_sg=0.0, precision="float64"):
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
                        bethe_sg=bethe_sg, solve_precision=precision, generator=torch.Generator().manual_seed(1))
    model.orientation_angles.requires_grad_(True)
    return model


def epoch_of(model):
    def epoch():
        model.zero_grad(set_to_none=True)
        loss = model.loss()
        loss.backward()
        return loss

    return epoch


def loss_and_gradient(model):
    import torch

    loss = epoch_of(model)().item()
    return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


class DiffBloch:
    """diffBloch's CLI on the same data and settings, in its own venv (see the module docstring)."""

    def __init__(self, executable: str, steps: int):
        from emverse.testing import shared_data_dir

        self.executable, self.steps = executable, steps
        self.directory = Path(tempfile.mkdtemp(prefix="diffbloch-epoch-"))
        root = shared_data_dir() / "ed3d_pets" / "quartz"
        shutil.copy(root / "quartz_refined_P3221.cif", self.directory / "quartz.cif")
        shutil.copy(root / "quartz_exp.cif_pets", self.directory / "quartz_exp.cif_pets")
        (self.directory / "experiment.yaml").write_text(
            "name: emverse-epoch-benchmark\n"
            "inputs: {structure: quartz.cif, exp_data: quartz_exp.cif_pets}\n"
            "sample: {thicknesses: [850.0]}\n"
            "blochwave: {rocking_curve_sampling: 42, rsg: 0.9, g_max: 2.0, sg_max: 0.01}\n"
            "preprocess: {optimize_orientation: false, optimize_thickness: false}\n"
            f"refinement: {{steps: {steps}}}\n")
        self.log = ""

    def epochs(self) -> list[float]:
        """Wall times (s) of its epochs after the first, from one ``refine`` run."""
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCH_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        done = subprocess.run([self.executable, "refine", "--device", "cpu", "--profile", str(self.directory)],
                              capture_output=True, text=True, env=env, timeout=1800)
        self.log = done.stdout + done.stderr
        times = [float(ms) / 1e3 for _, ms in EPOCH_LINE.findall(self.log)]
        if done.returncode != 0 or len(times) < 2:
            raise RuntimeError(f"diffbloch refine failed (exit {done.returncode}):\n{self.log[-3000:]}")
        return times[1:]

    def reflections(self) -> str:
        found = re.findall(r"Matched HKLs \(I>3σ/total\)\s+(\d+) / (\d+)", self.log)
        return f"{found[-1][1]} matched, {found[-1][0]} with I > 3σ" if found else "?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one epoch per emverse setting "
                        "and one diffBloch run")
    parser.add_argument("--frame-stride", type=int, default=1, help="emverse only: every n-th frame, times × n")
    parser.add_argument("--sg-max", type=float, default=0.01, help="Å⁻¹, beam selection")
    parser.add_argument("--bucket-ratio", type=float, default=1.3)
    parser.add_argument("--bethe-sg", type=float, default=0.005, help="Å⁻¹, the fast setting's strong beams")
    parser.add_argument("--diffbloch", default=DIFFBLOCH, help="the diffbloch executable of its venv")
    parser.add_argument("--diffbloch-steps", type=int, default=3, help="epochs per diffBloch run (first = warm-up)")
    args = parser.parse_args()
    pin_threads(1)
    import numpy as np

    settings = {"exact": {}, "float32": {"precision": "float32"},
                "fast": {"bethe_sg": args.bethe_sg, "precision": "float32"}}
    models = {name: build(args, **kw) for name, kw in settings.items()}
    physics = models["exact"].physics
    beams = np.asarray(physics.n_beams)
    print(f"  emverse: {physics.n_frames} frames, {int(models['exact'].i_obs.numel())} reflections, "
          f"beams per frame max {beams.max()} / mean {beams.mean():.1f}, 42 rocking samples; fast: "
          f"strong beams per problem {models['fast'].physics.plan.bethe.n_strong.tolist()} (groups of the "
          f"first batch), bethe_sg {args.bethe_sg} Å⁻¹")
    reference = loss_and_gradient(models["exact"])
    for name in ("float32", "fast"):
        loss, grad = loss_and_gradient(models[name])
        record(f"3D-ED {name}: relative loss change against exact", abs(loss - reference[0]) / reference[0], "")
        record(f"3D-ED {name}: relative gradient error against exact",
               float((grad - reference[1]).norm() / reference[1].norm()), "")

    peer = DiffBloch(args.diffbloch, args.diffbloch_steps) if Path(args.diffbloch).exists() else None
    ours = {name: [] for name in settings}
    peer_times = []
    for _ in range(args.repeats):
        for name, model in models.items():
            ours[name].append(wall_time(epoch_of(model)) * args.frame_stride)
        if peer is not None:
            peer_times += peer.epochs()
    if peer is not None:
        print(f"  diffBloch: {peer.reflections()} reflections (its count), {len(peer_times)} epochs timed")
        peer_timing, peer_name = Timing(peer_times), "diffBloch (own venv, alternated)"
    else:
        print(f"  diffBloch's venv {args.diffbloch} is missing: its side is the PEERS.md figure")
        peer_timing, peer_name = Timing([DIFFBLOCH_SECONDS_PER_EPOCH]), "diffBloch 0.2.0 (PEERS.md figure, not run)"
    for name in ("exact", "float32"):
        report(f"3D-ED epoch, quartz, diffBloch settings, 1 thread, {name}", Timing(ours[name]), peer_timing,
               peer_name)
    record("3D-ED epoch peak memory (forward + backward), fast", peak_memory(epoch_of(models["fast"])), "MiB")
    report("3D-ED epoch, quartz, diffBloch settings, 1 thread, fast (Bethe + float32)", Timing(ours["fast"]),
           peer_timing, peer_name)


if __name__ == "__main__":
    main()
