"""Run a training script under ``torchrun`` on CPU processes and once as a single process.

:func:`two_processes_and_one` writes ``script`` to ``root``, runs it with
``torchrun --standalone --nproc_per_node=2 script root/ddp`` and with
``python script root/single`` (one thread per process each time) and returns the
two output folders, for a test that requires the two runs to agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["two_processes_and_one"]


def two_processes_and_one(script: str, root: str | Path, timeout: float = 600.0) -> tuple[Path, Path]:
    root = Path(root)
    path = root / "train_script.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(path), str(root / "ddp")],
                   check=True, env=env, timeout=timeout)
    subprocess.run([sys.executable, str(path), str(root / "single")], check=True, env=env, timeout=timeout)
    return root / "ddp", root / "single"
