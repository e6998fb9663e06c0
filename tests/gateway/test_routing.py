"""Dev routing: a server's public URL on the gateway reaches the runner the ROUTES bucket names.

The deployer is not started here: the tests write `ServerRoute` values into the real ROUTES bucket as the
`deployer` NATS user (the bucket's owner), exactly what the deployer writes. Upstreams are real HTTP
servers on free ports: a small Starlette app that echoes what it received and streams SSE, and the
runner template serving a generated artifact, driven through the gateway by the real MCP client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp import Client
from nats.aio.client import Client as Nats
from nats.js.kv import KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors.runtime.bus import connect, provision
from actors.runtime.codec import encode
from bus_schemas.registry import ROUTES
from bus_schemas.servers import ServerRoute
from ops.infra import free_port
from tests.conftest import Stack, eventually
from tests.gateway.conftest import Gateway, assert_problem, gateway_settings, serving
from tests.runner_template.conftest import serving as serving_upstream
from tests.runner_template.test_server import artifact_for
from tests.runner_template.test_server import runner as sandboxed_runner


class EchoRunner:
    """An upstream that answers like a runner would and records what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        """The SSE stream's second event waits for this."""
        self.streams_ended = 0
        """SSE streams that ended, by completing or because the client went away."""

    def _record(self, request: Request, body: bytes) -> dict[str, Any]:
        entry = {
            "method": request.method, "path": request.url.path, "query": request.url.query,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            "body": body.decode(),
        }
        self.seen.append(entry)
        return entry

    async def mcp(self, request: Request) -> Response:
        body = await request.body()
        entry = self._record(request, body)
        if request.method == "GET":
            return StreamingResponse(self._events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={
                "Access-Control-Allow-Origin": request.headers.get("origin", ""),
                "Access-Control-Allow-Methods": "POST, GET, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Mcp-Protocol-Version",
                "Access-Control-Expose-Headers": "Mcp-Session-Id, WWW-Authenticate",
            })
        if request.method == "DELETE":
            return Response(status_code=204)
        if "authorization" not in request.headers:
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers={
                "WWW-Authenticate": 'Bearer resource_metadata="http://public.test/.well-known/oauth-protected-resource/servers/x/mcp"',
            })
        return JSONResponse(entry, headers={
            "Mcp-Session-Id": "session-123",
            "Set-Cookie": "runner=1; Path=/",
            "Connection": "X-Runner-Hop",
            "X-Runner-Hop": "must not pass",
            "X-Runner": "passes",
        })

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            yield b"id: 1\ndata: first\n\n"
            await self.release.wait()
            yield b"id: 2\ndata: second\n\n"
        finally:
            self.streams_ended += 1

    async def prm(self, request: Request) -> Response:
        self._record(request, b"")
        return JSONResponse({"resource": "http://public.test/servers/x/mcp", "authorization_servers": ["x"]})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/mcp", self.mcp, methods=["GET", "POST", "DELETE", "OPTIONS"]),
            Route("/.well-known/oauth-protected-resource/mcp", self.prm),
        ])


@pytest.fixture(scope="module")
async def edge(stack: Stack) -> AsyncIterator[Gateway]:
    async with serving(gateway_settings(stack)) as gw:
        yield gw


