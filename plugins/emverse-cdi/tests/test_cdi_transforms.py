"""Preprocessing/augmentation (paper appendix B.1) against exact references."""

import math

import pytest
import torch
from emverse.errors import EmverseError
from emverse_cdi import transforms as T


def _image(n=16, seed=0):
    return torch.rand(2, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_rotation_is_identity():
    x = _image()
    torch.testing.assert_close(T.rotate(x, torch.zeros(2, dtype=torch.float64))[:, 0], x)


def test_quarter_turn_equals_rot90():
    # a 90° turn maps pixel centres onto pixel centres, so bilinear interpolation is exact
    x = _image()
    out = T.rotate(x, torch.full((2,), math.pi / 2, dtype=torch.float64))[:, 0]
    ref_a, ref_b = torch.rot90(x, 1, dims=(1, 2)), torch.rot90(x, -1, dims=(1, 2))
    assert torch.allclose(out, ref_a, atol=1e-12) or torch.allclose(out, ref_b, atol=1e-12)


def test_small_rotation_is_bilinear_and_keeps_centre():
    # a radially symmetric image is unchanged (up to interpolation) by any rotation
    n = 33
    c = (torch.arange(n, dtype=torch.float64) - n // 2)
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    x = torch.exp(-r2 / 50.0)[None]
    out = T.rotate(x, torch.tensor([math.radians(7.0)], dtype=torch.float64))[0, 0]
    assert out[n // 2, n // 2] == pytest.approx(1.0, abs=1e-12)
    assert (out - x[0]).abs().max() < 0.02


def test_centre_crop_is_exact_slice():
    x = _image(10)
    torch.testing.assert_close(T.centre_crop(x, 6)[:, 0], x[:, 2:8, 2:8])
    with pytest.raises(EmverseError, match="crop size 12"):
        T.centre_crop(x, 12)


def test_full_resized_crop_is_identity_and_half_crop_matches_upsampling():
    x = _image(8)
    centres = torch.zeros(2, 2, dtype=torch.float64)
    full = T.resized_crop(x, centres, torch.ones(2, dtype=torch.float64), 8)[:, 0]
    torch.testing.assert_close(full, x)
    # the central half resampled to 8 px equals bilinear upsampling of the central 4×4 block
    half = T.resized_crop(x, centres, torch.full((2,), 0.5, dtype=torch.float64), 8)[:, 0]
    ref = torch.nn.functional.interpolate(x[:, None, 2:6, 2:6], size=(8, 8), mode="bilinear",
                                          align_corners=False)[:, 0]
    torch.testing.assert_close(half[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1])


def test_random_augmentation_is_reproducible_from_the_generator():
    x = _image(20)
    kw = dict(crop_size=16, input_size=12, rotation_degrees=5.0, resized_crop_scale=(0.5, 1.0))
    a = T.train_transform(x, generator=torch.Generator().manual_seed(1), **kw)
    b = T.train_transform(x, generator=torch.Generator().manual_seed(1), **kw)
    c = T.train_transform(x, generator=torch.Generator().manual_seed(2), **kw)
    assert a.shape == (2, 1, 12, 12)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_eval_transform_is_centre_crop():
    x = _image(20)
    torch.testing.assert_close(T.eval_transform(x, crop_size=12, input_size=12)[:, 0], x[:, 4:16, 4:16])


def test_bad_patterns_are_clear_errors():
    x = _image(8)
    x[0, 3, 3] = float("nan")
    with pytest.raises(EmverseError, match="NaN"):
        T.as_batch(x)
    with pytest.raises(EmverseError, match="shape"):
        T.as_batch(torch.zeros(8, 8))
    with pytest.raises(EmverseError, match="scale"):
        T.random_resized_crop(_image(8), 8, (0.0, 1.0), None)
