"""The template plugin's own tests: conformance and the exact posterior."""

import torch


def test_exact_posterior_matches_joint_gaussian_conditioning():
    """The example's posterior against the Schur-complement formula of the joint (x, y) Gaussian."""
    from emverse_example.linear import LinearGaussian
    from emverse_example.prior import GaussianPrior

    model = LinearGaussian(dim_x=3, dim_y=5, noise_sigma=0.4, matrix_seed=2)
    prior = GaussianPrior(dim=3, mean=0.5, std=1.5)
    y = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.7], dtype=torch.float64)
    A = model.matrix
    cov_xx = 1.5**2 * torch.eye(3, dtype=torch.float64)
    cov_xy = cov_xx @ A.T
    cov_yy = A @ cov_xx @ A.T + 0.4**2 * torch.eye(5, dtype=torch.float64)
    mean_y = A @ torch.full((3,), 0.5, dtype=torch.float64)
    gain = cov_xy @ torch.linalg.inv(cov_yy)
    mean = 0.5 + gain @ (y - mean_y)
    cov = cov_xx - gain @ cov_xy.T
    post = prior.exact_posterior(model, y)
    torch.testing.assert_close(post.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.covariance_matrix, cov, rtol=1e-10, atol=1e-12)


def test_example_forward_model_conformance():
    from emverse.testing import check_forward_model
    from emverse_example.linear import LinearGaussian

    report = check_forward_model(LinearGaussian())
    assert report.grad_relative_error < 1e-6


