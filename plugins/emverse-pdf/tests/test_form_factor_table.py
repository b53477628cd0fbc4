"""The carried Waasmaier-Kirfel table equals DebyeCalculator's data file, entry by entry."""

import math

import pytest
from emverse_pdf.form_factors import _table, form_factors


def test_carried_table_matches_debyecalculator_data_file():
    yaml = pytest.importorskip("yaml")
    metadata = pytest.importorskip("importlib.metadata")
    try:
        dist = metadata.distribution("debyecalculator")
    except metadata.PackageNotFoundError:
        pytest.skip("debyecalculator (test extra) is not installed")
    with open(dist.locate_file("debyecalculator/utility/elements_info.yaml"), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    expected = {str(k): tuple(float(v) for v in row[:11]) for k, row in raw.items()
                if all(v is not None for v in row[:11])}
    assert _table() == expected


def test_form_factor_at_zero_angle_is_about_the_electron_count():
    import torch

    q = torch.zeros(1, dtype=torch.float64)
    # f0(0) = c + sum a_i ≈ Z for neutral atoms (the fit is good to ~0.1 e at s = 0)
    for symbol, z in (("C", 6), ("O", 8), ("Au", 79)):
        f0 = float(form_factors([symbol], q)[0, 0])
        assert math.isclose(f0, z, abs_tol=0.2), (symbol, f0)
