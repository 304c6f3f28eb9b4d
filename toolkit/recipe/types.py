"""Type checking of recipe values: each value converted to its annotated type, or one error
line naming the key, where it came from (file and line, or the command line) and what was expected."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Literal, Union

from toolkit.errors import SECRET_NAME, ToolkitError

COMMAND_LINE = "the command line"
SECRET_KEYS = {("hub", "token")}  # training.hub_token is refused outright (arguments.py)


class OriginMap:
    """Where each key came from: `file, line N` or `the command line`."""

    def __init__(self, path: str, lines: dict[tuple, int]):
        self.path, self.lines, self.overridden = path, lines, set()

    def __call__(self, keys: tuple) -> str:
        n = len(keys)
        if any(o[:n] == keys or keys[: len(o)] == o for o in self.overridden):
            return COMMAND_LINE
        for n in range(len(keys), 0, -1):
            if tuple(keys[:n]) in self.lines:
                return f"{self.path}, line {self.lines[tuple(keys[:n])]}"
        return self.path


def dotted(keys: tuple) -> str:
    """('data', 'sources', 0, 'files') -> 'data.sources[0].files'"""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


def unknown_key(keys: tuple, valid: list[str], origins: OriginMap):
    close = difflib.get_close_matches(str(keys[-1]), valid, n=1, cutoff=0.5)
    hint = f"did you mean '{dotted(keys[:-1] + (close[0],))}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    raise ToolkitError(f"{origins(keys)}: unknown key '{dotted(keys)}'; {hint}")


def build_dataclass(cls, value, keys: tuple, origins: OriginMap):
    if not isinstance(value, dict):
        raise ToolkitError(f"{origins(keys)}: '{dotted(keys)}' must be a mapping of keys, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, item in value.items():
        if key not in names:
            unknown_key(keys + (key,), names, origins)
        kwargs[key] = check_value(item, hints[key], keys + (key,), origins)
    return cls(**kwargs)


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is Any:
        return "any value"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    pass


def check_value(value, annotation, keys: tuple, origins: OriginMap):
    """Return `value` converted to `annotation`, or raise a ToolkitError naming the expected type."""
    try:
        return _convert(value, annotation, keys, origins)
    except _Mismatch:
        name = dotted(keys)
        expected = _describe(annotation)
        secret = tuple(keys) in SECRET_KEYS or SECRET_NAME.search(str(keys[-1]))
        got = "a value that is not shown (a secret)" if secret else f"{value!r} ({type(value).__name__})"
        choices = _choices(annotation)
        if choices:
            shown = ", ".join(map(repr, choices[:8])) + (", ..." if len(choices) > 8 else "")
            expected = f"one of {shown}" + (" or null" if type(None) in typing.get_args(annotation) else "")
        close = ""
        if isinstance(value, str) and choices:
            match = [c for c in choices if c.startswith(value)] or difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            close = f"; did you mean {match[0]!r}?" if match else ""
        raise ToolkitError(f"{origins(keys)}: '{name}' must be {expected}, got {got}{close}") from None


def _choices(annotation) -> list[str]:
    """The allowed strings of an enum or Literal annotation (possibly inside a Union)."""
    out = []
    for a in typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,):
        if isinstance(a, type) and issubclass(a, enum.Enum):
            out += [str(m.value) for m in a]
        elif typing.get_origin(a) is Literal:
            out += [str(c) for c in typing.get_args(a)]
    return out


def _convert(value, annotation, keys, origins):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if value is False and "no" in _choices(annotation):
        return "no"  # YAML 1.1 reads an unquoted `no` as false
    if origin in (Union, types.UnionType):
        # An enum among the options means the string must name one of its members.
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str) and not any(value in {str(m.value) for m in e} for e in enums):
            raise _Mismatch
        for option in sorted(args, key=lambda a: a is str):  # try str last: "1e-3" is a number
            try:
                return _convert(value, option, keys, origins)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if value in {m.value for m in annotation}:
            return value
        raise _Mismatch
    if origin in (list, tuple) or annotation is list:
        if not isinstance(value, list):
            raise _Mismatch
        item_type = args[0] if args else Any
        return [check_value(v, item_type, keys + (i,), origins) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _Mismatch
        return build_dataclass(annotation, value, keys, origins)
    return value