@pytest.fixture(scope="module")
async def http(edge: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
async def routes(stack: Stack) -> AsyncIterator[KeyValue]:
    nc: Nats = await connect(stack.settings("deployer"), "test-routes-writer")
    yield await nc.jetstream().key_value(ROUTES.name)
    await nc.close()


@pytest.fixture(scope="module")
async def echo() -> AsyncIterator[tuple[EchoRunner, str]]:
    runner = EchoRunner()
    async with serving_upstream(runner.app()) as url:
        yield runner, url


async def put_route(routes: KeyValue, server_id: str, upstream: str) -> None:
    route = ServerRoute(server_id=server_id, org_id="org-routing", upstream=upstream, version=1)
    await routes.put(server_id, encode(route))


async def until_routed(http: httpx.AsyncClient, path: str, *, routed: bool = True) -> None:
    """Poll until the gateway forwards `path` (or, with routed=False, answers its own 404)."""

    async def check() -> bool:
        response = await (http.get(path) if "/.well-known/" in path else http.post(path, json={}))
        unknown = response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
        return unknown is not routed

    await eventually(check, timeout=10)


async def test_unknown_server_is_404_problem(http: httpx.AsyncClient) -> None:
    for path in ("/servers/nobody/mcp", "/.well-known/oauth-protected-resource/servers/nobody/mcp"):
        body = assert_problem(await http.post(path, json={}), 404)
        assert body["code"] == "not_found" and "nobody" in str(body["detail"])


async def test_routed_post_reaches_the_runner_with_headers_both_ways(
    http: httpx.AsyncClient, edge: Gateway, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    _, upstream = echo
    await put_route(routes, "srv-echo", upstream)
    await until_routed(http, "/servers/srv-echo/mcp")
    gateway_host = edge.base_url.removeprefix("http://")
    sent = {
        "Authorization": "Bearer token-for-the-runner",
        "Mcp-Protocol-Version": "2025-11-25",
        "Mcp-Session-Id": "session-123",
        "Origin": "http://client.test",
        "Accept": "application/json, text/event-stream",
        "Last-Event-ID": "7",
        "Cookie": "bmms_session=dashboard-secret",
        "Connection": "keep-alive, X-Client-Hop",
        "X-Client-Hop": "must not pass",
        "X-Forwarded-Host": "spoofed.test",
        "TE": "trailers",
    }
    response = await http.post("/servers/srv-echo/mcp?probe=1", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                               headers=sent)
    assert response.status_code == 200, response.text
    seen = response.json()
    headers = dict(seen["headers"])
    assert seen["method"] == "POST" and seen["path"] == "/mcp" and seen["query"] == "probe=1"
    assert json.loads(seen["body"]) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    passed = {k.lower(): v for k, v in sent.items()}
    for name in ("authorization", "mcp-protocol-version", "mcp-session-id", "origin", "accept", "last-event-id"):
        assert headers[name] == passed[name], name
    assert headers["content-type"] == "application/json"
    # The runner sees the host the client asked for, and where the request came from.
    assert headers["host"] == gateway_host
    assert headers["x-forwarded-host"] == gateway_host
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-prefix"] == "/servers/srv-echo"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    for dropped in ("cookie", "x-client-hop", "te"):
        assert dropped not in headers, dropped
    assert [k for k, _ in seen["headers"]].count("x-forwarded-host") == 1
    # The runner's answer comes back with its headers, minus cookies and hop-by-hop ones.
    assert response.headers["mcp-session-id"] == "session-123"
    assert response.headers["x-runner"] == "passes"
    assert "set-cookie" not in response.headers and "x-runner-hop" not in response.headers
    assert "x-trace-id" in response.headers


async def test_status_and_www_authenticate_pass_through(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    _, upstream = echo
    await put_route(routes, "srv-401", upstream)
    await until_routed(http, "/servers/srv-401/mcp")
    response = await http.post("/servers/srv-401/mcp", json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer resource_metadata="')
    assert response.json() == {"error": "invalid_token"}  # the runner's body, not a gateway problem


async def test_preflight_and_delete_are_forwarded(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    runner, upstream = echo
    await put_route(routes, "srv-cors", upstream)
    await until_routed(http, "/servers/srv-cors/mcp")
    preflight = await http.options("/servers/srv-cors/mcp", headers={
        "Origin": "https://claude.ai", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://claude.ai"
    assert "Mcp-Session-Id" in preflight.headers["access-control-expose-headers"]
    assert runner.seen[-1]["method"] == "OPTIONS"
    deleted = await http.delete("/servers/srv-cors/mcp", headers={"Mcp-Session-Id": "s"})
    assert deleted.status_code == 204 and runner.seen[-1]["method"] == "DELETE"


async def test_sse_events_arrive_as_the_runner_sends_them(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    runner, upstream = echo
    await put_route(routes, "srv-sse", upstream)
    await until_routed(http, "/servers/srv-sse/mcp")
    runner.release.clear()
    async with http.stream("GET", "/servers/srv-sse/mcp", headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_text()
        received = ""
        async with asyncio.timeout(10):
            while "data: first\n\n" not in received:
                received += await anext(chunks)
        # The runner has not sent its second event yet: the first one was not held back for it.
        assert "second" not in received
        runner.release.set()
        async with asyncio.timeout(10):
            async for chunk in chunks:
                received += chunk
    assert received == "id: 1\ndata: first\n\nid: 2\ndata: second\n\n"


async def test_a_client_leaving_an_sse_stream_ends_it_at_the_runner(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    runner, upstream = echo
    await put_route(routes, "srv-sse-leave", upstream)
    await until_routed(http, "/servers/srv-sse-leave/mcp")
    runner.release.clear()
    ended = runner.streams_ended
    async with (
        httpx.AsyncClient(base_url=str(http.base_url), timeout=10) as leaving,
        leaving.stream("GET", "/servers/srv-sse-leave/mcp") as response,
        asyncio.timeout(10),
    ):
        assert "first" in await anext(response.aiter_text())
    # The connection is closed; the gateway must close its upstream stream rather than hold it open.

    async def upstream_ended() -> bool:
        return runner.streams_ended > ended

    await eventually(upstream_ended, timeout=10)
    assert not runner.release.is_set()


async def test_protected_resource_metadata_path_is_routed(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    runner, upstream = echo
    await put_route(routes, "srv-prm", upstream)
    path = "/.well-known/oauth-protected-resource/servers/srv-prm/mcp"
    await until_routed(http, path)
    response = await http.get(path)
    assert response.status_code == 200
    assert response.json()["resource"] == "http://public.test/servers/x/mcp"
    assert runner.seen[-1]["path"] == "/.well-known/oauth-protected-resource/mcp"


async def test_deleted_or_purged_route_is_404_again(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    _, upstream = echo
    for server_id, remove in (("srv-gone", routes.delete), ("srv-purged", routes.purge)):
        await put_route(routes, server_id, upstream)
        await until_routed(http, f"/servers/{server_id}/mcp")
        await remove(server_id)
        await until_routed(http, f"/servers/{server_id}/mcp", routed=False)
        assert_problem(await http.post(f"/servers/{server_id}/mcp", json={}), 404)


async def test_a_route_moves_when_its_upstream_changes(
    http: httpx.AsyncClient, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    _, upstream = echo
    await put_route(routes, "srv-moving", f"http://127.0.0.1:{free_port()}")
    await until_routed(http, "/servers/srv-moving/mcp")
    assert_problem(await http.post("/servers/srv-moving/mcp", json={}), 502)
    await put_route(routes, "srv-moving", upstream)

    async def reached() -> bool:
        return (await http.post("/servers/srv-moving/mcp", json={})).status_code == 401

    await eventually(reached, timeout=10)


async def test_unreachable_runner_is_502_problem(http: httpx.AsyncClient, routes: KeyValue) -> None:
    await put_route(routes, "srv-down", f"http://127.0.0.1:{free_port()}")
    await until_routed(http, "/servers/srv-down/mcp")
    body = assert_problem(await http.post("/servers/srv-down/mcp", json={}), 502)
    assert body["code"] == "unavailable" and "srv-down" in str(body["detail"])


async def test_routes_written_before_the_gateway_starts_are_served_at_once(
    stack: Stack, routes: KeyValue, echo: tuple[EchoRunner, str]
) -> None:
    _, upstream = echo
    await put_route(routes, "srv-early", upstream)
    async with serving(gateway_settings(stack)) as gw, httpx.AsyncClient(base_url=gw.base_url) as client:
        # No polling: the lifespan waited for the bucket's current routes.
        response = await client.post("/servers/srv-early/mcp", json={})
        assert response.status_code == 401


async def test_mcp_client_lists_a_real_runners_tools_through_the_public_path(
    http: httpx.AsyncClient, edge: Gateway, routes: KeyValue
) -> None:
    # The runner's DNS-rebinding guard accepts loopback hosts; the gateway sends the client's Host on,
    # so the guard sees 127.0.0.1:<gateway port>, not the runner's own address.
    artifact = artifact_for("http://127.0.0.1:9")
    async with sandboxed_runner(artifact) as mcp_url:
        await put_route(routes, "srv-real", mcp_url.removesuffix("/mcp"))
        await until_routed(http, "/servers/srv-real/mcp")
        async with Client(f"{edge.base_url}/servers/srv-real/mcp") as client:
            listed = (await client.list_tools()).tools
            added = await client.call_tool("add", {"a": 2, "b": 3.5})
    assert [t.name for t in listed] == list(artifact.tools)
    assert added.content[0].text == "5.5"  # type: ignore[union-attr]


async def test_a_gateway_started_before_the_routes_bucket_exists_routes_once_it_is_made(
    stack: Stack, admin_nc: Nats, echo: tuple[EchoRunner, str]
) -> None:
    # As in a stack whose gateway starts before `bmms migrate` ran: the bucket is not there yet.
    js = admin_nc.jetstream()
    await js.delete_key_value(ROUTES.name)
    try:
        async with serving(gateway_settings(stack)) as late, httpx.AsyncClient(base_url=late.base_url,
                                                                               timeout=15) as http:
            assert_problem(await http.post("/servers/srv-late/mcp", json={}), 404)
            await provision(js)
            await put_route(await js.key_value(ROUTES.name), "srv-late", echo[1])
            await until_routed(http, "/servers/srv-late/mcp")
    finally:
        await provision(js)
