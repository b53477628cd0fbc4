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
        tensors = load_file(str(path), device=str(device))
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
