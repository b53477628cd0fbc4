"""Training of the three CbLDM stages and the baselines (task ``cbldm.train``).

Stage 1: PDF-VAE, L1(100·) + 0.1·MSE(100·) + β·KL. Stage 2: matrix-VAE,
MSE of W (×1000) + β·KL(q(z | W, PDF) ‖ p(z | PDF)). Stage 3 (encoders frozen): the
latent UNet on standardised posterior samples, ε-prediction with an L1 loss, t ~ U(t_min, 1)
on emverse-diffusion's cosine schedule. Baselines: MSE regression PDF → W. β warms up
linearly over the first half of each stage's epochs to ``kl_weight``. Each stage is one call
of the core training loop (:func:`emverse.training.fit`: Adam, cosine learning-rate decay over
the stage's steps, gradient norm clipped at 1, checkpoints and exact resume); every random
draw comes from the stage's generator, seeded from the recipe seed and the stage's name.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import Objective, OptionsTask
from emverse.run import RunResult, stable_seed
from emverse.training import TensorData, TrainConfig, fit

from .clusters import WEIGHT_T_ANGSTROM2 as WEIGHT_T
from .prior import CbLDMPrior


class _StageObjective(Objective):
    """One stage's loss: ``step_loss(network, batch, epoch, epochs)`` (β warm-up needs the epoch)."""

    def __init__(self, step_loss, steps_per_epoch: int, epochs: int):
        self.step_loss, self.steps_per_epoch, self.epochs = step_loss, steps_per_epoch, epochs

    def loss(self, network, batch):
        return self.step_loss(network, batch, batch.step // self.steps_per_epoch, self.epochs)


def _warmup(epoch: int, epochs: int, weight: float) -> float:
    half = max(1, epochs // 2)
    return weight * min(1.0, (epoch + 1) / half)


def train_model(
    model: CbLDMPrior, pdf, blocks, opts, seed: int, *, out_dir=None, recipe=None, checkpoint_every: int = 0,
    log=None, progress=False, on_interrupt=None, stop_after: dict[str, int] | None = None,
) -> dict:
    """Train every stage in place on the core loop; returns the final training losses by stage.

    ``pdf`` and ``blocks`` live on the model's device. Stage ``name`` draws from the seed
    ``stable_seed(seed, name)``; with ``out_dir`` its state is checkpointed to
    ``<out_dir>/cbldm-<name>-resume.safetensors`` and a re-run continues from there (a
    finished stage is restored, not retrained). ``stop_after`` {stage: steps} ends a stage
    abruptly, as a crash would (for tests); the stages after it are then not run.
    """
    losses: dict[str, float] = {}
    n = pdf.shape[0]
    bs = min(opts.batch_size, n)
    per_epoch = max(1, n // bs)
    data = TensorData(pdf, blocks)
    stopped = False

    def run_stage(name, module, epochs, step_loss):
        nonlocal stopped
        if epochs <= 0 or stopped:
            return
        config = TrainConfig(
            steps=epochs * per_epoch, batch_size=bs, learning_rate=opts.lr, lr_decay="cosine",
            ema_decay=0.0, grad_clip=1.0, amp=False, checkpoint_every=checkpoint_every,
            log_every=max(1, epochs * per_epoch // 5), seed=stable_seed(seed, name) % (2**62),
        )
        result = fit(
            module, _StageObjective(step_loss, per_epoch, epochs), data, config, out_dir=out_dir,
            name=f"cbldm-{name}", recipe=recipe, progress=progress, log=log, on_interrupt=on_interrupt,
            stop_after=(stop_after or {}).get(name),
        )
        stopped = result.interrupted
        losses[name] = float(np.mean(result.history["loss"][-per_epoch:]))

    model.train()

    def pdf_vae_loss(net, batch, epoch, epochs):
        return net.loss(batch.x, batch.generator, _warmup(epoch, epochs, opts.kl_weight))

    def matrix_vae_loss(net, batch, epoch, epochs):
        return net.loss(batch.condition, batch.x, batch.generator, _warmup(epoch, epochs, opts.kl_weight))[0]

    run_stage("pdf_vae", model.pdf_vae, opts.epochs_pdf_vae, pdf_vae_loss)
    run_stage("matrix_vae", model.matrix_vae, opts.epochs_matrix_vae, matrix_vae_loss)
    if stopped:
        return losses
    # latent statistics for standardisation (deterministic given the trained encoders)
    model.eval()
    with torch.no_grad():
        mus = torch.cat(
            [
                model.matrix_vae.encode(blocks[i : i + 256], pdf[i : i + 256])[0]
                for i in range(0, n, 256)
            ]
        )
        model.latent_shift.fill_(float(mus.mean()))
        model.latent_scale.fill_(float(mus.std().clamp_min(1e-3)))
        embeddings = torch.cat([model.embed(pdf[i : i + 256]) for i in range(0, n, 256)])

    t_min = 1e-3

    def ldm_loss(unet, batch, epoch, epochs):
        with torch.no_grad():
            mu, logvar, _, _ = model.matrix_vae.encode(batch.condition, batch.x)
            z = mu + (0.5 * logvar).exp() * batch.randn(*mu.shape[1:], dtype=mu.dtype)
            x0 = model.to_standard(z)
        t = t_min + (1 - t_min) * batch.rand(dtype=x0.dtype)
        alpha, sigma = model.schedule.alpha_sigma(t)
        alpha, sigma = alpha.to(x0.dtype), sigma.to(x0.dtype)
        eps = batch.randn(*x0.shape[1:], dtype=x0.dtype)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
        eps_hat = unet(x_t, t, embeddings[torch.as_tensor(batch.indices, device=x0.device)])
        return (eps_hat - eps).abs().mean()

    run_stage("ldm", model.unet, opts.epochs_ldm, ldm_loss)
    for name, net in model.baselines.items():
        run_stage(
            f"baseline_{name}",
            net,
            opts.epochs_baselines,
            lambda module, batch, e, E: ((1000.0 * (module(batch.x) - batch.condition)) ** 2).mean() * 1e-3,
        )
    model.eval()
    return losses


class TrainTask(OptionsTask):
    """``cbldm.train``: build/open the dataset, train, save the checkpoint, evaluate on the validation split.

    A plugin task because CbLDM trains three stages in sequence (the PDF VAE, the matrix VAE,
    the latent diffusion on the frozen encoders) and two baselines, each through the core loop
    (:func:`emverse.training.fit`), into one checkpoint, then evaluates by recovering structures;
    the core ``train`` task trains one network with one objective."""

    def run(self, ctx):
        opts = self.options
        if opts.threads:
            torch.set_num_threads(opts.threads)
        torch.manual_seed(0)  # module initialisers; every training draw uses `generator` below
        dataset = ctx.build("dataset")
        dataset.ensure(ctx.log)
        train = dataset.load("train")
        val = dataset.load("val")
        dtype = torch.float32
        pdf = torch.as_tensor(train["pdf"], dtype=dtype)
        blocks = torch.as_tensor(train["blocks"], dtype=dtype)
        block = blocks.shape[-1]
        with torch.random.fork_rng():
            torch.manual_seed(ctx.generator("init").initial_seed() % (2**63))
            model = CbLDMPrior(
                block=block,
                latent_size=opts.latent_size,
                pdf_channels=opts.pdf_channels,
                matrix_channels=opts.matrix_channels,
                unet_channels=opts.unet_channels,
                schedule_offset=opts.schedule_offset,
                baselines=tuple(opts.baselines),
                matrix_decoder=opts.matrix_decoder,
            )
        if opts.matrix_decoder == "coordinates" and dataset.params.t_angstrom2 != WEIGHT_T:
            raise EmverseError(
                f"matrix_decoder = 'coordinates' builds W with t = {WEIGHT_T} Å², but the dataset "
                f"has t_angstrom2 = {dataset.params.t_angstrom2}; use t_angstrom2 = {WEIGHT_T} "
                "or matrix_decoder = 'conv'"
            )
        if opts.init_checkpoint:
            from emverse.checkpoint import load_checkpoint, load_state_dict_strict

            from .prior import checkpoint_config

            ckpt = load_checkpoint(ctx.resolve_path(opts.init_checkpoint))
            checkpoint_config(ckpt.metadata, opts.init_checkpoint, opts.matrix_decoder)
            load_state_dict_strict(model, ckpt.tensors, opts.init_checkpoint)
        n_params = sum(p.numel() for p in model.parameters())
        ctx.log.info(
            "cbldm.train: %d training / %d validation structures, %d parameters",
            len(pdf),
            len(val["pdf"]),
            n_params,
        )
        model = model.to(ctx.device)
        losses = train_model(
            model,
            pdf.to(ctx.device),
            blocks.to(ctx.device),
            opts,
            stable_seed(ctx.seed, "train"),
            out_dir=ctx.out_dir,
            recipe=ctx.recipe.to_dict(),
            checkpoint_every=opts.checkpoint_every,
            log=ctx.log.info,
            progress=ctx.progress,
            on_interrupt=ctx.on_interrupt,
        )
        model = model.cpu()
        ctx.save_checkpoint(
            opts.checkpoint_name, model.checkpoint_tensors(), metadata=model.checkpoint_metadata()
        )
        metrics = {f"train_loss.{k}": v for k, v in losses.items()}
        metrics["n_train"] = float(len(pdf))
        metrics["n_val"] = float(len(val["pdf"]))
        metrics["n_parameters"] = float(n_params)
        if opts.eval_structures > 0 and len(val["pdf"]) > 0:
            from .evaluate import evaluate_model, report_evaluation

            results = evaluate_model(
                model, val, opts, ctx.generator("evaluate"), ctx.log, ctx.progress, keep=ctx.stage
            )
            metrics.update(report_evaluation(ctx, results, val))
        return RunResult(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        )
