"""What changed in a server's tool list from one version to the next, and whether it breaks its clients.

Each version records the tool list its runner served in the deploy's health check (`ServedTool`: name, title,
description, inputSchema, annotations, exactly what an MCP client's `tools/list` gets), so the comparison is of
what clients saw, not of what a plan meant them to see. `diff_tool_lists(old, new)` is pure: tools are matched
by name; a tool is `changed` when its title, description, inputSchema or annotations differ.

Breaking means a call that worked against the old version may fail against the new one:
- a tool removed;
- an input property newly required (a new required property, or an optional one made required);
- an input property removed where the new schema refuses properties it does not name (the runner refuses
  unknown arguments at the top level unless the schema says `additionalProperties: true` or gives a schema;
  in a nested object only an explicit `additionalProperties: false` refuses them);
- a property's type narrowed (a type it accepted is gone, e.g. string -> integer or number -> integer, or
  a type given where any was accepted);
- a property's allowed values narrowed (enum values removed, or an enum/const given where there was none);
- a tool no longer read-only (`readOnlyHint` true -> not): a client holding only `mcp:tools:read` is now
  refused.
These apply to nested objects (`body.name`) and array items (`tags[]`) too. Noted, not breaking: a tool that may
now destroy data (its effective `destructiveHint` turns true). Not breaking: a tool added, an optional property
added, a property made optional, a type or enum widened, a title or description changed. Other schema keywords
(format, pattern, bounds, anyOf, $ref...) show as an `inputSchema` change without being judged.

No maintained Python library classifies JSON Schema changes as breaking for inputs (the ones found are Rust
or npm tools, or general deep-diff libraries that know nothing of `required` or enums), so this is a focused
comparison of properties, required, type and enum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from bus_schemas.servers import ToolChange, ToolListDiff, ToolPart


class ServedTool(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a server's `tools/list`: the parts a client (and its model) reads, by their MCP names."""

    name: str
    title: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict, name="inputSchema")
    annotations: dict[str, Any] = msgspec.field(default_factory=dict)
    """MCP tool annotations (`readOnlyHint`, `destructiveHint`, ...), as served."""


def diff_tool_lists(old: Sequence[ServedTool], new: Sequence[ServedTool], since: int | None = None) -> ToolListDiff:
    """What changed from `old` to `new` (the tool lists of version `since` and of the next one)."""
    before = {t.name: t for t in old}
    after = {t.name: t for t in new}
    removed = tuple(t.name for t in old if t.name not in after)
    changed = tuple(c for t in new if t.name in before and (c := tool_change(before[t.name], t)) is not None)
    return ToolListDiff(
        since=since, added=tuple(t.name for t in new if t.name not in before), removed=removed, changed=changed,
        breaking=bool(removed) or any(c.breaking for c in changed),
    )


def tool_change(old: ServedTool, new: ServedTool) -> ToolChange | None:
    """How one tool changed between two versions; None when it did not."""
    parts: list[ToolPart] = []
    if (old.title, old.annotations.get("title")) != (new.title, new.annotations.get("title")):
        parts.append("title")
    if old.description != new.description:
        parts.append("description")
    if old.input_schema != new.input_schema:
        parts.append("inputSchema")
    if _hints(old.annotations) != _hints(new.annotations):
        parts.append("annotations")
    if not parts:
        return None
    breaking = schema_breaks(old.input_schema, new.input_schema, "", extra_allowed_by_default=False)
    notes: list[str] = []
    if _read_only(old.annotations) and not _read_only(new.annotations):
        breaking.append("no longer read-only: a client holding only the mcp:tools:read scope is now refused")
    if not _destructive(old.annotations) and _destructive(new.annotations):
        notes.append("may now destroy data (destructiveHint)")
    return ToolChange(name=new.name, parts=tuple(parts), breaking=tuple(breaking), notes=tuple(notes))


def _hints(annotations: Mapping[str, Any]) -> dict[str, Any]:
    """The annotations but their display title (a title change is the `title` part)."""
    return {k: v for k, v in annotations.items() if k != "title"}


def _read_only(annotations: Mapping[str, Any]) -> bool:
    return annotations.get("readOnlyHint") is True


