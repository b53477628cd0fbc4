"""Model checkpoints: safetensors weights + the recipe that made them (never pickles).

Loading an untrusted checkpoint executes no code: safetensors holds only
tensors, and the recipe and metadata travel as JSON strings in its header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emverse import __version__
from emverse.errors import EmverseError
from emverse.io import atomic_write


@attrs.frozen
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    recipe: dict | None
    metadata: dict[str, Any]


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], *, recipe: dict | None = None,
                    metadata: dict | None = None) -> Path:
    header = {
        "emverse_version": __version__,
        "emverse_recipe": json.dumps(recipe) if recipe is not None else "",
        "emverse_metadata": json.dumps(metadata or {}),
    }
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda p: save_file(plain, str(p), metadata=header))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise EmverseError(f"checkpoint {str(path)!r} does not exist; train one first or fix the path")
    try:
        # own, freshly allocated copies: a tensor left in the file's buffer sits at an offset set by
        # the header's length, and a vectorised sum over it can round differently
        tensors = {name: t.clone() for name, t in load_file(str(path), device=str(device)).items()}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise EmverseError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from None
    recipe_text = header.get("emverse_recipe", "")
    return Checkpoint(
        tensors=tensors,
        recipe=json.loads(recipe_text) if recipe_text else None,
        metadata=json.loads(header.get("emverse_metadata", "{}") or "{}"),
    )


def load_state_dict_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning shape/key mismatches into an error that says which checkpoint is wrong."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}")
        raise EmverseError(
            f"checkpoint {source!r} does not fit {type(module).__name__} ({'; '.join(parts)}); "
            "use the recipe it was trained with or retrain"
        )
    module.load_state_dict(tensors)


# ------------------------------------------------------------------ resumable iterative state
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An optimiser's per-parameter state as flat tensors ``optim.<index>.<key>`` plus the kind of
    each entry ("tensor", "int", "float" or "list:<length>:<indices of None>": a list of
    equal-shape tensors, stacked, with its empty slots), so
    Adam's moments and L-BFGS's direction history both round-trip exactly."""
    tensors, kinds = {}, {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            name = f"optim.{index}.{key}"
            if isinstance(value, list):  # L-BFGS: directions, steps, ρ, α (α starts as [None, ...])
                missing = [i for i, v in enumerate(value) if v is None]
                kinds[name] = f"list:{len(value)}:" + ",".join(map(str, missing))
                present = [v for v in value if v is not None]
                value = torch.stack(present) if present else torch.zeros(0)
            elif isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
                raise EmverseError(f"optimiser state {key!r} of type {type(value).__name__} cannot be saved")
            elif isinstance(value, int):
                kinds[name] = "int"
                value = torch.tensor(value, dtype=torch.int64)
            elif isinstance(value, float):  # L-BFGS's step length t and previous loss: kept exact
                kinds[name] = "float"
                value = torch.tensor(value, dtype=torch.float64)
            else:
                kinds[name] = "tensor"
            tensors[name] = torch.as_tensor(value).detach().clone()
    return tensors, kinds


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           kinds: dict[str, str], device=None) -> None:
    """Restore what :func:`optimizer_tensors` wrote (tensors go to ``device``; Adam's ``step`` stays
    where torch keeps it)."""
    template = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        kind = kinds.get(name, "tensor")
        if kind.startswith("list"):
            _, length, missing_text = kind.split(":")
            missing = {int(i) for i in missing_text.split(",") if i}
            present = iter([v.clone() for v in value.unbind(0)]) if value.numel() else iter(())
            restored = [None if i in missing else next(present) for i in range(int(length))]
            if device is not None:
                restored = [v if v is None else v.to(device) for v in restored]
        elif kind == "int":
            restored = int(value)
        elif kind == "float":
            restored = float(value)
        else:
            restored = value if key == "step" or device is None else value.to(device)
        state.setdefault(int(index), {})[key] = restored
    template["state"] = state
    optimizer.load_state_dict(template)


