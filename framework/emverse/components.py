"""The record a plugin yields to declare one component (no heavy imports)."""

from __future__ import annotations

import importlib

import attrs

#: The six interfaces, the two joints (likelihood, parametrization) and the recipe-level kinds.
KINDS = (
    "forward_model",
    "prior",
    "sampler",
    "guidance",
    "refiner",
    "metric",
    "likelihood",
    "parametrization",
    "correction",
    "objective",
    "method",
    "task",
    "dataset",
    "noise_schedule",
    "guidance_weight",
)


def _check_kind(instance, attribute, value):
    if value not in KINDS:
        raise ValueError(f"component kind {value!r} is unknown; use one of {', '.join(KINDS)}")


def _check_path(instance, attribute, value):
    if value is None:
        return
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(
            f"{attribute.name} {value!r} must read 'package.module:Attribute' "
            "(one colon between the module and the attribute)"
        )


@attrs.frozen
class Component:
    """One component a plugin offers.

    ``impl`` and ``params`` are import paths ``"pkg.module:Name"``; they are
    imported only when a recipe uses the component (``params`` modules must
    stay light: attrs only, no torch), so listing plugins stays fast.
    """

    kind: str = attrs.field(validator=_check_kind)
    name: str
    impl: str = attrs.field(validator=_check_path)
    params: str | None = attrs.field(default=None, validator=_check_path)
    summary: str = ""
    #: filled in by the registry: the distribution that yielded the record
    distribution: str = ""

    def load_impl(self):
        return import_path(self.impl)

    def load_params(self):
        if self.params is None:
            from emverse.params import NoParams

            return NoParams
        return import_path(self.params)


def import_path(path: str):
    """Import ``"pkg.module:Attr"`` and return the attribute."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
