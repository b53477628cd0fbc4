"""Sampling throughput of every emverse-diffusion sampler at equal quality, on the linear-Gaussian example.

Quality = RMS (over observations and parameters) of the posterior-mean error and of the
relative standard-deviation error, both against the exact linear-Gaussian posterior and
in units of the exact posterior std. For each sampler the smallest number of steps on the
ladder that reaches ``--target`` (default 0.10) is found, then samples/s is timed at that
step count. A conditional prior is trained first (about a minute on one core) unless
``--checkpoint`` names a model.safetensors written by recipes/diffusion-linear-gaussian.toml.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_samplers.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from emverse_diffusion.components import MLPDiffusionPrior
from emverse_diffusion.samplers.ddim import DDIMSampler
from emverse_diffusion.samplers.ddpm import DDPMSampler
from emverse_diffusion.samplers.dpmpp_2m import DPMSolverPP2MSampler, DPMSolverPP2MSDESampler
from emverse_diffusion.samplers.euler import EulerSampler
from emverse_diffusion.schedules import CosineSchedule
from emverse_diffusion.training import TensorData, TrainConfig, train
from emverse_example.linear import LinearGaussian
from emverse_example.prior import GaussianPrior

LADDER = (5, 10, 20, 35, 50, 100, 200, 500, 1000)
SAMPLERS = {
    "ddpm": lambda n: DDPMSampler(n),
    "ddim (eta=0)": lambda n: DDIMSampler(n),
    "ddim (eta=1)": lambda n: DDIMSampler(n, eta=1.0),
    "dpm++ 2m": lambda n: DPMSolverPP2MSampler(n),
    "dpm++ 2m sde": lambda n: DPMSolverPP2MSDESampler(n),
    "euler": lambda n: EulerSampler(n),
}


def build_prior(args, model, data_prior, device):
    torch.manual_seed(0)
    prior = MLPDiffusionPrior(dim=4, condition_dim=6, hidden=64, depth=3, prediction="v", schedule=CosineSchedule())
    if args.checkpoint:
        prior.load(args.checkpoint)
    else:
        g = torch.Generator().manual_seed(0)
        x = data_prior.sample(20000, generator=g)
        y = model.simulate(x, generator=g)
        config = TrainConfig(steps=300 if args.quick else 1500, batch_size=256, learning_rate=2e-3,
                             lr_decay="cosine", ema_decay=0.995, seed=1)
        t0 = time.perf_counter()
        result = train(prior, TensorData(x.float(), y.float()), config, progress=False)
        prior.network.load_state_dict(result.ema)
        print(f"trained {config.steps} steps in {time.perf_counter() - t0:.1f} s")
    return prior.to(device).eval()


def quality(prior, sampler, y, exact_mean, exact_std, n_samples, seed):
    draws = prior.sample(n_samples, condition=y, sampler=sampler,
                         generator=torch.Generator(device=y.device).manual_seed(seed)).double().cpu()
    mean_err = ((draws.mean(1) - exact_mean) / exact_std).pow(2).mean().sqrt().item()
    std_err = (draws.std(1) / exact_std - 1).pow(2).mean().sqrt().item()
    return max(mean_err, std_err)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training and fewer observations")
    parser.add_argument("--checkpoint", default="", help="model.safetensors from the train task (recipes/diffusion-linear-gaussian.toml)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", type=float, default=0.10)
    args = parser.parse_args()
    device = torch.device(args.device)
    model, data_prior = LinearGaussian(), GaussianPrior()
    prior = build_prior(args, model, data_prior, device)
    n_obs, n_samples = (8, 200) if args.quick else (16, 400)
    g = torch.Generator().manual_seed(123)
    y = model.simulate(data_prior.sample(n_obs, generator=g), generator=g)
    posts = [data_prior.exact_posterior(model, y[i]) for i in range(n_obs)]
    exact_mean = torch.stack([p.mean for p in posts])
    exact_std = torch.stack([p.covariance_matrix.diagonal().sqrt() for p in posts])
    y = y.float().to(device)
    noise_floor = 1 / n_samples**0.5
    print(f"device {device}; {n_obs} observations × {n_samples} draws; quality target {args.target} "
          f"(sampling noise alone ≈ {noise_floor:.3f})")
    print(f"{'sampler':<16}{'steps':>7}{'error':>9}{'samples/s':>12}")
    for name, make in SAMPLERS.items():
        chosen, err = None, None
        for steps in LADDER:
            err = quality(prior, make(steps), y, exact_mean, exact_std, n_samples, seed=steps)
            if err <= args.target:
                chosen = steps
                break
        if chosen is None:
            print(f"{name:<16}{'>' + str(LADDER[-1]):>7}{err:>9.3f}{'—':>12}")
            continue
        sampler = make(chosen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prior.sample(n_samples, condition=y, sampler=sampler, generator=torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = n_obs * n_samples / (time.perf_counter() - t0)
        print(f"{name:<16}{chosen:>7}{err:>9.3f}{rate:>12.0f}")


if __name__ == "__main__":
    main()
