"""End to end: each deployed version of a server records the tool list its runner served, and both the `deployed`
event and GET /v1/servers/{id} say what the next version changed in it, breaking changes marked; a version
deployed after a rollback is compared with the version that was serving, not with the one numbered before."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as Nats

from bus_schemas.servers import ToolChange, ToolListDiff
from tests.conftest import Stack
from tests.e2e.test_hosted_server import platform_on, process_case
from tests.e2e.test_server_secrets import bearer, deploy, warnings_in

Param = tuple[str, str]


def spec(name: str, description: str, *params: Param, read_only: bool = True) -> dict[str, Any]:
    """A tool of a tool-spec build: a pure function returning its first parameter."""
    return {"name": name, "description": description, "read_only": read_only,
            "parameters": [{"name": n, "type": t} for n, t in params],
            "implementation": {"kind": "function", "body": f"return {params[0][0]}"}}


VERSION_1 = [
    spec("add", "Add two integers.", ("a", "integer"), ("b", "integer")),
    spec("shout", "Upper-case a text.", ("text", "string")),
    spec("echo", "Echo a text.", ("text", "string")),
    spec("half", "Half of a number.", ("x", "number")),
    spec("count", "Count to n.", ("n", "integer")),
]
VERSION_2 = [
    spec("add", "Add two integers.", ("a", "integer"), ("b", "integer"), ("c", "integer")),  # c is required
    spec("echo", "Repeat a text back.", ("text", "string")),  # a description change only
    spec("half", "Half of a number.", ("x", "integer")),  # narrowed
    spec("count", "Count to n.", ("n", "integer"), read_only=False),  # now needs the write scope
    spec("scale", "Scale a number.", ("x", "number")),  # added; shout is removed
]
CHANGES_2 = ToolListDiff(
    since=1, added=("scale",), removed=("shout",), breaking=True,
    changed=(
        ToolChange(name="add", parts=("inputSchema",), breaking=("new required input c",)),
        ToolChange(name="echo", parts=("description",)),
        ToolChange(name="half", parts=("inputSchema",), breaking=("input x no longer accepts number",)),
        ToolChange(name="count", parts=("annotations",),
                   breaking=("no longer read-only: a client holding only the mcp:tools:read scope is now refused",),
                   notes=("may now destroy data (destructiveHint)",)),
    ),
)


def body(tools: list[dict[str, Any]], server_id: str | None = None) -> dict[str, Any]:
    return {"name": "Calc", "source": {"kind": "tool_spec", "tools": tools},
            **({"server_id": server_id} if server_id else {})}


def as_json(diff: ToolListDiff) -> dict[str, Any]:
    """A diff as the HTTP API shows it."""
    return {"since": diff.since, "added": list(diff.added), "removed": list(diff.removed), "breaking": diff.breaking,
            "changed": [{"name": c.name, "parts": list(c.parts), "breaking": list(c.breaking), "notes": list(c.notes)}
                        for c in diff.changed]}


async def test_a_redeploy_shows_added_removed_and_changed_tools_with_breaking_changes_marked(
    stack: Stack, admin_nc: Nats
) -> None:
    async with platform_on(stack, process_case(stack), admin_nc) as platform:
        first, _ = await deploy(platform, body(VERSION_1))
        assert first.tool_changes == ToolListDiff(added=("add", "shout", "echo", "half", "count"))

        second, raw = await deploy(platform, body(VERSION_2, first.server_id))
        assert (second.server_id, second.version) == (first.server_id, 2)
        assert second.tool_changes == CHANGES_2
        assert any("tool shout removed" in line for line in warnings_in(raw)), warnings_in(raw)

        shown = await platform.http.get(f"/v1/servers/{first.server_id}", headers=bearer(platform))
        assert shown.status_code == 200, shown.text
        v1, v2 = shown.json()["versions"]
        assert (v1["version"], v1["tool_count"], v2["version"], v2["tool_count"]) == (1, 5, 2, 5)
        assert v1["tool_changes"] == as_json(ToolListDiff(added=("add", "shout", "echo", "half", "count")))
        assert v2["tool_changes"] == as_json(CHANGES_2)

        # Roll back to version 1, then deploy version 1's tools again: compared with version 1, which served.
        rolled = await platform.http.post(f"/v1/servers/{first.server_id}/rollback", json={"version": 1},
                                          headers=bearer(platform))
        assert rolled.status_code == 200, rolled.text
        third, raw = await deploy(platform, body(VERSION_1, first.server_id))
        assert third.version == 3 and third.tool_changes == ToolListDiff(since=1)
        assert not any("breaking" in line for line in warnings_in(raw)), warnings_in(raw)
        shown = await platform.http.get(f"/v1/servers/{first.server_id}", headers=bearer(platform))
        versions = shown.json()["versions"]
        assert [v["tool_changes"]["since"] for v in versions] == [None, 1, 1]
        assert [v["tool_changes"]["breaking"] for v in versions] == [False, True, False]

