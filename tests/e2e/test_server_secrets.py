"""End to end: a hosted server's upstream credential, given by its owner and held by the deployer alone.

An OpenAPI document with an API-key security scheme is built; its upstream (a real HTTP server here)
refuses calls without the key. The tool answers a clear missing-secret error until the owner sets the
secret over HTTP; then the same MCP client's next call reaches the upstream with the key. The value is
sealed at rest, rotates, is invisible to another organisation, and appears in no build or server event,
no reply and no log line. A build request can carry the value too (split off at the edge).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as Nats

from actors.runtime.codec import decode
from bus_schemas.builds import AnyBuildEvent, BuildDeployed, LogLine
from bus_schemas.registry import BUILD_EVENTS, BUILDS, SERVER_EVENTS, SERVERS
from tests.conftest import Stack, eventually
from tests.e2e.test_hosted_server import Platform, mcp_client, platform_on, process_case
from tests.gateway.conftest import new_api_key
from tests.support.builds import build_events
from tests.support.oauth_browser import MemoryStorage

KEY_HEADER = "X-Api-Key"
SECRET = "NOTES_KEY"
"""The secret name the planner gives the security scheme `notes_key`."""


def secured_notes_api(base_url: str) -> str:
    """Read one note; every call needs an API key in the X-Api-Key header."""
    return f"""openapi: 3.0.3
info: {{title: Secured notes, version: "1.0"}}
servers: [{{url: "{base_url}"}}]
components:
  securitySchemes:
    notes_key: {{type: apiKey, in: header, name: {KEY_HEADER}}}
security: [{{notes_key: []}}]
paths:
  /notes/{{noteId}}:
    get:
      operationId: getNote
      summary: Read one note
      parameters:
        - {{name: noteId, in: path, required: true, schema: {{type: string}}}}
      responses:
        "200": {{description: the note, content: {{application/json: {{schema: {{type: object}}}}}}}}
