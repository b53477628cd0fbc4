"""Input files and values are checked at `emverse recipe validate`, before any run starts.

Each probe: exit code 2, one problem line naming the field, the file or value and the fix,
and no run directory left behind by `emverse run`.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from emverse.datafiles import check_input, check_safetensors

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "emverse.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _refused(tmp_path, recipe: str, *overrides: str) -> str:
    """Validate and run with the overrides; both must exit 2 with one problem and leave no run dir."""
    sets = [a for o in overrides for a in ("--set", o)]
    validate = cli("recipe", "validate", str(RECIPES / recipe), *sets, cwd=tmp_path)
    assert validate.returncode == 2, validate.stdout + validate.stderr
    problems = [line for line in validate.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, validate.stderr
    run = cli("run", str(RECIPES / recipe), *sets, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    return problems[0]


def test_missing_gr_file(tmp_path):
    line = _refused(tmp_path, "pdf-fit-au144-experimental.toml", "options.observation=missing.gr")
    assert "$.options.observation: 'missing.gr'" in line and "does not exist; fix the path" in line


def test_gr_file_with_garbage_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "bad.gr"
    bad.write_text("# r G\n0.46 0.1\n0.47x256 0.2\n0.48 0.3\n")
    line = _refused(tmp_path, "pdf-fit-au144-experimental.toml", f"options.observation={bad}")
    assert f"{bad}:3: cannot read numbers from '0.47x256 0.2'" in line


def test_checkpoint_that_is_a_directory(tmp_path):
    (tmp_path / "model.safetensors").mkdir()
    line = _refused(tmp_path, "diffusion-linear-gaussian.toml",
                    f"prior.checkpoint={tmp_path / 'model.safetensors'}")
    assert "$.prior.checkpoint:" in line and "is a directory; give a .safetensors checkpoint file" in line


def test_ed3d_t_min_above_t_max(tmp_path):
    line = _refused(tmp_path, "ed3d-quartz-synthetic.toml", "options.t_min_angstrom=3000.0",
                    "options.t_max_angstrom=2000.0")
    assert "t_max_angstrom = 2000.0 must be greater than t_min_angstrom = 3000.0" in line


def test_infinite_noise_sigma(tmp_path):
    line = _refused(tmp_path, "example-linear-gaussian.toml", "forward_model.noise_sigma=inf")
    assert "$.forward_model.noise_sigma: inf" in line and "finite" in line


def test_nan_anywhere_a_number_goes(tmp_path):
    line = _refused(tmp_path, "example-linear-gaussian.toml", "options.n_observations=3",
                    "forward_model.noise_sigma=nan")
    assert "$.forward_model.noise_sigma: nan" in line


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_safetensors_checks(tmp_path):
    good = _safetensors(tmp_path / "good.safetensors",
                        b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8)
    assert "w" in check_safetensors(good)
    truncated = _safetensors(tmp_path / "cut.safetensors",
                             b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 5)
    with pytest.raises(ValueError, match="truncated: its tensors need"):
        check_input("checkpoint", truncated)
    (tmp_path / "text.safetensors").write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match="header length"):
        check_input("checkpoint", tmp_path / "text.safetensors")


def test_zarr_and_cif_kinds(tmp_path):
    (tmp_path / "store").mkdir()
    with pytest.raises(ValueError, match="not a Zarr store"):
        check_input("zarr", tmp_path / "store")
    (tmp_path / "store" / "zarr.json").write_text("{}")
    check_input("zarr", tmp_path / "store")
    cif = tmp_path / "x.cif"
    cif.write_text("data_x\n_cell_length_a 4.0\n")
    with pytest.raises(ValueError, match="x.cif"):
        check_input("cif", cif)
    from emverse.paths import shared_data_dir

    check_input("cif", shared_data_dir() / "ed3d_pets/quartz/quartz_refined_P3221.cif")
