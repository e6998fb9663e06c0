"""Sample messages generated from a type's msgspec description, so every new message is covered unasked."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import inspect as mi

# Candidates tried, in order, against a string field's pattern; the first that matches is used.
_PATTERN_CANDIDATES = ("sample_1", "sample", "a", "1", "x-1", "SAMPLE_1", "2026-11")


def sample_value(t: mi.Type, *, variant: int = 0, full: bool = True) -> Any:
    """A builtin value (dicts for Structs, with their tag) that `msgspec.convert` accepts for `t`.

    `variant` picks which alternative of each union is used, so iterating it covers every member;
    `full=False` leaves out every field that has a default.
    """
    if isinstance(t, mi.StructType):
        raw: dict[str, Any] = {}
        if t.tag_field is not None:
            raw[t.tag_field] = t.tag
        for field in t.fields:
            if field.required or full:
                raw[field.encode_name] = sample_value(field.type, variant=variant, full=full)
        return raw
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)] or list(t.types)
        return sample_value(members[variant % len(members)], variant=variant, full=full)
    if isinstance(t, mi.LiteralType):
        return t.values[variant % len(t.values)]
    if isinstance(t, mi.StrType):
        return _sample_str(t)
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.IntType):
        return max(7, t.ge or 0, (t.gt or 0) + 1)
    if isinstance(t, mi.FloatType):
        return 1.5
    if isinstance(t, mi.BytesType):
        return b"\x00sample bytes\xff"
    if isinstance(t, mi.AnyType):
        return {"type": "object"} if variant == 0 else ["any", 1, None]
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        count = max(1, t.min_length or 0)
        return [sample_value(t.item_type, variant=variant, full=full) for _ in range(count)]
    if isinstance(t, mi.TupleType):
        return [sample_value(item, variant=variant, full=full) for item in t.item_types]
    if isinstance(t, mi.DictType):
        key_type = t.key_type  # a key with a pattern (a secret name) gets a matching sample
        key = _sample_str(key_type) if isinstance(key_type, mi.StrType) and key_type.pattern else "sample-key"
        return {key: sample_value(t.value_type, variant=variant, full=full)}
    raise NotImplementedError(f"no sample for {t!r}: teach tests/bus_schemas/samples.py this type")


def _sample_str(t: mi.StrType) -> str:
    if t.pattern is None:
        return "s" * max(6, t.min_length or 0)
    for candidate in _PATTERN_CANDIDATES:
        if re.search(t.pattern, candidate):
            return candidate
    raise NotImplementedError(f"no sample string matches {t.pattern!r}: add one to _PATTERN_CANDIDATES")


def variants(message_type: type[Any]) -> int:
    """How many samples cover every union alternative reachable from `message_type`."""
    widest = 1

    def walk(t: mi.Type, seen: set[type[Any]]) -> None:
        nonlocal widest
        if isinstance(t, mi.StructType):
            if t.cls in seen:
                return
            for field in t.fields:
                walk(field.type, seen | {t.cls})
        elif isinstance(t, mi.UnionType):
            widest = max(widest, len([m for m in t.types if not isinstance(m, mi.NoneType)]))
            for member in t.types:
                walk(member, seen)
        elif isinstance(t, mi.LiteralType):
            widest = max(widest, len(t.values))
        elif isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            walk(t.item_type, seen)
        elif isinstance(t, mi.DictType):
            walk(t.value_type, seen)

    walk(mi.type_info(message_type), set())
    return widest


def samples(message_type: type[Any]) -> list[Any]:
    """Instances of `message_type`: one per union alternative, with and without defaulted fields."""
    info = mi.type_info(message_type)
    return [
        msgspec.convert(sample_value(info, variant=v, full=full), message_type)
        for v in range(variants(message_type))
        for full in (True, False)
    ]