"""


@dataclass
class KeyedUpstream:
    """An API that answers only callers presenting an accepted key, and records the keys it was sent."""

    base_url: str = ""
    accepted: set[str] = field(default_factory=set)
    keys_seen: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def keyed_upstream() -> AsyncIterator[KeyedUpstream]:
    upstream = KeyedUpstream()

    async def note(request: web.Request) -> web.Response:
        key = request.headers.get(KEY_HEADER)
        upstream.keys_seen.append(key)
        if key not in upstream.accepted:
            return web.json_response({"error": "unknown API key"}, status=401)
        return web.json_response({"id": request.match_info["note_id"], "text": "buy milk"})

    app = web.Application()
    app.router.add_get("/notes/{note_id}", note)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream.base_url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


def new_value() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


async def deploy(platform: Platform, body: dict[str, Any]) -> tuple[BuildDeployed, list[bytes]]:
    """Submit a build and wait for it to settle: the `deployed` event and the raw bytes of every event."""
    accepted = await platform.http.post("/v1/builds", json=body, headers=bearer(platform))
    assert accepted.status_code == 202, accepted.text
    build_id = accepted.json()["build_id"]
    recorded = await build_events(platform.admin.jetstream(), platform.org_id, build_id, until=BuildDeployed,
                                  timeout=240)
    raw = [r.data for r in recorded]
    events = [r.event for r in recorded]
    last = events[-1]
    assert isinstance(last, BuildDeployed), [getattr(e, "message", getattr(e, "detail", "")) for e in events][-5:]
    return last, raw


def warnings_in(raw: list[bytes]) -> list[str]:
    events = [decode(AnyBuildEvent, data) for data in raw]
    return [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]


async def stream_bytes(admin: Nats, subject: str, stream: str) -> list[bytes]:
    """Every message stored on `subject` (a wildcard) in `stream`, raw."""
    js = admin.jetstream()
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    found: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while True:
            found.append((await sub.next_msg(timeout=1)).data)
    await sub.unsubscribe()
    return found


async def table_dump(db: asyncpg.Connection) -> str:
    """Every row of every table in the database, as text (bytea as hex)."""
    tables = await db.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'")
    rows: list[str] = []
    for t in tables:
        rows += [r[0] for r in await db.fetch(f'SELECT t::text FROM "{t[0]}"."{t[1]}" t')]
    return "\n".join(rows)


def bearer(platform: Platform, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or platform.api_key}"}


async def secrets_of(platform: Platform, server_id: str) -> dict[str, Any]:
    listed = await platform.http.get(f"/v1/servers/{server_id}/secrets", headers=bearer(platform))
    assert listed.status_code == 200, listed.text
    body: dict[str, Any] = listed.json()
    return body


async def put_secret(platform: Platform, server_id: str, value: str, key: str | None = None) -> int:
    answer = await platform.http.put(f"/v1/servers/{server_id}/secrets/{SECRET}", json={"value": value},
                                     headers=bearer(platform, key))
    assert value not in answer.text
    return answer.status_code


def assert_nowhere(values: list[str], *places: str) -> None:
    for value in values:
        for place in places:
            assert value not in place and value.encode().hex() not in place


async def test_a_server_secret_set_over_http_reaches_the_upstream_and_nowhere_else(
    stack: Stack, admin_nc: Nats, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with keyed_upstream() as upstream, platform_on(stack, process_case(stack), admin_nc) as platform:
        deployed, build_events = await deploy(platform, {
            "name": "Secured notes", "source": {"kind": "openapi", "document": secured_notes_api(upstream.base_url)}})
        server_id = deployed.server_id
        assert any(f"secret {SECRET} is not set" in w for w in warnings_in(build_events)), warnings_in(build_events)
        listed = await secrets_of(platform, server_id)
        assert (listed["secrets"], listed["needed"], listed["missing"]) == ([], [SECRET], [SECRET])

        first, second = new_value(), new_value()
        async with mcp_client(platform, deployed.url, MemoryStorage()) as client:
            (tool,) = [t.name for t in (await client.list_tools()).tools]
            refused = await client.call_tool(tool, {"noteId": "n1"})
            assert refused.is_error and f"secret {SECRET} is not configured" in str(refused.content)
            assert upstream.keys_seen == [], "a call without its secret went upstream"

            upstream.accepted = {first}
            assert await put_secret(platform, server_id, first) == 204
            answered = await client.call_tool(tool, {"noteId": "n1"})
            assert not answered.is_error and "buy milk" in str(answered.content)
            assert upstream.keys_seen == [first]

            listed = await secrets_of(platform, server_id)
            assert [s["name"] for s in listed["secrets"]] == [SECRET] and listed["missing"] == []
            assert listed["secrets"][0]["updated_by"] and listed["secrets"][0]["updated_at"]

            # Sealed at rest: the row holds a ciphertext, and no table anywhere holds the value.
            (row,) = await db.fetch("SELECT * FROM server_secrets WHERE server_id = $1", server_id)
            assert row["name"] == SECRET and len(bytes(row["sealed"])) > len(first)
            assert first.encode() not in bytes(row["sealed"])
            assert_nowhere([first], await table_dump(db))

            # Another organisation neither sees nor sets nor deletes it: its server does not exist for them.
            other = (await new_api_key(platform.admin, f"other org {secrets.token_hex(3)}")).secret
            intruder = new_value()
            for answer in (
                await platform.http.get(f"/v1/servers/{server_id}/secrets", headers=bearer(platform, other)),
                await platform.http.delete(f"/v1/servers/{server_id}/secrets/{SECRET}",
                                           headers=bearer(platform, other)),
            ):
                assert answer.status_code == 404, answer.text
            assert await put_secret(platform, server_id, intruder, key=other) == 404
            assert not (await client.call_tool(tool, {"noteId": "n2"})).is_error
            assert upstream.keys_seen[-1] == first

            # Rotation: set again, the next call carries the new value.
            upstream.accepted = {second}
            assert await put_secret(platform, server_id, second) == 204
            rotated = await client.call_tool(tool, {"noteId": "n3"})
            assert not rotated.is_error and upstream.keys_seen[-1] == second

            # Bad values are refused without being echoed (a 400 at the edge, a 422 from the deployer).
            too_long, too_many_bytes = "x" * 9000 + first, "é" * 5000 + first
            for bad in (too_long, too_many_bytes):
                answer = await platform.http.put(f"/v1/servers/{server_id}/secrets/{SECRET}", json={"value": bad},
                                                 headers=bearer(platform))
                assert answer.status_code in (400, 422) and first not in answer.text, answer.text
            bad_name = await platform.http.put(f"/v1/servers/{server_id}/secrets/lower_case", json={"value": first},
                                               headers=bearer(platform))
            assert bad_name.status_code == 400 and first not in bad_name.text

            # Deleted: the server restarts without it and the tool says so again.
            deleted = await platform.http.delete(f"/v1/servers/{server_id}/secrets/{SECRET}", headers=bearer(platform))
            assert deleted.status_code == 204, deleted.text
            assert (await secrets_of(platform, server_id))["missing"] == [SECRET]
            again = await client.call_tool(tool, {"noteId": "n4"})
            assert again.is_error and f"secret {SECRET} is not configured" in str(again.content)

        values = [first, second, intruder]
        events = [data.decode() for data in (
            await stream_bytes(platform.admin, BUILD_EVENTS.wildcard(org=platform.org_id), BUILDS.name)
            + await stream_bytes(platform.admin, SERVER_EVENTS.wildcard(org=platform.org_id), SERVERS.name)
        )]
        runner_logs = await platform.http.get(f"/v1/servers/{server_id}/logs?tail=5000", headers=bearer(platform))
        assert runner_logs.status_code == 200 and runner_logs.json()["lines"]
        logged = [caplog.text, *(r.getMessage() for r in caplog.records)]
        assert_nowhere(values, *events, *logged, *runner_logs.json()["lines"], await table_dump(db))


async def test_secrets_given_with_a_build_are_set_on_its_server_before_it_starts(
    stack: Stack, admin_nc: Nats, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = new_value()
    async with keyed_upstream() as upstream, platform_on(stack, process_case(stack), admin_nc) as platform:
        upstream.accepted = {value}
        deployed, build_events = await deploy(platform, {
            "name": "Secured notes", "source": {"kind": "openapi", "document": secured_notes_api(upstream.base_url)},
            "secrets": {SECRET: value},
        })
        assert warnings_in(build_events) == [w for w in warnings_in(build_events) if SECRET not in w]
        assert (await secrets_of(platform, deployed.server_id))["missing"] == []
        async with mcp_client(platform, deployed.url, MemoryStorage()) as client:
            (tool,) = [t.name for t in (await client.list_tools()).tools]
            answered = await client.call_tool(tool, {"noteId": "n1"})
            assert not answered.is_error and upstream.keys_seen == [value]

        # Nothing is left staged, and the value is in no event, table or log line.
        async def unstaged() -> bool:
            left: int = await db.fetchval("SELECT count(*) FROM build_secrets WHERE org_id = $1", platform.org_id)
            return left == 0

        assert await eventually(unstaged)
        events = [data.decode() for data in build_events + await stream_bytes(
            platform.admin, SERVER_EVENTS.wildcard(org=platform.org_id), SERVERS.name)]
        assert_nowhere([value], *events, caplog.text, *(r.getMessage() for r in caplog.records), await table_dump(db))
