"""The one training loop of emverse: every network a plugin trains goes through :func:`fit`.

A plugin contributes the *network* (an ``nn.Module``) and an *objective* (an
:class:`~emverse.interfaces.Objective`: the loss of one batch); the loop owns
everything else, the same way for every technique. For each optimiser step:

1. take the next global batch of indices — a fresh permutation of the data set
   per epoch, seeded from ``seed`` and the epoch number, so the order depends
   neither on the number of processes nor on where a run was resumed;
2. hand the objective a :class:`Batch`: this process's slice of the samples
   and one ``torch.Generator`` whose draws (``Batch.randn`` and friends) are
   made for the *whole* global batch and then sliced, so N processes under
   ``torchrun`` give the same update as one process with the same batch;
3. check the loss is finite (an error naming the step otherwise), back-propagate,
   clip the gradient norm, take an AdamW step with the learning rate of that
   step (linear warm-up, then constant or cosine decay — a function of the step
   number alone), update the exponential moving average (EMA) of the weights
   and let the objective learn from the step (``Objective.after_step``, e.g. an
   adaptive time sampler; statistics are all-reduced across processes).

Every ``checkpoint_every`` steps, and at the end, the complete state — weights,
EMA, optimiser moments, the generator's state, the objective's state, step and
loss history — is written atomically to ``<name>-resume.safetensors``; calling
:func:`fit` again on the same directory continues exactly where that file
left off, so a run killed with SIGKILL and resumed ends with bit-identical
weights. SIGTERM/SIGINT are held until the current step is whole; then the run
context's ``on_interrupt`` hook writes the same file at that step.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
initialised with ``gloo`` on CPU or ``nccl`` on CUDA; every process starts from
rank 0's weights and buffers, and after each backward pass the gradients are
averaged over the processes (one all-reduce over the flattened gradients) and
the buffers (e.g. BatchNorm statistics) taken from rank 0 — what
DistributedDataParallel does, but independent of how the objective calls the
network: an objective may call any method of it (``training_loss``, a VAE's
``loss``), not only ``forward``. Mixed precision (bfloat16 autocast) is used only
on CUDA when ``amp`` is set.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from emverse.checkpoint import ResumeFile
from emverse.errors import EmverseError
from emverse.interfaces import Objective
from emverse.runstate import at_step_boundary

__all__ = [
    "Batch",
    "TrainConfig",
    "TensorData",
    "ZarrData",
    "TrainResult",
    "fit",
    "epoch_means",
]


def _positive_int(instance, attribute, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise EmverseError(f"training {attribute.name} = {value!r} must be a positive integer")


def _non_negative_int(instance, attribute, value):
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise EmverseError(f"training {attribute.name} = {value!r} must be an integer >= 0")


#: settings a resumed run must share with the run that wrote the checkpoint
_RESUME_INVARIANTS = ("steps", "batch_size", "learning_rate", "seed", "ema_decay", "weight_decay", "lr_decay")


@attrs.frozen
class TrainConfig:
    """Hyper-parameters of :func:`fit` (all steps are optimiser steps).

    ``ema_warmup``: the EMA decay of step k (1-based) is min(``ema_decay``,
    (1 + k)/(10 + k)), so short runs are not dominated by the initial weights;
    otherwise it is 0 before ``ema_start`` and ``ema_decay`` after.
    ``grad_clip`` None disables clipping.
    """

    steps: int = attrs.field(default=1000, validator=_positive_int)
    batch_size: int = attrs.field(default=256, validator=_positive_int)  # global batch
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = attrs.field(default=0, validator=_non_negative_int)
    lr_decay: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "cosine")))
    ema_decay: float = 0.999
    ema_start: int = attrs.field(default=0, validator=_non_negative_int)
    ema_warmup: bool = False
    grad_clip: float | None = 1.0
    amp: bool = True
    validate_every: int = attrs.field(default=0, validator=_non_negative_int)
    checkpoint_every: int = attrs.field(default=0, validator=_non_negative_int)
    log_every: int = attrs.field(default=0, validator=_non_negative_int)
    seed: int = 0

    def __attrs_post_init__(self):
        if not self.learning_rate > 0:
            raise EmverseError(f"training learning_rate = {self.learning_rate!r} must be > 0 (e.g. 1e-3)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise EmverseError(f"training ema_decay = {self.ema_decay!r} must lie in [0, 1) (e.g. 0.999)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise EmverseError(f"training grad_clip = {self.grad_clip!r} must be > 0, or None to disable")
        if not self.weight_decay >= 0:
            raise EmverseError(f"training weight_decay = {self.weight_decay!r} must be >= 0")

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

    def ema_decay_at(self, step: int) -> float:
        """EMA decay applied after optimiser step ``step`` (0-based)."""
        if self.ema_warmup:
            return min(self.ema_decay, (2.0 + step) / (11.0 + step))
        return self.ema_decay if step >= self.ema_start else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}


# ------------------------------------------------------------------------------------------ data
class TensorData:
    """In-memory training data: samples ``x`` (N, ...) and an optional ``condition`` (N, ...)."""

    def __init__(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        if condition is not None and condition.shape[0] != x.shape[0]:
            raise EmverseError(
                f"training data: x has {x.shape[0]} samples but condition has {condition.shape[0]}; "
                "give one condition per sample"
            )
        self.x0, self.condition = x, condition

    def __len__(self) -> int:
        return self.x0.shape[0]

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x0[idx], (self.condition[idx] if self.condition is not None else None)


class ZarrData:
    """Training data read batch by batch from a Zarr group.

    ``x_key`` names the array of samples (leading axis = samples),
    ``condition_key`` the array of conditions (or ``None``). ``transform``
    maps ``(x, condition)`` numpy batches to tensors (default: float32 tensors).
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