def _destructive(annotations: Mapping[str, Any]) -> bool:
    """MCP's reading of the hints: a tool that is not read-only is destructive unless it says it is not."""
    return not _read_only(annotations) and annotations.get("destructiveHint") is not False


def schema_breaks(old: Any, new: Any, where: str, *, extra_allowed_by_default: bool = True) -> list[str]:
    """Why a value valid against schema `old` (at `where`) may be refused by schema `new`; empty: it may not."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return []  # a boolean schema or a malformed one: not judged
    reasons = _type_narrowed(old, new, where) + _values_narrowed(old, new, where)
    if "properties" in old or "properties" in new or "required" in new:
        reasons += _object_breaks(old, new, where, extra_allowed_by_default)
    if "items" in old and "items" in new:
        reasons += schema_breaks(old["items"], new["items"], f"{where}[]")
    return reasons


def _label(where: str) -> str:
    return f"input {where}" if where else "the input"


def _types(schema: Mapping[str, Any]) -> set[str] | None:
    """The JSON types a schema accepts; None for any."""
    kind = schema.get("type")
    if kind is None:
        return None
    return {kind} if isinstance(kind, str) else {str(k) for k in kind}


def _type_narrowed(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> list[str]:
    before, after = _types(old), _types(new)
    if after is None:
        return []
    if before is None:
        return [f"{_label(where)} now accepts only {' or '.join(sorted(after))}"]
    lost = sorted(t for t in before if t not in after and not (t == "integer" and "number" in after))
    return [f"{_label(where)} no longer accepts {' or '.join(lost)}"] if lost else []


def _allowed_values(schema: Mapping[str, Any]) -> list[Any] | None:
    """The values a schema lists (`enum`, or `const` as one); None when it lists none."""
    if "const" in schema:
        return [schema["const"]]
    values = schema.get("enum")
    return list(values) if isinstance(values, list) else None


def _values_narrowed(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> list[str]:
    before, after = _allowed_values(old), _allowed_values(new)
    if after is None:
        return []
    if before is None:
        return [f"{_label(where)} now accepts only the values {_listed(after)}"]
    lost = [v for v in before if v not in after]
    return [f"{_label(where)} no longer accepts the values {_listed(lost)}"] if lost else []


def _listed(values: list[Any]) -> str:
    shown = ", ".join(msgspec.json.encode(v).decode() for v in values[:10])
    return shown + (f" and {len(values) - 10} more" if len(values) > 10 else "")


def _allows_extra(schema: Mapping[str, Any], by_default: bool) -> bool:
    """Whether an object schema accepts properties it does not name."""
    extra = schema.get("additionalProperties")
    return by_default if extra is None else extra is not False


def _object_breaks(old: Mapping[str, Any], new: Mapping[str, Any], where: str, extra_by_default: bool) -> list[str]:
    before, after = _properties(old), _properties(new)
    required_before, required_after = _required(old), _required(new)
    reasons: list[str] = []
    for name in sorted(required_after - required_before):
        path = f"{where}.{name}" if where else name
        reasons.append(f"input {path} is now required" if name in before else f"new required input {path}")
    if not _allows_extra(new, extra_by_default):
        for name in sorted(set(before) - set(after)):
            reasons.append(f"input {f'{where}.{name}' if where else name} was removed: calls that send it are "
                           "refused")
    for name in sorted(set(before) & set(after)):
        reasons += schema_breaks(before[name], after[name], f"{where}.{name}" if where else name)
    return reasons


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    found = schema.get("properties")
    return dict(found) if isinstance(found, Mapping) else {}


def _required(schema: Mapping[str, Any]) -> set[str]:
    found = schema.get("required")
    return {str(n) for n in found} if isinstance(found, list) else set()


def breaking_summary(diff: ToolListDiff) -> str:
    """One line for the build log naming what breaks clients of the earlier version."""
    found = [f"tool {name} removed" for name in diff.removed]
    found += [f"{c.name}: {'; '.join(c.breaking)}" for c in diff.changed if c.breaking]
    against = f"version {diff.since}" if diff.since is not None else "the earlier version"
    return f"breaking changes for clients of {against}: " + " | ".join(found)
