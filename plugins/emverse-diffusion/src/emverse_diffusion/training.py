"""The training loop every diffusion prior in emverse uses.

What it does, in order, for each optimiser step:

1. take the next global batch of indices (a fresh permutation of the data
   set per epoch, seeded from ``seed`` and the epoch number, so it never
   depends on how many processes run);
2. draw the diffusion times, importance weights and noise for the *whole*
   global batch from one ``torch.Generator`` (its state is checkpointed);
3. every process (one under plain Python, N under ``torchrun``) evaluates its
   slice ``[rank·b, (rank+1)·b)`` of that batch; DDP averages the gradients,
   so N processes give the same update as one process with the same global
   batch (up to float summation order);
4. clip the gradient norm, take an AdamW step (learning rate: linear warm-up,
   then constant or cosine decay, computed from the step number alone), update
   the EMA of the weights and the adaptive time sampler (bin statistics are
   all-reduced).

Every ``checkpoint_every`` steps (and at the end) the complete state — weights,
EMA, optimiser moments, noise generator state, time-sampler bins, step — is
written atomically to ``<name>-resume.safetensors`` with the resolved recipe in
its header; calling :func:`train` again with ``resume=True`` continues exactly
where that checkpoint left off. The final weights (and EMA) go to
``<name>.safetensors``.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
initialised with ``gloo`` on CPU or ``nccl`` on CUDA; no code change is needed.
Mixed precision (bfloat16 autocast) is used only on CUDA when ``amp`` is set.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from emverse.checkpoint import load_checkpoint, save_checkpoint
from emverse.errors import EmverseError
from torch import nn

from .prior import NetworkDiffusionPrior, load_weights

__all__ = [
    "TrainConfig",
    "TensorData",
    "ZarrData",
    "TrainResult",
    "train",
    "load_trained_weights",
]


def _positive_int(instance, attribute, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise EmverseError(f"training {attribute.name} = {value!r} must be a positive integer")


def _non_negative_int(instance, attribute, value):
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise EmverseError(f"training {attribute.name} = {value!r} must be an integer >= 0")


@attrs.frozen
class TrainConfig:
    """Hyper-parameters of :func:`train` (all steps are optimiser steps)."""

    steps: int = attrs.field(default=1000, validator=_positive_int)
    batch_size: int = attrs.field(default=256, validator=_positive_int)  # global batch
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = attrs.field(default=0, validator=_non_negative_int)
    lr_decay: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "cosine")))
    ema_decay: float = 0.999
    ema_start: int = attrs.field(default=0, validator=_non_negative_int)
    grad_clip: float | None = 1.0
    amp: bool = True
    validate_every: int = attrs.field(default=0, validator=_non_negative_int)
    checkpoint_every: int = attrs.field(default=0, validator=_non_negative_int)
    seed: int = 0

    def __attrs_post_init__(self):
        if not self.learning_rate > 0:
            raise EmverseError(f"training learning_rate = {self.learning_rate!r} must be > 0 (e.g. 1e-3)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise EmverseError(f"training ema_decay = {self.ema_decay!r} must lie in [0, 1) (e.g. 0.999)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise EmverseError(f"training grad_clip = {self.grad_clip!r} must be > 0, or None to disable")

    def learning_rate_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        lr = self.learning_rate
        if self.warmup_steps and step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "cosine":
            span = max(self.steps - self.warmup_steps, 1)
            progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
            return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr


# ------------------------------------------------------------------------------------------ data
class TensorData:
    """In-memory training data: clean samples ``x0`` (N, *event) and optional ``condition`` (N, ...)."""

    def __init__(self, x0: torch.Tensor, condition: torch.Tensor | None = None):
        if condition is not None and condition.shape[0] != x0.shape[0]:
            raise EmverseError(
                f"training data: x0 has {x0.shape[0]} samples but condition has {condition.shape[0]}; "
                "give one condition per sample"
            )
        self.x0, self.condition = x0, condition

    def __len__(self) -> int:
        return self.x0.shape[0]

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x0[idx], (self.condition[idx] if self.condition is not None else None)


class ZarrData:
    """Training data read batch by batch from a Zarr group.

    ``x_key`` names the array of clean samples (leading axis = samples),
    ``condition_key`` the array of conditions (or ``None``). ``transform``
    maps ``(x0, condition)`` numpy batches to tensors (default: float32 tensors).
    """

    def __init__(
        self,
        path: str | Path,
        x_key: str = "parameters",
        condition_key: str | None = "observations",
        transform: Callable | None = None,
    ):
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:  # zarr raises several types for a missing store
            raise EmverseError(f"training data: cannot open Zarr store {str(path)!r}: {exc}") from None
        keys = set(group.array_keys())
        for key in (x_key, condition_key):
            if key is not None and key not in keys:
                raise EmverseError(
                    f"training data: Zarr store {str(path)!r} has no array {key!r}; it holds {sorted(keys)}"
                )
        self.x = group[x_key]
        self.condition = group[condition_key] if condition_key is not None else None
        if self.condition is not None and self.condition.shape[0] != self.x.shape[0]:
            raise EmverseError(
                f"training data: {x_key!r} has {self.x.shape[0]} rows but {condition_key!r} "
                f"{self.condition.shape[0]}"
            )
        self.transform = transform

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get(self, indices: np.ndarray):
        order = np.argsort(indices)
        sorted_idx = np.asarray(indices)[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        x = np.asarray(self.x.oindex[sorted_idx])[inverse]
        c = np.asarray(self.condition.oindex[sorted_idx])[inverse] if self.condition is not None else None
        if self.transform is not None:
            return self.transform(x, c)
        return torch.as_tensor(x, dtype=torch.float32), (
            torch.as_tensor(c, dtype=torch.float32) if c is not None else None
        )


# ------------------------------------------------------------------------------------------ state
@attrs.define
class TrainResult:
    step: int
    history: dict[str, list[float]]
    ema: dict[str, torch.Tensor]
    checkpoint: Path | None = None
    resumed_from: int = 0
    interrupted: bool = False


class _EMA:
    """Exponential moving average of a module's state (parameters and float buffers)."""

    def __init__(self, module: nn.Module, decay: float, start: int):
        self.decay, self.start = decay, start
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int):
        decay = self.decay if step >= self.start else 0.0
        state = module.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        shadow = [self.shadow[k] for k in floats]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, [state[k].detach() for k in floats], alpha=1.0 - decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1, False
    created = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        created = True
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), created


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return out


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]):
    template = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    template["state"] = state
    optimizer.load_state_dict(template)