# ------------------------------------------------------------------------------------------ batch
@attrs.frozen
class Batch:
    """What an objective sees of one optimiser step.

    ``x``/``condition``: this process's samples; ``indices``: their rows in the
    data set; ``size``: the global batch size and ``part`` this process's slice
    of it. Random draws for the step come from ``generator`` through
    :meth:`randn`/:meth:`rand`/:meth:`randint`, which draw for the whole global
    batch and return this process's part (on ``device``) — the property that
    makes N processes equal one. ``step`` is the 0-based optimiser step.
    """

    x: torch.Tensor
    condition: torch.Tensor | None
    indices: np.ndarray
    step: int
    size: int
    part: slice
    generator: torch.Generator
    device: torch.device

    def randn(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws of shape (local batch, *shape)."""
        full = torch.randn((self.size, *shape), generator=self.generator, dtype=dtype)
        return full[self.part].to(self.device)

    def rand(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        full = torch.rand((self.size, *shape), generator=self.generator, dtype=dtype)
        return full[self.part].to(self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        full = torch.randint(high, (self.size, *shape), generator=self.generator)
        return full[self.part].to(self.device)


# ------------------------------------------------------------------------------------------ state
@attrs.define
class TrainResult:
    step: int
    history: dict[str, list[float]]
    ema: dict[str, torch.Tensor]
    checkpoint: Path | None = None
    resumed_from: int = 0
    interrupted: bool = False
    world_size: int = 1


def epoch_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    """Mean loss of each block of ``steps_per_epoch`` consecutive steps (the last may be shorter)."""
    steps_per_epoch = max(1, int(steps_per_epoch))
    return [float(np.mean(losses[i:i + steps_per_epoch])) for i in range(0, len(losses), steps_per_epoch)]


class _EMA:
    """Exponential moving average of a module's state (parameters and float buffers).

    With ``tracking`` false (a decay that is 0 at every step) the average *is* the module's
    current state, so it is read from the module instead of being copied after every step.
    """

    def __init__(self, module: nn.Module, tracking: bool = True):
        self.module, self.tracking = module, tracking
        self._shadow = {k: v.detach().clone() for k, v in module.state_dict().items()} if tracking else None

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        if self.tracking:
            return self._shadow
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    @shadow.setter
    def shadow(self, value: dict[str, torch.Tensor]) -> None:
        if self.tracking:  # otherwise the module's own (restored) weights are the average
            self._shadow = value

    @torch.no_grad()
    def update(self, decay: float):
        if not self.tracking:
            return
        state = self.module.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        shadow = [self._shadow[k] for k in floats]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, [state[k].detach() for k in floats], alpha=1.0 - decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self._shadow[k].copy_(v)


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


def _upgrade_resume_file(path: Path) -> None:
    """Rewrite a resume file of the training loop's earlier layout (``model.``/``ema.``/``rng.noise``
    at the top level, settings under ``train_config``) in the :class:`ResumeFile` layout, so a run
    interrupted before that change still continues."""
    from safetensors import SafetensorError, safe_open

    from emverse.checkpoint import load_checkpoint, save_checkpoint

    try:
        with safe_open(str(path), framework="pt") as handle:  # the keys only: no tensor is read
            if "rng.noise" not in handle.keys():
                return
    except (SafetensorError, OSError):
        return  # not readable: the resume file's own load says so, naming the file
    old = load_checkpoint(path)
    tensors = {}
    for key, value in old.tensors.items():
        if key.startswith("model."):
            tensors["module." + key[len("model."):]] = value
        elif key.startswith(("ema.", "objective.")) or key == "rng.noise":
            tensors["aux." + key] = value
        else:  # optim.*
            tensors[key] = value
    meta = old.metadata
    config = meta.get("train_config", {})
    metadata = {"step": meta["step"], "history": meta.get("history", {}),
                "optimizer_kinds": meta.get("optimizer_kinds", {}),
                "settings": {k: config[k] for k in _RESUME_INVARIANTS if k in config},
                "extra": {"train_config": config, "world_size": meta.get("world_size", 1)}}
    save_checkpoint(path, tensors, recipe=old.recipe, metadata=metadata)


def _broadcast_state(network: nn.Module) -> None:
    """Rank 0's parameters and buffers to every process."""
    with torch.no_grad():
        for tensor in [*network.parameters(), *network.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def _average_gradients(network: nn.Module, world: int) -> None:
    """The mean gradient over the processes, in place (each process computed its slice of the
    global batch); then every buffer is rank 0's. Parameters that got no gradient must be the
    same on every process (the same code path runs everywhere)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    with torch.no_grad():
        for buffer in network.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def _all_reduce_mean(world: int, device):
    def reduce(value: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return value
        value = value.detach().to(device).clone()
        torch.distributed.all_reduce(value)
        return (value / world).cpu()

    return reduce


# ------------------------------------------------------------------------------------------ fit
def fit(
    network: nn.Module,
    objective: Objective,
    data,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    name: str = "model",
    recipe: dict | None = None,
    resume: bool = True,
    validate: Callable[[dict[str, torch.Tensor]], float] | None = None,
    stop_after: int | None = None,
    progress: bool | Callable = True,
    log: Callable[[str], Any] | None = None,
    on_interrupt: Callable[[Callable[[], None]], Any] | None = None,
) -> TrainResult:
    """Train ``network`` in place on ``data`` with ``objective`` (module docstring).

    ``data`` has ``len()`` and ``get(indices) -> (x, condition)``. ``out_dir``
    (optional) receives ``<name>-resume.safetensors``; with ``resume`` an
    existing one is continued (a finished one makes this call a no-op that
    restores the trained state). ``validate(ema_weights) -> float`` runs every
    ``validate_every`` steps. ``stop_after`` ends the call abruptly after that
    many steps *without* writing anything (what a crash looks like; for tests).
    ``progress`` is ``True``/``False`` or a callable like ``RunContext.progress``.
    ``on_interrupt`` (e.g. ``RunContext.on_interrupt``) registers the checkpoint
    writer to run when the process is asked to stop.

    The network is left with its trained (not averaged) weights; the EMA is
    returned in the result.
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
    device = next(network.parameters()).device
    if world > 1:
        _broadcast_state(network)
    optimizer = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad],
        lr=config.learning_rate,
        betas=tuple(config.adam_betas),
        weight_decay=config.weight_decay,
        foreach=True,
    )
    ema = _EMA(network, tracking=config.ema_warmup or config.ema_decay > 0)
    generator = torch.Generator().manual_seed(int(config.seed))
    history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    start = 0
    out = Path(out_dir) if out_dir is not None else None
    resume_path = out / f"{name}-resume.safetensors" if out is not None else None

    # the one resume-file format of the project: the network as the state, the EMA, the data
    # generator and the objective's state as auxiliary tensors; the invariant settings checked
    current = config.as_dict()
    invariants = json.loads(json.dumps({k: current[k] for k in _RESUME_INVARIANTS}))
    resume_file = ResumeFile(resume_path, config.checkpoint_every, invariants,
                             log=log if rank == 0 else None) if resume_path is not None else None
    if resume and resume_file is not None and resume_path.exists():
        _upgrade_resume_file(resume_path)
        aux: dict[str, torch.Tensor] = {}
        start, saved, _ = resume_file.load(network, optimizer, aux, device)
        ema.shadow = {k[len("ema."):]: v.to(device) for k, v in aux.items() if k.startswith("ema.")}
        generator.set_state(aux["rng.noise"].to(torch.uint8).cpu())
        objective.load_state_dict({k[len("objective."):]: v for k, v in aux.items() if k.startswith("objective.")})
        history = saved or history

    use_amp = bool(config.amp) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    completed = start

    def save(step: int):
        if rank != 0 or out is None:
            return
        aux = {f"ema.{k}": v for k, v in ema.shadow.items()}
        aux["rng.noise"] = generator.get_state()
        aux.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
        resume_file.save(network, optimizer, step, history, {"train_config": current, "world_size": world},
                         aux, recipe=recipe)

    # a stop request is held until the current step is whole (at_step_boundary); a second,
    # forced one can still land mid-step, and then the last periodic checkpoint stands
    state = {"active": True, "in_step": False}

    def save_on_interrupt():
        if state["active"] and not state["in_step"]:
            save(completed)

    if on_interrupt is not None and out is not None:
        on_interrupt(save_on_interrupt)

    bar = None
    steps_iter = range(start, config.steps)
    if rank == 0 and progress and start < config.steps:
        if callable(progress):
            bar = progress(steps_iter, desc=name, total=config.steps - start)
        else:
            from tqdm.auto import tqdm

            bar = tqdm(steps_iter, desc=name, total=config.steps - start, dynamic_ncols=True)
        steps_iter = bar

    order = _EpochOrder(len(data), config.batch_size, int(config.seed))
    reduce = _all_reduce_mean(world, device)
    network.train()
    interrupted = False
    mine = slice(rank * local, (rank + 1) * local)
    for step in steps_iter:
        if stop_after is not None and step >= start + stop_after:
            interrupted = True
            break
        # a stop request (SIGTERM/SIGINT) is held until the step is whole, then the run's
        # interrupt hook writes the resume file at this step
        with at_step_boundary():
            state["in_step"] = True
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(step)
            indices = order.indices(step)
            x, condition = data.get(indices[mine])
            batch = Batch(
                x=x.to(device),
                condition=condition.to(device) if condition is not None else None,
                indices=indices[mine],
                step=step,
                size=config.batch_size,
                part=mine,
                generator=generator,
                device=device,
            )
            with autocast():
                result = objective.loss(network, batch)
            loss = result if isinstance(result, torch.Tensor) else result.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(network, world)
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(config.ema_decay_at(step))
            objective.after_step(result, reduce)
            value = float(reduce(loss.detach().float()))
            if not math.isfinite(value):
                raise EmverseError(
                    f"{name}: the training loss became {value} at step {step + 1}; lower learning_rate "
                    "or check the data for NaN/inf"
                )
            history["step"].append(step + 1)
            history["loss"].append(value)
            completed = step + 1
            state["in_step"] = False
            if bar is not None and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            if log is not None and rank == 0 and config.log_every and (step + 1) % config.log_every == 0:
                log(f"{name}: step {step + 1}/{config.steps} loss {value:.5g}")
            if validate is not None and config.validate_every and (step + 1) % config.validate_every == 0:
                val = float(validate(ema.shadow))
                history["val_step"].append(step + 1)
                history["val_loss"].append(val)
                if log is not None and rank == 0:
                    log(f"{name}: step {step + 1}: train loss {value:.4g}, validation loss {val:.4g}")
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                save(step + 1)

    if bar is not None and hasattr(bar, "close"):
        bar.close()
    network.eval()
    state["active"] = False
    if interrupted:
        if created_group:
            torch.distributed.destroy_process_group()
        return TrainResult(completed, history, ema.shadow, None, start, True, world)
    if out is not None and start < config.steps and (
        not config.checkpoint_every or config.steps % config.checkpoint_every
    ):
        save(config.steps)
    if world > 1:
        torch.distributed.barrier()
    if created_group:
        torch.distributed.destroy_process_group()
    return TrainResult(config.steps, history, ema.shadow, resume_path, start, False, world)
