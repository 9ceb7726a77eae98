"""Typed, validated plugin parameters.

Every plugin declares its parameters as a frozen dataclass named ``Params``. ``parse_params`` turns
a TOML table into that dataclass, rejecting unknown keys (with a "did you mean"), wrong types and
values that the dataclass' ``check()`` method refuses, each as one ConfigError line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected none, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported parameter type {tp!r}")


def parse_params(cls: type, table: dict[str, Any] | None, where: str) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML table, validating every key."""
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in table if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(fields) or "none"
        raise ConfigError(f"{where}: unknown key {key!r}{hint} (allowed: {known})")
    values = {}
    for name, value in table.items():
        values[name] = coerce(value, hints[name], f"{where}.{name}")
    try:
        params = cls(**values)
    except TypeError as exc:
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where}: missing required key {missing[0]!r}") from exc
        raise ConfigError(f"{where}: {exc}") from exc
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from exc
    return params


def require(condition: bool, key: str, expected: str, value: Any) -> None:
    """Used inside ``Params.check``: raises ``ValueError('key: expected ..., got ...')``."""
    if not condition:
        raise ValueError(f"{key}: expected {expected}, got {value!r}")


def as_dict(params: Any) -> dict[str, Any]:
    """Plain, JSON-friendly dict of a Params dataclass (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {f.name: plain(getattr(params, f.name)) for f in dataclasses.fields(params)}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For plugins without parameters."""