@attrs.define
class ResumeFile:
    """The state of an iterative job (a refinement's parameters, optimiser, step and history),
    written atomically every ``every`` steps to ``path`` so an interrupted run continues exactly.

    ``state`` is a module, or a dict of named tensors (a refinement's free parameters), restored
    in place. ``load(state, optimizer)`` returns ``(step, history, extra)`` — ``(0, None, {})`` when
    no file exists; ``save(state, optimizer, step, history, extra)`` writes the file (``extra``:
    JSON-able facts such as "finished early"). ``aux`` carries further tensors a loop needs
    (an L-BFGS's last evaluation, a generator's state): passed to ``save`` and, as an empty dict
    to fill, to ``load``. ``settings`` are stored and must match on load (a changed setting is
    refused).
    """

    path: Path
    every: int = 0
    settings: dict = attrs.field(factory=dict)
    #: told ``"resumed: <file> at step N"`` when a file is continued (e.g. a run's ``log.info``)
    log: Any = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: torch.nn.Module | dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             step: int, history: dict[str, list[float]], extra: dict | None = None,
             aux: dict[str, torch.Tensor] | None = None, recipe: dict | None = None) -> Path:
        tensors = {f"module.{k}": v for k, v in _state_tensors(state).items()}
        tensors.update({f"aux.{k}": v for k, v in (aux or {}).items()})
        optim, kinds = optimizer_tensors(optimizer)
        tensors.update(optim)
        metadata = {"step": int(step), "history": history, "optimizer_kinds": kinds, "settings": self.settings,
                    "extra": extra or {}}
        return save_checkpoint(self.path, tensors, recipe=recipe, metadata=metadata)

    def load(self, state: torch.nn.Module | dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             aux: dict[str, torch.Tensor] | None = None, device=None):
        path = Path(self.path)
        if not path.exists():
            return 0, None, {}
        ckpt = load_checkpoint(path)
        saved = ckpt.metadata.get("settings", {})
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in self.settings.items()
                 if k in saved and saved[k] != v]
        if diffs:
            raise EmverseError(f"cannot resume from {path}: the settings changed ({'; '.join(diffs)}); "
                               "restore them or start in a fresh run directory")
        values = {k[len("module."):]: v for k, v in ckpt.tensors.items() if k.startswith("module.")}
        if isinstance(state, torch.nn.Module):
            load_state_dict_strict(state, values, str(path))
        else:
            _load_tensors_in_place(state, values, str(path))
        if aux is not None:
            aux.update({k[len("aux."):]: v for k, v in ckpt.tensors.items() if k.startswith("aux.")})
        load_optimizer_tensors(optimizer, ckpt.tensors, ckpt.metadata.get("optimizer_kinds", {}), device)
        history = {k: list(v) for k, v in ckpt.metadata.get("history", {}).items()}
        if self.log is not None:
            self.log(f"resumed: {path.name} at step {int(ckpt.metadata['step'])}")
        return int(ckpt.metadata["step"]), history, dict(ckpt.metadata.get("extra", {}))


def start_from(resume: ResumeFile | None, state, optimizer: torch.optim.Optimizer,
               aux: dict[str, torch.Tensor] | None = None, device=None) -> tuple[int, dict | None, dict]:
    """``resume.load(...)`` for a loop that may run without a resume file: ``(0, None, {})``
    (a fresh start) when ``resume`` is None."""
    return resume.load(state, optimizer, aux, device) if resume is not None else (0, None, {})


def _state_tensors(state) -> dict[str, torch.Tensor]:
    return state.state_dict() if isinstance(state, torch.nn.Module) else {k: v.detach() for k, v in state.items()}


@torch.no_grad()
def _load_tensors_in_place(state: dict[str, torch.Tensor], values: dict[str, torch.Tensor], source: str) -> None:
    if set(state) != set(values) or any(state[k].shape != values[k].shape for k in state):
        raise EmverseError(f"resume file {source!r} holds {sorted(values)} with other shapes or names than "
                           f"this refinement's {sorted(state)}; use the recipe it was written with or a "
                           "fresh run directory")
    for name, tensor in state.items():
        tensor.copy_(values[name].to(tensor.device))
