"""Property-based tests: damaged input files give a correct parse or one EmverseError line.

Random truncations and byte flips of shipped data files go to each reader; the reader must
either return data that agrees with the undamaged file (no silently changed values, nothing
non-finite) or raise :class:`EmverseError` with a one-line message — never another exception.
A truncation exactly at a line end can leave a shorter but valid file (fewer trailing rows):
that is a correct parse of what is there, so it is only required to agree with the original.
200 examples per reader by default; ``--runslow`` runs 2000.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from emverse.crystal import Crystal
from emverse.errors import EmverseError
from emverse.paths import shared_data_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SLOW = os.environ.get("EMVERSE_RUN_SLOW") == "1" or "--runslow" in sys.argv
EXAMPLES = 2000 if SLOW else 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DATA = shared_data_dir()
CIFS = [DATA / "ed3d_pets/quartz/quartz_refined_P3221.cif",
        DATA / "ed3d_pets/paracetamol_formII/paracetamol_Pbca.cif",
        DATA / "pdf_nanoparticles/debyecalculator_reference/AntiFluorite_Co2O.cif"]
GR = DATA / "pdf_experimental/CdSe_nanoparticles_diffpycmi/CdSe-3.gr"
pytestmark = pytest.mark.skipif(not GR.exists(), reason="shared data not found")


def damaged(original: bytes):
    """Strategy: a truncation or 1-3 byte flips of ``original``."""
    cut = st.integers(0, len(original) - 1).map(lambda n: original[:n])

    def flip(edits):
        data = bytearray(original)
        for position, value in edits:
            data[position % len(data)] = value
        return bytes(data)

    flips = st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                     min_size=1, max_size=3).map(flip)
    return st.one_of(cut, flips)


def _one_line_error(exc: EmverseError) -> None:
    assert "\n" not in str(exc), str(exc)
    assert str(exc).strip()


def _sites(crystal: Crystal) -> dict:
    return {s.label: (s.element, tuple(s.position), float(s.occupancy), s.u_cif.tobytes())
            for s in crystal.sites}


def _fuzz(path, read, agrees, tmp_path):
    """Feed damaged copies of ``path`` to ``read``: either one EmverseError line, or a parse that
    ``agrees(parsed, full, truncated)`` with the undamaged file's (``truncated``: the damaged copy
    is a prefix of the original)."""
    original = path.read_bytes()
    full = read(path)
    target = tmp_path / path.name

    @SETTINGS
    @given(damaged(original))
    def check(data):
        target.write_bytes(data)
        try:
            parsed = read(target)
        except EmverseError as exc:
            _one_line_error(exc)
            return
        agrees(parsed, full, original.startswith(data))

    check()


@pytest.mark.parametrize("path", CIFS, ids=[p.stem for p in CIFS])
def test_crystal_from_cif_on_damaged_files(path, tmp_path):
    def agrees(crystal, full, truncated):
        assert np.isfinite(crystal.atom_positions).all()
        assert all(np.isfinite(s.u_cif).all() for s in crystal.sites)
        if truncated:  # what was read must be what the file said
            reference = _sites(full)
            for label, values in _sites(crystal).items():
                assert reference.get(label) == values, f"site {label} changed by a truncation"

    _fuzz(path, Crystal.from_cif, agrees, tmp_path)


def test_gr_reader_on_damaged_files(tmp_path):
    from emverse_pdf.gr_io import read_gr

    def agrees(gr, full, truncated):
        assert np.isfinite(gr.r).all() and np.isfinite(gr.g).all() and (np.diff(gr.r) > 0).all()
        if truncated:
            n = len(gr.r)
            assert np.array_equal(gr.r, full.r[:n]) and np.array_equal(gr.g, full.g[:n])

    _fuzz(GR, read_gr, agrees, tmp_path)


def test_pets2_reader_on_damaged_files(tmp_path):
    """The PETS2 reader (emverse-ed3d) on truncations and byte flips of the experimental quartz
    file: a parse agrees with the undamaged file's frames and reflections, or one error line. A
    cut at a row boundary that leaves the last frames without reflections is refused; one inside
    the last frame's rows cannot be told from a complete file (PETS2 does not count its rows)."""
    pets = pytest.importorskip("emverse_ed3d.pets")

    def agrees(got, full, truncated):
        for array in (got.intensity, got.sigma, got.ub, got.frames.zone_axis, got.frames.alpha_deg):
            assert np.isfinite(array).all()
        assert (got.sigma >= 0).all()
        if truncated:  # a prefix of the reflection rows that still reaches the last frame
            n = got.n_reflections
            assert got.cell == full.cell and np.array_equal(got.ub, full.ub)
            # a cut that leaves the last frames empty is refused as truncated, so every frame is kept
            assert np.array_equal(got.frames.frame_id, full.frames.frame_id)
            assert "frames_without_reflections" not in got.skipped
            assert np.array_equal(got.hkl, full.hkl[:n]) and np.array_equal(got.intensity, full.intensity[:n])

    _fuzz(DATA / "ed3d_pets/quartz/quartz_exp.cif_pets", pets.read_pets, agrees, tmp_path)


XYZ = DATA / "pdf_nanoparticles/debyecalculator_reference/structure_AntiFluorite_Co2O_radius10.0.xyz"
DM3 = DATA / "lacbed/diamond_felixpython/DM3_100x100/C_+0+0+0.dm3"


def test_xyz_reader_on_damaged_files(tmp_path):
    """The project's one xyz reader (emverse-pdf's read_structure, through ase): a parse has as many
    atoms as its header says, finite positions, and agrees with the undamaged file where it is a
    prefix of it; otherwise one error line."""
    structures = pytest.importorskip("emverse_pdf.structures")

    def agrees(got, full, truncated):
        assert np.isfinite(got.positions).all()
        if truncated:  # a cut file either fails or is the whole structure (the count is in the header)
            assert got.symbols == full.symbols and np.array_equal(got.positions, full.positions)

    _fuzz(XYZ, structures.read_structure, agrees, tmp_path)


def test_dm3_pattern_reader_on_damaged_files(tmp_path):
    """A measured LACBED disc (DM3, through rosettasciio): a truncated file must not read as a
    smaller or zero-filled image; a byte flip may change a pixel (DM3 carries no checksum) but
    never gives a non-finite or negative pattern or another exception than one error line."""
    pytest.importorskip("rsciio")
    from emverse.readers import read_pattern

    def agrees(got, full, truncated):
        assert got.data.shape == full.data.shape
        assert np.isfinite(got.data).all() and (got.data >= 0).all()
        if truncated:
            assert np.array_equal(got.data, full.data), "a truncated DM3 read as another image"

    _fuzz(DM3, read_pattern, agrees, tmp_path)
