"""The kill -9 check every stateful task runs: killed midway, resumed, bit-identical.

:func:`check_kill_9_resume` starts ``emverse run RECIPE`` in a child process,
sends it SIGKILL as soon as the run's first resume checkpoint exists (nothing
in the child gets a chance to clean up), checks the run is reported *dead*
(not complete), continues it with ``emverse run --resume`` — which must log a
``resumed:`` line (a resume file, a kept stage or a partly written store taken
up) — and compares every tensor of the named outputs with those of an
uninterrupted run of the same recipe. A test that kills too late (the child already finished) fails, so a
recipe must have enough steps after its first checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from emverse.checkpoint import load_checkpoint

__all__ = ["check_kill_9_resume"]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {path.name} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared within {seconds} s")
        time.sleep(0.005)


def check_kill_9_resume(
    recipe: str | Path,
    root: str | Path,
    *,
    overrides: list[str],
    kill_when: str,
    outputs: list[str],
    timeout: float = 300.0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Kill a run with SIGKILL once ``kill_when`` (a file in its run directory) exists, resume
    it, and require each of ``outputs`` (safetensors files in the run directory) to equal the
    uninterrupted run's, tensor by tensor. Returns the resumed run's tensors by output."""
    from emverse.cli import main
    from emverse.runstate import read_status

    root = Path(root)
    killed, straight = root / "killed", root / "straight"
    sets = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "EMVERSE_HEARTBEAT_SECONDS": "0.2",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emverse.cli", "run", str(recipe), "--out", str(killed), "--no-progress", *sets],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(killed / kill_when, proc, timeout)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    state = read_status(killed)
    assert state["status"] == "dead", f"the killed run is {state['status']!r}, not dead: kill it earlier"
    files = [name for name in outputs if not (killed / name).is_dir()]
    assert not files or not all((killed / name).exists() for name in files), "the run finished before it was killed"
    stores_at_kill = {name: _tensors(killed / name) for name in outputs if (killed / name).is_dir()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: float sums depend on the thread count
    try:
        assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
        assert read_status(killed)["status"] == "complete"
        # the resumed run continued from what the killed one kept (it did not start again)
        assert "resumed:" in (killed / "run.log").read_text(), "the resumed run restored nothing"
        assert main(["run", str(recipe), "--out", str(straight), "--no-progress", *sets]) == 0
    finally:
        torch.set_num_threads(threads)
    resumed = {}
    for name in outputs:
        a, b = _tensors(straight / name), _tensors(killed / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after kill -9 and resume"
        resumed[name] = b
        if name in stores_at_kill:  # the resume had work left in the store: it was killed midway
            at_kill = stores_at_kill[name]
            assert any(k not in at_kill or not torch.equal(at_kill[k], v) for k, v in b.items()), \
                f"{name} was already complete when the run was killed: kill it earlier"
    return resumed


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or every array of a Zarr store (by path)."""
    if not path.is_dir():
        return load_checkpoint(path).tensors
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out = {}

    def visit(g, prefix):
        for key in sorted(g.array_keys()):
            out[prefix + key] = torch.as_tensor(np.asarray(g[key][...]))
        for key in sorted(g.group_keys()):
            visit(g[key], f"{prefix}{key}/")

    visit(group, "")
    return out
