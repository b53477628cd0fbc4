"""Training of the three CbLDM stages and the baselines (task ``cbldm.train``).

Stage 1: PDF-VAE, L1(100·) + 0.1·MSE(100·) + β·KL. Stage 2: matrix-VAE,
MSE of W (×1000) + β·KL(q(z | W, PDF) ‖ p(z | PDF)). Stage 3 (encoders frozen): the
latent UNet on standardised posterior samples, ε-prediction with an L1 loss, t ~ U(t_min, 1)
on emverse-diffusion's cosine schedule. Baselines: MSE regression PDF → W. β warms up
linearly over the first half of each stage's epochs to ``kl_weight``. Adam everywhere.
Every random draw comes from one torch.Generator seeded from the recipe seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import OptionsTask
from emverse.run import RunResult

from .clusters import WEIGHT_T_ANGSTROM2 as WEIGHT_T
from .prior import CbLDMPrior


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _warmup(epoch: int, epochs: int, weight: float) -> float:
    half = max(1, epochs // 2)
    return weight * min(1.0, (epoch + 1) / half)


def train_model(
    model: CbLDMPrior, pdf, blocks, opts, generator, log=None, progress=None, order_generator=None
) -> dict:
    """Train every stage in place; returns the final training losses by stage.

    ``pdf`` and ``blocks`` live on the model's device; ``generator`` (same device) draws the
    noise, ``order_generator`` (CPU; default: a copy seeded from ``generator``) the batch order.
    """
    losses: dict[str, float] = {}
    n = pdf.shape[0]
    if order_generator is None:
        order_generator = torch.Generator().manual_seed(int(generator.initial_seed()) % (2**63))
    bs = opts.batch_size
    wrap = progress or (lambda it, **kw: it)

    def run_stage(name, params, epochs, step):
        if epochs <= 0:
            return
        opt = torch.optim.Adam(params, lr=opts.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        for epoch in wrap(range(epochs), desc=name):
            total, count = 0.0, 0
            for idx in _batches(n, bs, order_generator):
                idx = idx.to(pdf.device)
                loss = step(idx, epoch, epochs)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            sched.step()
            losses[name] = total / count
            if log and (epoch == epochs - 1 or epoch % max(1, epochs // 5) == 0):
                log.info("%s epoch %d/%d loss %.5g", name, epoch + 1, epochs, losses[name])

    model.train()
    pdf_params = list(model.pdf_vae.parameters())
    run_stage(
        "pdf_vae",
        pdf_params,
        opts.epochs_pdf_vae,
        lambda idx, e, E: model.pdf_vae.loss(pdf[idx], generator, _warmup(e, E, opts.kl_weight)),
    )
    mat_params = list(model.matrix_vae.parameters())
    run_stage(
        "matrix_vae",
        mat_params,
        opts.epochs_matrix_vae,
        lambda idx, e, E: model.matrix_vae.loss(
            blocks[idx], pdf[idx], generator, _warmup(e, E, opts.kl_weight)
        )[0],
    )
    # latent statistics for standardisation
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

    def ldm_step(idx, e, E):
        with torch.no_grad():
            mu, logvar, _, _ = model.matrix_vae.encode(blocks[idx], pdf[idx])
            z = mu + (0.5 * logvar).exp() * torch.randn(
                mu.shape, generator=generator, device=mu.device
            )
            x0 = model.to_standard(z)
        t = t_min + (1 - t_min) * torch.rand(len(idx), generator=generator, device=x0.device)
        alpha, sigma = model.schedule.alpha_sigma(t)
        alpha, sigma = alpha.to(x0.dtype), sigma.to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
        eps_hat = model.unet(x_t, t, embeddings[idx])
        return (eps_hat - eps).abs().mean()

    run_stage("ldm", list(model.unet.parameters()), opts.epochs_ldm, ldm_step)
    for name, net in model.baselines.items():
        run_stage(
            f"baseline_{name}",
            list(net.parameters()),
            opts.epochs_baselines,
            lambda idx, e, E, net=net: (
                ((1000.0 * (net(pdf[idx]) - blocks[idx])) ** 2).mean() * 1e-3
            ),
        )
    model.eval()
    return losses


class TrainTask(OptionsTask):
    """``cbldm.train``: build/open the dataset, train, save the checkpoint, evaluate on the validation split."""

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
            ctx.generator("train", device=ctx.device),
            ctx.log,
            ctx.progress,
            order_generator=ctx.generator("batch-order"),
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
                model, val, opts, ctx.generator("evaluate"), ctx.log, ctx.progress
            )
            metrics.update(report_evaluation(ctx, results, val))
        return RunResult(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        )


class SimulateTask(OptionsTask):
    """``cbldm.simulate``: write (or resume) the dataset store and summarise it."""

    def run(self, ctx):
        from .clusters import STRUCTURE_TYPES

        dataset = ctx.build("dataset")
        path = dataset.ensure(ctx.log)
        data = dataset.load("all")
        import zarr

        is_val = np.asarray(zarr.open_group(str(path), mode="r")["is_val"][:])
        rows = []
        for ti, st in enumerate(STRUCTURE_TYPES):
            sel = data["type_index"] == ti
            if sel.any():
                rows.append(
                    [
                        st,
                        int(sel.sum()),
                        int(data["n_atoms"][sel].min()),
                        int(data["n_atoms"][sel].max()),
                    ]
                )
        ctx.add_table("structures by type", ["type", "count", "min atoms", "max atoms"], rows)
        ctx.add_text("store", str(path))
        return RunResult(
            {
                "n_structures": float(len(data["pdf"])),
                "n_val": float(is_val.sum()),
                "mean_atoms": float(data["n_atoms"].mean()),
            }
        )
