import numpy as np
import pytest
from emverse_bloch.crystal import Crystal, mgb2

QUARTZ_CIF = "ed3d_pets/quartz/quartz_refined_P3221.cif"


@pytest.fixture(scope="session")
def mgb2_crystal():
    return mgb2()


@pytest.fixture(scope="session")
def silicon_crystal():
    return Crystal.from_sites(
        [5.431] * 3, [90.0] * 3, [dict(element="Si", position=[0, 0, 0], u_iso=0.0045)],
        spacegroup=227, name="Si",
    )


@pytest.fixture(scope="session")
def quartz_crystal():
    from emverse.testing import shared_data_dir

    path = shared_data_dir() / QUARTZ_CIF
    if not path.exists():
        pytest.skip(f"shared data file {path} is missing")
    return Crystal.from_cif(path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
