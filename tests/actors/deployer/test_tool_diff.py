"""The tool list diff between two versions of a server: what was added, removed and changed, and which changes
break a client of the earlier version (the definition is in `actors.deployer.tool_diff`)."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.deployer.tool_diff import ServedTool, diff_tool_lists
from bus_schemas.servers import ToolChange, ToolListDiff


def schema(required: tuple[str, ...] = (), extra: bool | None = False, **properties: dict[str, Any]) -> dict[str, Any]:
    """An input schema as the planner writes one (closed unless `extra` says otherwise)."""
    result: dict[str, Any] = {"type": "object", "properties": properties, "required": list(required)}
    if extra is not None:
        result["additionalProperties"] = extra
    return result


INT: dict[str, Any] = {"type": "integer"}
TEXT: dict[str, Any] = {"type": "string"}
READ_ONLY = {"title": "Add", "readOnlyHint": True, "openWorldHint": False}
WRITES = {"title": "Add", "readOnlyHint": False, "destructiveHint": True, "openWorldHint": False}


def tool(name: str = "add", *, description: str = "Add two integers.", title: str = "Add",
         input_schema: dict[str, Any] | None = None, annotations: dict[str, Any] | None = None) -> ServedTool:
    return ServedTool(name=name, title=title, description=description,
                      input_schema=schema(("a", "b"), a=INT, b=INT) if input_schema is None else input_schema,
                      annotations=dict(READ_ONLY if annotations is None else annotations))


def change(old: ServedTool, new: ServedTool) -> ToolChange:
    diff = diff_tool_lists([old], [new])
    (changed,) = diff.changed
    assert diff.breaking == bool(changed.breaking)
    return changed


def breaks(old_schema: dict[str, Any], new_schema: dict[str, Any]) -> tuple[str, ...]:
    return change(tool(input_schema=old_schema), tool(input_schema=new_schema)).breaking


# --- tools added, removed, unchanged ---


def test_equal_lists_have_no_changes() -> None:
    assert diff_tool_lists([tool(), tool("sub")], [tool(), tool("sub")], since=3) == ToolListDiff(since=3)


def test_a_first_version_adds_every_tool_and_breaks_nothing() -> None:
    assert diff_tool_lists([], [tool("b"), tool("a")]) == ToolListDiff(added=("b", "a"))


def test_an_added_tool_is_not_breaking() -> None:
    diff = diff_tool_lists([tool()], [tool(), tool("mul")])
    assert diff.added == ("mul",) and not diff.removed and not diff.changed and not diff.breaking


def test_a_removed_tool_is_breaking() -> None:
    diff = diff_tool_lists([tool(), tool("sub")], [tool()], since=1)
    assert diff == ToolListDiff(since=1, removed=("sub",), breaking=True)


def test_a_renamed_tool_is_one_removed_and_one_added() -> None:
    diff = diff_tool_lists([tool("add")], [tool("plus")])
    assert (diff.added, diff.removed, diff.breaking) == (("plus",), ("add",), True)


# --- which parts changed ---


def test_a_description_or_title_change_is_named_and_not_breaking() -> None:
    changed = change(tool(), tool(description="Add two whole numbers.", title="Plus",
                                  annotations={**READ_ONLY, "title": "Plus"}))
    assert changed == ToolChange(name="add", parts=("title", "description"))


def test_only_the_annotations_title_changing_is_a_title_change() -> None:
    changed = change(tool(), tool(annotations={**READ_ONLY, "title": "Plus"}))
    assert changed.parts == ("title",)


def test_a_hint_change_is_an_annotations_change() -> None:
    changed = change(tool(), tool(annotations={**READ_ONLY, "idempotentHint": True}))
    assert changed == ToolChange(name="add", parts=("annotations",))


def test_schema_only_in_its_descriptions_changed_is_not_breaking() -> None:
    described = schema(("a", "b"), a={**INT, "description": "first"}, b=INT)
    assert change(tool(), tool(input_schema=described)) == ToolChange(name="add", parts=("inputSchema",))


# --- input schemas: breaking ---


def test_a_new_required_property_is_breaking() -> None:
    assert breaks(schema(("a",), a=INT), schema(("a", "c"), a=INT, c=INT)) == ("new required input c",)


def test_an_optional_property_made_required_is_breaking() -> None:
    assert breaks(schema(("a",), a=INT, b=INT), schema(("a", "b"), a=INT, b=INT)) == ("input b is now required",)


def test_a_removed_property_is_breaking_when_the_schema_refuses_unknown_ones() -> None:
    assert breaks(schema((), a=INT, b=INT), schema((), a=INT)) == (
        "input b was removed: calls that send it are refused",)


def test_a_removed_property_is_breaking_when_the_schema_says_nothing_since_the_runner_refuses_unknown_ones() -> None:
    assert breaks(schema((), extra=None, a=INT, b=INT), schema((), extra=None, a=INT)) != ()


def test_a_removed_property_is_not_breaking_when_the_schema_accepts_unknown_ones() -> None:
    assert breaks(schema((), a=INT, b=INT), schema((), extra=True, a=INT)) == ()
    assert breaks(schema((), a=INT, b=INT), schema((), extra=TEXT, a=INT)) == ()


def test_a_narrowed_type_is_breaking() -> None:
    assert breaks(schema((), a=TEXT), schema((), a=INT)) == ("input a no longer accepts string",)
    assert breaks(schema((), a={"type": "number"}), schema((), a=INT)) == ("input a no longer accepts number",)
    assert breaks(schema((), a={"type": ["string", "null"]}), schema((), a=TEXT)) == (
        "input a no longer accepts null",)
    assert breaks(schema((), a={}), schema((), a=TEXT)) == ("input a now accepts only string",)


def test_removed_enum_values_are_breaking() -> None:
    old = schema((), unit={"type": "string", "enum": ["c", "f", "k"]})
    new = schema((), unit={"type": "string", "enum": ["c", "f"]})
    assert breaks(old, new) == ('input unit no longer accepts the values "k"',)


def test_an_enum_or_const_where_there_was_none_is_breaking() -> None:
    assert breaks(schema((), unit=TEXT), schema((), unit={**TEXT, "enum": ["c", "f"]})) == (
        'input unit now accepts only the values "c", "f"',)
    assert breaks(schema((), unit=TEXT), schema((), unit={**TEXT, "const": "c"})) == (
        'input unit now accepts only the values "c"',)


def test_nested_objects_and_array_items_are_compared_too() -> None:
    old = schema((), body={"type": "object", "properties": {"name": TEXT, "age": INT}},
                 tags={"type": "array", "items": TEXT})
    new = schema((), body={"type": "object", "properties": {"name": TEXT}, "required": ["name"],
                           "additionalProperties": False},
                 tags={"type": "array", "items": INT})
    assert breaks(old, new) == ("input body.name is now required", "input body.age was removed: calls that send it "
                                "are refused", "input tags[] no longer accepts string")


def test_a_nested_property_removed_from_an_open_object_is_not_breaking() -> None:
    old = schema((), body={"type": "object", "properties": {"name": TEXT, "age": INT}})
    assert breaks(old, schema((), body={"type": "object", "properties": {"name": TEXT}})) == ()


def test_every_breaking_change_of_a_tool_is_listed() -> None:
    old = schema(("a",), a=TEXT, b=INT)
    new = schema(("a", "c"), a=INT, c=INT)
    assert set(breaks(old, new)) == {"new required input c", "input b was removed: calls that send it are refused",
                                     "input a no longer accepts string"}


# --- input schemas: not breaking ---


def test_an_optional_property_added_is_not_breaking() -> None:
    assert breaks(schema(("a",), a=INT), schema(("a",), a=INT, verbose={"type": "boolean"})) == ()


def test_a_property_made_optional_is_not_breaking() -> None:
    assert breaks(schema(("a", "b"), a=INT, b=INT), schema(("a",), a=INT, b=INT)) == ()


def test_a_widened_type_or_enum_is_not_breaking() -> None:
    assert breaks(schema((), a=INT), schema((), a={"type": "number"})) == ()
    assert breaks(schema((), a=INT), schema((), a={"type": ["integer", "string"]})) == ()
    assert breaks(schema((), a=INT), schema((), a={})) == ()
    assert breaks(schema((), u={**TEXT, "enum": ["c"]}), schema((), u={**TEXT, "enum": ["c", "f"]})) == ()
    assert breaks(schema((), u={**TEXT, "enum": ["c"]}), schema((), u=TEXT)) == ()


def test_other_keywords_change_the_schema_without_being_judged() -> None:
    changed = change(tool(input_schema=schema((), a=TEXT)), tool(input_schema=schema((), a={**TEXT, "maxLength": 3})))
    assert changed == ToolChange(name="add", parts=("inputSchema",))


# --- annotations ---


def test_a_tool_no_longer_read_only_is_breaking_and_noted_as_destructive() -> None:
    changed = change(tool(), tool(annotations=WRITES))
    assert changed.parts == ("annotations",)
    assert changed.breaking == ("no longer read-only: a client holding only the mcp:tools:read scope is now refused",)
    assert changed.notes == ("may now destroy data (destructiveHint)",)


def test_a_tool_that_may_now_destroy_data_is_noted_not_breaking() -> None:
    changed = change(tool(annotations={**WRITES, "destructiveHint": False}), tool(annotations=WRITES))
    assert (changed.breaking, changed.notes) == ((), ("may now destroy data (destructiveHint)",))


def test_a_tool_made_read_only_is_neither_breaking_nor_noted() -> None:
    changed = change(tool(annotations=WRITES), tool())
    assert changed == ToolChange(name="add", parts=("annotations",))


# --- the stored form ---


def test_a_served_tool_keeps_the_mcp_field_names_when_stored() -> None:
    stored = msgspec.json.encode(tool())
    assert b'"inputSchema"' in stored and b"input_schema" not in stored
    assert msgspec.json.decode(stored, type=ServedTool) == tool()


def test_the_diff_travels_as_json() -> None:
    diff = diff_tool_lists([tool(), tool("sub")], [tool(input_schema=schema(("a", "b", "c"), a=INT, b=INT, c=INT)),
                                                    tool("mul")], since=1)
    assert msgspec.json.decode(msgspec.json.encode(diff), type=ToolListDiff) == diff
    assert msgspec.json.decode(msgspec.json.encode(diff)) == {
        "since": 1, "added": ["mul"], "removed": ["sub"], "breaking": True,
        "changed": [{"name": "add", "parts": ["inputSchema"], "breaking": ["new required input c"], "notes": []}],
    }
