"""One declaration per option (DESIGN.md section 7): a stage's argument dataclass is the only place its
options are written. This module reads such a dataclass — field types (`Literal[...]` for choices),
defaults and the docstring under each field — and makes from it

* `build(cls, values, where)`: the dataclass from a mapping (a job file's `stages.<name>`, a command
  line's parsed options), every key type-checked, then the dataclass's own `validate()` (ranges and
  cross-field rules); one `ConfigError` lists every problem;
* `click_options(cls)`: the click options of the stage command, `--help` from the field docstrings.

A dataclass may define `validate(self) -> list[str]` returning its problems (empty when valid); the
helpers `at_least` and `positive` below phrase the common ones the same way everywhere. It may also define
`record(self) -> dict`, its options as records keep them (`recorded`), when a default depends on another
option.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from typing import Any, Literal

import click

from lancet_ds.errors import ConfigError


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field name: the docstring written under it} for a dataclass and its bases (litgpt's habit)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def choices(cls, name: str) -> tuple | None:
    """The allowed values of a `Literal[...]` field, else None."""
    tp, _ = _optional(_hints(cls)[name])
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def coerce(tp, value: Any) -> Any:
    """`value` as type `tp`, or ValueError with what was expected. Strings from a command line or a
    YAML file become numbers where the type says so (NaN is refused; infinity is left to each option's range
    check: an unbounded limit may be meant, an infinite rate is refused by `positive` and `finite`); booleans are
    never guessed from strings."""
    base, nullable = _optional(tp)
    if value is None:
        if nullable:
            return None
        raise ValueError("a value is required")
    origin = typing.get_origin(base)
    if origin is Literal:
        allowed = typing.get_args(base)
        for a in allowed:
            if value == a or (isinstance(a, str) and not isinstance(value, bool) and str(value) == a):
                return a
        raise ValueError(f"{value!r} is not one of {list(allowed)}")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if math.isnan(number):  # a YAML `.nan` or `nan` on a command line passes every `>` check, and trains on NaN
            raise ValueError(f"expected a number, not NaN, got {value!r}")
        return number
    if base is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        (item,) = typing.get_args(base)[:1] or (Any,)
        return [coerce(item, v) if item is not Any else v for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        kt, vt = typing.get_args(base) or (Any, Any)
        return {coerce(kt, k): coerce(vt, v) for k, v in value.items()}
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return build(base, value, "")
    return value


def build(cls, values: dict[str, Any] | None, where: str, problems: list[str] | None = None):
    """`cls(**values)` with every value type-checked and `validate()` run. With `problems` given, the
    problems are appended there (prefixed by `where`) and defaults stand in for bad values; without,
    a `ConfigError` lists them all."""
    own: list[str] = []
    values = {} if values is None else values
    prefix = f"{where}." if where else ""
    if not isinstance(values, dict):
        own.append(f"{where or cls.__name__} must be a mapping of option to value, got {values!r}")
        values = {}
    hints, fields = _hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            own.append(f"{prefix}{key}: unknown option (known: {sorted(fields)})")
            continue
        nested, _ = _optional(hints[key])
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            before = len(own)
            kw[key] = build(nested, value, f"{prefix}{key}", own)
            if len(own) > before:
                kw.pop(key)
            continue
        try:
            kw[key] = coerce(hints[key], value)
        except ConfigError as exc:
            own.append(f"{prefix}{key}: {str(exc).rstrip('.')}")
        except ValueError as exc:
            own.append(f"{prefix}{key}: {exc}")
    missing = [n for n, f in fields.items() if n not in values and default_of(f) is dataclasses.MISSING]
    own += [f"{prefix}{n}: missing" for n in missing]
    obj = None
    if all(n in kw for n, f in fields.items() if default_of(f) is dataclasses.MISSING):
        obj = cls(**kw)
        check = getattr(obj, "validate", None)
        own += [f"{prefix}{p}" for p in (check() if check else [])]
    if problems is not None:
        problems.extend(own)
        return obj if obj is not None and not own else _defaults_or_none(cls)
    if own:
        raise ConfigError("; ".join(own) + ".")
    return obj


def _defaults_or_none(cls):
    try:
        return cls()
    except TypeError:
        return None


def recorded(opts) -> dict[str, Any]:
    """A stage's options as the stage guard and the job manifest record them: the dataclass's `record()` when it
    has one (a default that depends on another option resolved to the value used), else its fields as they are."""
    record = getattr(opts, "record", None)
    return record() if callable(record) else dataclasses.asdict(opts)


# ---- validate() helpers: the same wording for the same rule everywhere --------------------------------

def at_least(obj, name: str, low: float, *, allow_none: bool = False) -> list[str]:
    value = getattr(obj, name)
    if value is None and allow_none:
        return []
    return [] if value is not None and value >= low else [f"{name}: must be ≥ {low}, got {value!r}"]


def positive(obj, *names: str, allow_none: bool = False) -> list[str]:
    """A rate, scale or size: finite and > 0."""
    out = []
    for name in names:
        value = getattr(obj, name)
        if value is None and allow_none:
            continue
        if value is None or value <= 0:
            out.append(f"{name}: must be > 0, got {value!r}")
        elif value == math.inf:
            out.append(f"{name}: must be finite, got {value!r}")
    return out


def finite(obj, *names: str) -> list[str]:
    """Weights and scales that must not be infinite (an infinite weight turns every step's update into NaN)."""
    return [f"{name}: must be finite, got {getattr(obj, name)!r}" for name in names
            if getattr(obj, name) is not None and not math.isfinite(getattr(obj, name))]


def within(obj, name: str, low: float, high: float) -> list[str]:
    value = getattr(obj, name)
    return [] if low <= value <= high else [f"{name}: must be in [{low}, {high}], got {value!r}"]


# ---- click ------------------------------------------------------------------------------------------

def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def click_options(cls, rename: dict[str, str] | None = None, skip: tuple[str, ...] = ()):
    """A decorator adding one click option per field of `cls` (in field order), typed from the field,
    its help text the field's docstring. `rename` maps field → flag name (e.g. `name` → `--schema`)."""
    rename = rename or {}
    hints, docs = _hints(cls), field_docs(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = rename.get(f.name, flag_name(f.name))
            fn = click.option(flag, f.name, **_click_kwargs(hints[f.name], default_of(f), docs.get(f.name, "")))(fn)
        return fn

    return decorate


def _click_kwargs(tp, default: Any, doc: str) -> dict[str, Any]:
    base, _ = _optional(tp)
    kw: dict[str, Any] = {"help": doc, "show_default": default is not None and default != [] and default != {}}
    origin = typing.get_origin(base)
    if base is bool:
        return {**kw, "is_flag": True, "default": default, "show_default": False}
    if origin in (list, tuple):
        return {**kw, "multiple": True, "default": tuple(default or ()), "show_default": False}
    if origin is dict:
        return {**kw, "multiple": True, "default": (), "metavar": "NAME=VALUE", "show_default": False}
    if origin is Literal:
        return {**kw, "type": click.Choice([str(a) for a in typing.get_args(base)]), "default": default}
    return {**kw, "type": {int: int, float: float}.get(base, str), "default": default}


def from_click(cls, params: dict[str, Any], where: str = "command line"):
    """The dataclass from a command's parsed parameters (the fields of `cls` are taken out of `params`)."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in params:
            continue
        value = params.pop(f.name)
        base, _ = _optional(hints[f.name])
        if typing.get_origin(base) in (list, tuple):
            value = list(value)
        elif typing.get_origin(base) is dict:
            value = _pairs(f.name, value)
        values[f.name] = value
    try:
        return build(cls, values, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _pairs(name: str, items) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: write NAME=VALUE", param_hint=flag_name(name))
        k, v = item.split("=", 1)
        out[k] = v
    return out


def defaults(cls) -> dict[str, Any]:
    """{field: default} of an options dataclass."""
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}
