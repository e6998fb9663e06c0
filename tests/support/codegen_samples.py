"""A hand-built tool plan with upstream and pure-function tools, for the codegen and runner tests."""

from __future__ import annotations

import hashlib

from bus_schemas.plans import HttpCall, PlannedTool, PureFunction, SecretRequirement, ToolPlan, canonical_plan_bytes

SECRET_NAME = "EXAMPLE_TOKEN"


def sample_plan(upstream: str = "http://127.0.0.1:9", *, add_body: str = "return a + b") -> ToolPlan:
    """Two upstream tools (one with awkward wire names) and two pure functions (one named like a builtin)."""
    return ToolPlan(
        server_name="example",
        planned_from="tool_spec",
        upstream_hosts=(upstream.split("//", 1)[1].split("/", 1)[0],),
        secrets=(SecretRequirement(name=SECRET_NAME, description="API token of the example service"),),
        tools=(
            PlannedTool(
                name="get_user",
                title="Get a user",
                description='Look up one user by id.\nReturns the "user" record.',
                read_only=True,
                input_schema={
                    "type": "object",
                    "properties": {
                        "user-id": {"type": "string", "description": "The user's id"},
                        "from": {"type": "integer", "description": "A keyword as a name"},
                        "verbose": {"type": "boolean"},
                        "X-Trace": {"type": "string"},
                    },
                    "required": ["user-id"],
                },
                implementation=HttpCall(
                    method="GET", base_url=upstream, path="/users/{user-id}", path_params=("user-id",),
                    query_params=("from", "verbose"), header_params=("X-Trace",),
                    auth="bearer", auth_secret=SECRET_NAME,
                ),
            ),
            PlannedTool(
                name="create_note",
                title="Create a note",
                description="Store a note.",
                read_only=False,
                input_schema={
                    "type": "object",
                    "properties": {
                        "note": {"type": "object", "description": "The note"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "kind": {"type": "string", "enum": ["text", "todo"]},
                    },
                    "required": ["note"],
                },
                implementation=HttpCall(
                    method="POST", base_url=upstream, path="/notes", query_params=("kind",), body_param="note",
                    auth="bearer", auth_secret=SECRET_NAME,
                ),
            ),
            PlannedTool(
                name="add",
                title="Add two numbers",
                description="Add a and b.",
                read_only=True,
                input_schema={
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "number", "description": "Second"}},
                    "required": ["a", "b"],
                },
                implementation=PureFunction(body=add_body),
            ),
            PlannedTool(
                name="list",
                title="Words",
                description="Split text into words.",
                read_only=True,
                input_schema={
                    "type": "object",
                    "properties": {"text": {"type": "string"}, "upper": {"type": ["boolean", "null"]}},
                    "required": ["text"],
                },
                implementation=PureFunction(
                    body='"""Split."""\nwords = text.split()\nif upper:\n    words = [w.upper() for w in words]\n'
                         'return {"words": words, "count": len(words)}\n'
                ),
            ),
        ),
    )


def plan_hash(plan: ToolPlan) -> str:
    """The content address of a plan."""
    return hashlib.sha256(canonical_plan_bytes(plan)).hexdigest()
