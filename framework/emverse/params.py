"""Helpers for the frozen attrs classes that hold a component's parameters.

Each plugin keeps its parameter classes in a light ``params.py`` (attrs only,
never torch) so that ``emverse recipe validate`` can check a recipe without
importing any implementation. Example::

    @attrs.frozen
    class CbedParams:
        voltage_kv: float = attrs.field(default=200.0, validator=positive)
        zone_axis: tuple[int, int, int] = (0, 1, 0)
        schedule: ComponentSpec = nested("guidance_weight", "diffusion.shifted_sigmoid")

Units go into the field names (``_kv``, ``_mrad``, ``_angstrom``) or the
class docstring.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class NoParams:
    """Parameters of a component that takes none."""


@attrs.frozen
class ComponentSpec:
    """A nested component inside another component's parameters.

    In a recipe it is a sub-table with a ``type`` key, e.g.
    ``[guidance.schedule]`` ``type = "diffusion.shifted_sigmoid"``. After
    validation ``params`` holds the validated parameter object of that type.
    """

    type: str
    params: Any = None


def nested(kind: str, default_type: str | None = None, *, required: bool = False):
    """An attrs field holding a :class:`ComponentSpec` of ``kind``."""
    metadata = {"emverse_kind": kind}
    if required or default_type is None:
        return attrs.field(metadata=metadata)
    return attrs.field(default=ComponentSpec(default_type), metadata=metadata)


def positive(instance, attribute, value):
    if value is None or not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def optional_positive(instance, attribute, value):
    """> 0, or None (the field left out)."""
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 or left out, got {value!r}")


def non_negative(instance, attribute, value):
    if value is None or not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def in_range(low, high, *, inclusive: bool = True):
    """Validator: ``low <= value <= high`` (or strict with ``inclusive=False``)."""

    def check(instance, attribute, value):
        ok = (low <= value <= high) if inclusive else (low < value < high)
        if not ok:
            brackets = "[]" if inclusive else "()"
            raise ValueError(
                f"{attribute.name} must lie in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}"
            )

    return check


def greater_than(other: str):
    """Cross-field validator: this value must exceed field ``other`` of the same object,
    e.g. ``t_max_angstrom = attrs.field(validator=[positive, greater_than("t_min_angstrom")])``.
    The recipe validator checks it when it builds the whole parameter object."""

    def check(instance, attribute, value):
        if instance is None:  # a field checked on its own: the other value is not known yet
            return
        low = getattr(instance, other)
        if not value > low:
            raise ValueError(f"{attribute.name} = {value!r} must be greater than {other} = {low!r}; "
                             f"raise {attribute.name} or lower {other}")

    return check


def one_of(*choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(
                f"{attribute.name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )

    return check


def path_field(kind: str = "file", *, default=attrs.NOTHING, must_exist: bool = True,
               reader: str | None = None, not_paths: tuple[str, ...] = ("builtin:",)):
    """An attrs ``str`` field holding an input path (relative to the recipe's folder, or
    ``shared:sub/path`` for the shared reference data).

    The recipe validator resolves it and, with ``must_exist``, checks before anything runs
    that it exists, is of ``kind`` and opens as that kind (see :mod:`emverse.datafiles`):
    ``"file"``, ``"directory"``, ``"cif"``, ``"checkpoint"`` (a safetensors file),
    ``"zarr"`` (a Zarr store), ``"xyz"``. ``reader`` (``"pkg.module:function"``, a light
    function that takes the path and raises :class:`~emverse.errors.EmverseError` for bad
    content, e.g. ``"emverse_pdf.gr_io:read_gr"``) adds the plugin's own content check.
    An empty string means "not given"; values starting with one of ``not_paths`` (e.g.
    ``"builtin:"``, ``"icosahedron:"``) name something other than a file and are not checked.
    """
    from emverse.datafiles import check_kind

    check_kind(kind)
    metadata = {"emverse_path": {"kind": kind, "must_exist": must_exist, "reader": reader,
                                 "not_paths": tuple(not_paths)}}
    return attrs.field(default=default, metadata=metadata)
