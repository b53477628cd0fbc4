"""Shared fixtures of the emverse-pdf tests."""

from __future__ import annotations

import warnings

import pytest
from emverse.testing import shared_data_dir


@pytest.fixture(scope="session")
def pdf_data():
    """shared/data/pdf_nanoparticles (the DeepStruc and DebyeCalculator reference files)."""
    path = shared_data_dir() / "pdf_nanoparticles"
    if not path.is_dir():
        pytest.skip(f"shared PDF data not found at {path}")
    return path


@pytest.fixture(scope="session")
def debyecalculator_cls():
    """The peer code DebyeCalculator (float64, CPU), imported quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = pytest.importorskip("debyecalculator")
    return module.DebyeCalculator
