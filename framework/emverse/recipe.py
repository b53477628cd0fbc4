"""Strict TOML recipes: load, override, validate (without importing torch).

Every problem is collected and reported at once, each with its path
(``$.sampler.steps``), the offending value and a fix or "did you mean".
"""

from __future__ import annotations

import copy
import math
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomllib

from emverse.components import Component
from emverse.errors import EmverseError, RecipeError
from emverse.params import ComponentSpec
from emverse.registry import Registry, did_you_mean, get_registry

SCHEMA_VERSION = 1
#: component tables a recipe may hold, and the kind each names
COMPONENT_TABLES = {
    "forward_model": "forward_model",
    "prior": "prior",
    "sampler": "sampler",
    "guidance": "guidance",
    "refiner": "refiner",
    "dataset": "dataset",
    "likelihood": "likelihood",
    "parametrization": "parametrization",
    "correction": "correction",
    "objective": "objective",
}
LIST_TABLES = {"metrics": "metric", "compare": "method"}
TOP_LEVEL = {
    "schema_version", "name", "seed", "task", "device", "dtype", "description", "options",
    *COMPONENT_TABLES, *LIST_TABLES,
}
DTYPES = ("float32", "float64")


@attrs.frozen
class Recipe:
    """A validated recipe. ``components`` maps table name -> ComponentSpec (or a list for metrics)."""

    schema_version: int
    name: str
    seed: int
    task: ComponentSpec
    device: str
    dtype: str
    description: str
    components: dict[str, Any]
    source: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    def to_dict(self) -> dict:
        """The resolved recipe: every default filled in, ready to write as TOML."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "seed": self.seed,
            "task": self.task.type,
            "device": self.device,
            "dtype": self.dtype,
        }
        if self.description:
            out["description"] = self.description
        options = spec_to_dict(self.task)
        options.pop("type")
        if options:
            out["options"] = options
        for key, value in self.components.items():
            if isinstance(value, list):
                out[key] = [spec_to_dict(v) for v in value]
            else:
                out[key] = spec_to_dict(value)
        return out


def spec_to_dict(spec: ComponentSpec) -> dict:
    out: dict[str, Any] = {"type": spec.type}
    if spec.params is not None and attrs.has(type(spec.params)):
        for field in attrs.fields(type(spec.params)):
            out[field.name] = _plain(getattr(spec.params, field.name))
    return out


def _plain(value):
    if isinstance(value, ComponentSpec):
        return spec_to_dict(value)
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


def recipe_input_paths(recipe: Recipe) -> list[tuple[str, Path]]:
    """``(value, resolved path)`` of every input path field the recipe sets (for checksums)."""
    from emverse.paths import resolve

    found: list[tuple[str, Path]] = []

    def visit(params):
        if params is None or not attrs.has(type(params)):
            return
        for field in attrs.fields(type(params)):
            value = getattr(params, field.name)
            if isinstance(value, ComponentSpec):
                visit(value.params)
                continue
            spec = field.metadata.get("emverse_path")
            if not spec:
                continue
            not_paths = spec.get("not_paths", ()) if isinstance(spec, dict) else ()
            for item in value if isinstance(value, tuple | list) else [value]:
                if isinstance(item, str) and item and not any(item.startswith(p) for p in not_paths):
                    found.append((item, resolve(item, recipe.base_dir)))

    visit(recipe.task.params)
    for value in recipe.components.values():
        for spec in value if isinstance(value, list) else [value]:
            visit(spec.params)
    return found


# -- reading -------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise EmverseError(f"recipe file {str(path)!r} does not exist; check the path "
                           "(`emverse recipe show NAME` prints a ready recipe)")
    if path.is_dir():
        raise EmverseError(f"recipe path {str(path)!r} is a directory; give a .toml file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EmverseError(f"recipe file {str(path)!r} is not valid TOML: {exc}; fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EmverseError(f"recipe file {str(path)!r} cannot be read: {exc}") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides; values parse as TOML (``50``, ``"x"``, ``[1, 2]``), else as strings."""
    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EmverseError(f"--set {item!r} must look like key.path=value, e.g. sampler.steps=50")
        try:
            values[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = text
    return apply_values(raw, values)


def apply_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of ``raw`` with each dotted key (``"options.n_samples"``, ``"metrics.0.type"``) set."""
    data = copy.deepcopy(raw)
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, key)
                continue
            if part not in node or not isinstance(node[part], dict | list):
                known = [k for k, v in node.items() if isinstance(v, dict | list)]
                raise EmverseError(
                    f"--set {key}: the recipe has no table {'.'.join(parts[:depth + 1])!r}"
                    f"{did_you_mean(part, known)}; add the table to the recipe first"
                )
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            raise EmverseError(f"--set {key}: cannot replace a whole list entry; set one of its keys")
        node[last] = value
    return data


def _list_item(node: list, part: str, key: str):
    try:
        return node[int(part)]
    except (ValueError, IndexError):
        raise EmverseError(f"--set {key}: {part!r} is not an index into a list of {len(node)}") from None


# -- validation ----------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                registry: Registry | None = None, *, check_files: bool = True) -> Recipe:
    raw = read_toml(path)
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw, source=Path(path).resolve(), registry=registry, check_files=check_files)


def validate_recipe(raw: dict, source: Path | None = None, registry: Registry | None = None, *,
                    check_files: bool = True) -> Recipe:
    """Check ``raw`` (a parsed recipe) completely and return the :class:`Recipe`.

    With ``check_files`` every input file a path field names must exist and open as its
    kind (:mod:`emverse.datafiles`); every problem found is reported at once.
    """
    registry = registry or get_registry()
    v = _Validator(registry, base_dir=source.parent if source else Path.cwd(), check_files=check_files)
    for key in raw:
        if key not in TOP_LEVEL:
            v.error(f"$.{key}", f"unknown top-level key{did_you_mean(key, TOP_LEVEL)}; "
                    f"allowed: {', '.join(sorted(TOP_LEVEL))}")
    schema = raw.get("schema_version")
    if schema is None:
        v.error("$.schema_version", f"is missing; add schema_version = {SCHEMA_VERSION}")
    elif schema != SCHEMA_VERSION:
        v.error("$.schema_version", f"{schema!r} is not supported; this emverse reads {SCHEMA_VERSION}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        v.error("$.name", f"must be a non-empty string, got {name!r}")
    seed = raw.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        v.error("$.seed", f"must be a non-negative integer, got {seed!r}")
    device = raw.get("device", "cpu")
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        v.error("$.device", f"must be 'cpu' or 'cuda[:N]', got {device!r}")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        v.error("$.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    description = raw.get("description", "")

    task_name = raw.get("task")
    task_spec = None
    if task_name is None:
        v.error("$.task", "is missing; name a registered task, e.g. task = \"infer\"")
    elif not isinstance(task_name, str):
        v.error("$.task", f"must be a string naming a task, got {task_name!r}")
    else:
        options = raw.get("options", {})
        if not isinstance(options, dict):
            v.error("$.options", f"must be a table, got {options!r}")
            options = {}
        task_spec = v.component({"type": task_name, **options}, "task", "$.options",
                                type_path="$.task")

    components: dict[str, Any] = {}
    for table, kind in COMPONENT_TABLES.items():
        if table in raw:
            spec = v.component(raw[table], kind, f"$.{table}")
            if spec is not None:
                components[table] = spec
    for table, kind in LIST_TABLES.items():
        if table in raw:
            entries = raw[table]
            if not isinstance(entries, list):
                v.error(f"$.{table}", f"must be an array of tables ([[{table}]]), got {type(entries).__name__}")
                continue
            specs = [v.component(entry, kind, f"$.{table}[{i}]") for i, entry in enumerate(entries)]
            components[table] = [s for s in specs if s is not None]

    if task_spec is not None:  # also when its options had problems: report everything at once
        try:
            requires = getattr(registry.get("task", task_spec.type).load_params(), "requires", ())
        except Exception:  # already reported above
            requires = ()
        for required in requires:
            if required not in raw:
                v.error(f"$.{required}", f"is missing; task {task_name!r} needs a [{required}] table")
    from emverse.compatibility import problems as incompatibilities

    for path, message in incompatibilities(components, task_spec, raw):
        v.error(path, message)
    if v.problems:
        raise RecipeError(v.problems, source=str(source) if source else "recipe")
    return Recipe(
        schema_version=schema, name=name, seed=seed, task=task_spec, device=device, dtype=dtype,
        description=description, components=components, source=source,
    )


def _strict_int(value, _type):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value, _type):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}; give a finite value")
    return float(value)


def _strict_str(value, _type):
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strict_bool(value, _type):
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    return conv


_CONVERTER = _make_converter()


class _Validator:
    def __init__(self, registry: Registry, base_dir: Path, check_files: bool = True):
        self.registry = registry
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def component(self, table, kind: str, path: str, type_path: str | None = None):
        type_path = type_path or f"{path}.type"
        if not isinstance(table, dict):
            self.error(path, f"must be a table with a 'type' key, got {table!r}")
            return None
        name = table.get("type")
        if not isinstance(name, str):
            self.error(type_path, f"is missing; name a registered {kind} "
                       f"({', '.join(self.registry.names(kind)) or 'none installed'})")
            return None
        try:
            record: Component = self.registry.get(kind, name)
        except EmverseError as exc:
            self.error(type_path, str(exc))
            return None
        try:
            params_cls = record.load_params()
        except Exception as exc:
            self.error(type_path, f"parameters of {name!r} cannot be imported ({exc}); "
                       f"reinstall {record.distribution}")
            return None
        values = {k: val for k, val in table.items() if k != "type"}
        params = self.structure(params_cls, values, path)
        # parameters that name input files may check their contents now, before any run
        # directory exists (``validate_files(resolve)``, resolve: recipe path -> Path)
        validate_files = getattr(params, "validate_files", None)
        if params is not None and callable(validate_files):
            from emverse import paths

            try:
                validate_files(lambda p: paths.resolve(p, self.base_dir))
            except Exception as exc:
                self.error(path, _reason(exc))
                return None
        return ComponentSpec(type=name, params=params)

    def check_path(self, field, value) -> str | None:
        """The problem with the input file(s) a path field names, or None."""
        spec = field.metadata.get("emverse_path")
        if not spec:
            return None
        if isinstance(spec, str):  # older metadata: "existing" or "any"
            spec = {"kind": "any", "must_exist": spec == "existing", "reader": None, "not_paths": ()}
        if not (spec["must_exist"] and self.check_files):
            return None
        from emverse.datafiles import check_input, check_with_reader
        from emverse.paths import resolve

        problems = []
        for item in value if isinstance(value, tuple | list) else [value]:
            if not isinstance(item, str) or not item or any(item.startswith(p) for p in spec["not_paths"]):
                continue
            target = resolve(item, self.base_dir)
            label = repr(item) if str(target) == item else f"{item!r} (at {target})"
            try:
                check_input(spec["kind"], target, label)
                if spec["reader"]:
                    check_with_reader(spec["reader"], target)
            except ValueError as exc:
                problems.append(str(exc))
        return "; ".join(problems) or None

    def structure(self, cls, values: dict, path: str):
        attrs.resolve_types(cls)
        fields = {f.name: f for f in attrs.fields(cls)}
        ok = True
        for key in values:
            if key not in fields:
                ok = False
                hint = did_you_mean(key, fields)
                known = ", ".join(fields) or "none"
                self.error(f"{path}.{key}", f"unknown key{hint}; {cls.__name__} takes: {known}")
        kwargs = {}
        for name, field in fields.items():
            if name not in values:
                if field.default is attrs.NOTHING:
                    ok = False
                    self.error(f"{path}.{name}", f"is required ({_type_name(field.type)})")
                continue
            value = values[name]
            fpath = f"{path}.{name}"
            kind = field.metadata.get("emverse_kind")
            if kind is not None:
                spec = self.component(value, kind, fpath)
                if spec is None:
                    ok = False
                    continue
                kwargs[name] = spec
                continue
            try:
                structured = _CONVERTER.structure(value, field.type)
                _check_tuple_length(structured, field.type, value)
            except Exception as exc:
                ok = False
                self.error(fpath, f"{value!r} is not a valid {_type_name(field.type)} ({_reason(exc)})")
                continue
            problem = self.check_path(field, structured)
            if problem:
                ok = False
                self.error(fpath, problem)
                continue
            if field.validator is not None:
                try:
                    field.validator(None, field, structured)
                except Exception as exc:
                    ok = False
                    self.error(fpath, _reason(exc))
                    continue
            kwargs[name] = structured
        # fill defaults of nested specs so the resolved recipe is complete
        for name, field in fields.items():
            kind = field.metadata.get("emverse_kind")
            if kind is not None and name not in kwargs and isinstance(field.default, ComponentSpec):
                spec = self.component({"type": field.default.type}, kind, f"{path}.{name}")
                if spec is not None:
                    kwargs[name] = spec
        if not ok:
            return None
        try:
            return cls(**kwargs)
        except Exception as exc:
            self.error(path, _reason(exc))
            return None


def _check_tuple_length(structured, annotation, raw) -> None:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if args and args[-1] is not Ellipsis and len(raw) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(raw)}")


def _type_name(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        return "; ".join(_reason(e) for e in exc.exceptions)
    return str(exc)