class _EpochOrder:
    """The data order: a fresh permutation per epoch from (seed, epoch) — independent of ranks and resumes."""

    def __init__(self, n_items: int, batch: int, seed: int):
        self.n_items, self.batch, self.seed = n_items, batch, seed
        self.per_epoch = n_items // batch
        self._epoch, self._order = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n_items)
        return self._order[position * self.batch : (position + 1) * self.batch]


# ------------------------------------------------------------------------------------------ train
def train(
    prior: NetworkDiffusionPrior,
    data: TensorData | ZarrData,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    name: str = "model",
    recipe: dict | None = None,
    validation: TensorData | ZarrData | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool | Callable = True,
    log: Callable[[str], Any] | None = None,
) -> TrainResult:
    """Train ``prior``'s network in place (module docstring); returns history and EMA weights.

    ``out_dir`` (optional) receives ``<name>.safetensors`` and
    ``<name>-resume.safetensors``; with ``resume`` an existing resume file is
    continued. ``stop_after`` ends the call abruptly after that many steps
    *without* writing anything (what a crash looks like; used by tests).
    ``progress`` is ``True``/``False`` or a callable like ``RunContext.progress``.
    """
    if len(data) < config.batch_size:
        raise EmverseError(
            f"training data has {len(data)} samples, fewer than batch_size = {config.batch_size}; "
            "lower batch_size or add data"
        )
    rank, world, created_group = _distributed()
    if config.batch_size % world:
        raise EmverseError(
            f"batch_size = {config.batch_size} is not divisible by the {world} processes; "
            f"use a multiple of {world}"
        )
    local = config.batch_size // world
    device = next(prior.network.parameters()).device
    network = prior.network
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        network = nn.parallel.DistributedDataParallel(prior.network, **ddp_kwargs)
    optimizer = torch.optim.AdamW(
        prior.network.parameters(),
        lr=config.learning_rate,
        betas=tuple(config.adam_betas),
        weight_decay=config.weight_decay,
        foreach=True,
    )
    ema = _EMA(prior.network, config.ema_decay, config.ema_start)
    generator = torch.Generator().manual_seed(int(config.seed))
    sampler = prior.objective.time_sampler
    history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    start = 0
    out = Path(out_dir) if out_dir is not None else None
    resume_path = out / f"{name}-resume.safetensors" if out is not None else None
    final_path = out / f"{name}.safetensors" if out is not None else None

    if resume and resume_path is not None and resume_path.exists():
        ckpt = load_checkpoint(resume_path)
        saved_config = ckpt.metadata.get("train_config")
        current = _config_dict(config)
        if saved_config is not None:
            diffs = [
                f"{k}: checkpoint {saved_config.get(k)!r}, now {current[k]!r}"
                for k in ("batch_size", "learning_rate", "seed", "ema_decay", "weight_decay")
                if saved_config.get(k) != current[k]
            ]
            if diffs:
                raise EmverseError(
                    f"cannot resume from {resume_path}: the training settings changed ({'; '.join(diffs)}); "
                    "restore them or start in a fresh directory"
                )
        load_weights(prior.network, ckpt.tensors, "model.", str(resume_path))
        ema.shadow = {
            k[len("ema."):]: v.to(device) for k, v in ckpt.tensors.items() if k.startswith("ema.")
        }
        _load_optimizer(optimizer, {k: v.to(device) if not k.endswith(".step") else v for k, v in ckpt.tensors.items()})
        generator.set_state(ckpt.tensors["rng.noise"].to(torch.uint8).cpu())
        sampler.load_state_dict(
            {k[len("sampler."):]: v for k, v in ckpt.tensors.items() if k.startswith("sampler.")}
        )
        history = {k: list(v) for k, v in ckpt.metadata.get("history", history).items()}
        start = int(ckpt.metadata["step"])

    use_amp = bool(config.amp) and device.type == "cuda"
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    )

    def save(step: int):
        if rank != 0 or out is None:
            return
        meta = {"step": step, "history": history, "train_config": _config_dict(config), "world_size": world}
        tensors = {f"model.{k}": v for k, v in prior.network.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
        tensors.update(_optimizer_tensors(optimizer))
        tensors["rng.noise"] = generator.get_state()
        tensors.update({f"sampler.{k}": v for k, v in sampler.state_dict().items()})
        save_checkpoint(resume_path, tensors, recipe=recipe, metadata=meta)

    bar = None
    steps_iter = range(start, config.steps)
    if rank == 0 and progress:
        if callable(progress):
            bar = progress(steps_iter, desc="train", total=config.steps - start)
        else:
            from tqdm.auto import tqdm

            bar = tqdm(steps_iter, desc="train", total=config.steps - start, dynamic_ncols=True)
        steps_iter = bar

    order = _EpochOrder(len(data), config.batch_size, int(config.seed))
    prior.network.train()
    step = start
    interrupted = False
    for step in steps_iter:
        if stop_after is not None and step >= start + stop_after:
            interrupted = True
            break
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_at(step)
        indices = order.indices(step)
        # one draw for the whole global batch, then this rank's slice
        t, importance = sampler.sample(
            config.batch_size, prior.schedule, generator=generator, device="cpu", dtype=torch.float64
        )
        x0_all_shape = (config.batch_size, *prior.event_shape) if prior.event_shape else None
        mine = slice(rank * local, (rank + 1) * local)
        x0, condition = data.get(indices[mine])
        shape = x0_all_shape or (config.batch_size, *x0.shape[1:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        x0 = x0.to(device)
        condition = condition.to(device) if condition is not None else None
        with autocast():
            terms = prior.loss_terms(
                x0,
                condition,
                t=t[mine].to(device),
                noise=noise[mine].to(device=device, dtype=x0.dtype),
                importance=importance[mine].to(device),
                network=network,
            )
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(prior.network.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(prior.network, step)
        loss_value = terms.loss.detach()
        if sampler.adaptive:
            sums, counts = sampler.bin_statistics(terms.logsnr, terms.weighted)
            if world > 1:
                stats = torch.stack([sums, counts]).to(device)
                torch.distributed.all_reduce(stats)
                sums, counts = stats[0].cpu(), stats[1].cpu()
            sampler.apply(sums, counts)
        if world > 1:
            loss_value = loss_value.clone()
            torch.distributed.all_reduce(loss_value)
            loss_value = loss_value / world
        history["step"].append(step + 1)
        history["loss"].append(float(loss_value))
        if bar is not None and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss_value):.4g}", refresh=False)
        if validation is not None and config.validate_every and (step + 1) % config.validate_every == 0:
            val = validation_loss(prior, validation, ema.shadow, seed=config.seed)
            history["val_step"].append(step + 1)
            history["val_loss"].append(val)
            if log is not None and rank == 0:
                log(f"step {step + 1}: train loss {float(loss_value):.4g}, validation loss {val:.4g}")
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save(step + 1)
    else:
        step = config.steps

    if bar is not None and hasattr(bar, "close"):
        bar.close()
    prior.network.eval()
    if interrupted:
        if created_group:
            torch.distributed.destroy_process_group()
        return TrainResult(step, history, ema.shadow, None, start, True)
    final_step = config.steps
    if out is not None and (not config.checkpoint_every or final_step % config.checkpoint_every):
        save(final_step)
    if out is not None and rank == 0:
        tensors = {f"model.{k}": v for k, v in prior.network.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
        save_checkpoint(
            final_path,
            tensors,
            recipe=recipe,
            metadata={"step": final_step, "train_config": _config_dict(config), "world_size": world},
        )
    if world > 1:
        torch.distributed.barrier()
    if created_group:
        torch.distributed.destroy_process_group()
    return TrainResult(final_step, history, ema.shadow, final_path, start, False)


@torch.no_grad()
def validation_loss(
    prior: NetworkDiffusionPrior,
    data: TensorData | ZarrData,
    weights: dict[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 1024,
) -> float:
    """Mean loss on ``data`` with uniform time sampling and fixed noise (seeded), using ``weights``."""
    device = next(prior.network.parameters()).device
    saved = None
    if weights is not None:
        saved = {k: v.clone() for k, v in prior.network.state_dict().items()}
        prior.network.load_state_dict(weights)
    was_training = prior.network.training
    prior.network.eval()
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    total, count = 0.0, 0
    try:
        for begin in range(0, len(data), batch_size):
            idx = np.arange(begin, min(begin + batch_size, len(data)))
            x0, condition = data.get(idx)
            t = prior.schedule.sample_training_times(len(idx), generator=generator, dtype=torch.float64)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            terms = prior.loss_terms(
                x0.to(device),
                condition.to(device) if condition is not None else None,
                t=t.to(device),
                noise=noise.to(device),
            )
            total += float(terms.weighted.sum())
            count += len(idx)
    finally:
        if saved is not None:
            prior.network.load_state_dict(saved)
        prior.network.train(was_training)
    return total / max(count, 1)


def load_trained_weights(
    prior: NetworkDiffusionPrior, path: str | Path, *, use_ema: bool = True
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` into ``prior``; returns its recipe (or ``{}``)."""
    ckpt = load_checkpoint(path)
    load_weights(prior.network, ckpt.tensors, "ema." if use_ema else "model.", str(path))
    return ckpt.recipe or {}


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(config).items()}
