"""Settings read once per process from the environment: a msgspec Struct whose every field `name` is the
variable `<PREFIX><NAME>` (upper case; empty counts as unset), converted by msgspec (`"30"` -> 30.0,
`"1"`/`"true"` -> True, a comma-separated list -> a tuple). The platform's processes
(`actors.runtime.settings.Settings`, `BMMS_*`) and the runner (`runner_template.app.RunnerSettings`,
`BMMS_RUNNER_*`) are read by this one piece of code, and whoever starts a runner writes its environment with
`to_environment`, the inverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

S = TypeVar("S", bound=msgspec.Struct)


def variable(prefix: str, field: str) -> str:
    """The environment variable of a settings field."""
    return f"{prefix}{field.upper()}"


def from_environment(kind: type[S], prefix: str, environ: Mapping[str, str]) -> S:
    """The settings of `kind` from the `<prefix>*` variables in `environ`; ValueError naming the variable
    that is missing or malformed."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    raw: dict[str, Any] = {}
    for field in info.fields:
        value = environ.get(variable(prefix, field.encode_name))
        if not value:
            continue  # unset and set-but-empty alike leave the field at its default
        raw[field.encode_name] = _split(value) if _is_sequence(field.type) else value
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad {_variable_in(prefix, str(exc))} setting: {exc}") from None


def to_environment(settings: msgspec.Struct, prefix: str) -> dict[str, str]:
    """The `<prefix>*` variables that `from_environment` reads back as `settings` (fields left at their
    default, and None values, are not written)."""
    info = msgspec.inspect.type_info(type(settings))
    assert isinstance(info, msgspec.inspect.StructType)
    env: dict[str, str] = {}
    for field in info.fields:
        value = getattr(settings, field.name)
        if value is None or (not field.required and value == field.default):
            continue
        env[variable(prefix, field.encode_name)] = _text(value)
    return env


def _is_sequence(kind: msgspec.inspect.Type) -> bool:
    if isinstance(kind, msgspec.inspect.UnionType):
        return any(_is_sequence(t) for t in kind.types)
    return isinstance(kind, msgspec.inspect.VarTupleType | msgspec.inspect.ListType)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


def _variable_in(prefix: str, message: str) -> str:
    """The variable msgspec's message is about: "... - at `$.x`" (a bad value) or "missing required field
    `x`" (no value); else the prefix's family (`BMMS_*`)."""
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        return variable(prefix, missing.group(1))
    at = re.search(r"at `\$\.([A-Za-z0-9_]+)", message)
    return variable(prefix, at.group(1)) if at else f"{prefix}*"
