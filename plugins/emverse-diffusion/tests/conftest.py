"""Shared fixtures: the linear-Gaussian example problem and tiny diffusion priors trained once per session."""

import pytest
import torch
from emverse_diffusion.components import MLPDiffusionPrior
from emverse_diffusion.schedules import CosineSchedule
from emverse_diffusion.training import TensorData, TrainConfig, train


@pytest.fixture(scope="session")
def linear_problem():
    """The example plugin's y = A x + N(0, 0.3²), x ~ N(0, I₄), with its exact posterior."""
    from emverse_example.linear import LinearGaussian
    from emverse_example.prior import GaussianPrior

    return LinearGaussian(dim_x=4, dim_y=6, noise_sigma=0.3, matrix_seed=0), GaussianPrior(dim=4)


def _train(prior, x, y, steps, seed):
    config = TrainConfig(steps=steps, batch_size=256, learning_rate=2e-3, lr_decay="cosine",
                         ema_decay=0.995, seed=seed)
    result = train(prior, TensorData(x, y), config, progress=False)
    prior.network.load_state_dict(result.ema)
    prior.eval()
    return prior, result


@pytest.fixture(scope="session")
def conditional_prior(linear_problem):
    """p(x | y) learned from 20 000 simulated pairs: MLP (64 wide), v-prediction, cosine schedule."""
    model, data_prior = linear_problem
    torch.manual_seed(0)  # network initialisation
    g = torch.Generator().manual_seed(0)
    x = data_prior.sample(20000, generator=g)
    y = model.simulate(x, generator=g)
    prior = MLPDiffusionPrior(dim=4, condition_dim=6, hidden=64, depth=3, prediction="v",
                              schedule=CosineSchedule())
    return _train(prior, x.float(), y.float(), steps=1500, seed=1)


@pytest.fixture(scope="session")
def unconditional_prior(linear_problem):
    """p(x) = N(0, I₄) learned from 20 000 draws (for DPS)."""
    _, data_prior = linear_problem
    torch.manual_seed(1)
    x = data_prior.sample(20000, generator=torch.Generator().manual_seed(1))
    prior = MLPDiffusionPrior(dim=4, condition_dim=0, hidden=64, depth=3, prediction="v",
                              schedule=CosineSchedule())
    return _train(prior, x.float(), None, steps=800, seed=2)

