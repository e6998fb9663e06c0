"""End to end, as a person and their MCP client see it: sign in, build a server from an OpenAPI document,
connect the real mcp SDK client through the OAuth flow and call a tool (its upstream API is a real HTTP
server here), see the usage event, redeploy and roll back under the same URL with the same client
config, delete the server and find nothing left behind. Once per backend."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import httpx
import httpx2
from aiodocker.exceptions import DockerError
from aiohttp import web
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
from nats.aio.client import Client as Nats
from pydantic import AnyUrl

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from actors.catalog import create_actor
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.base import LABEL_SERVER, Backend
from actors.deployer.backends.docker import HOST_ALIAS, DockerBackend
from actors.deployer.backends.process import ProcessBackend
from actors.deployer.backends.swarm import SwarmBackend
from actors.runtime.codec import decode
from actors.runtime.runner_images import RunnerImages, server_image_ref
from bus_schemas.builds import BuildDeployed
from bus_schemas.registry import TOOL_USAGE, USAGE
from bus_schemas.usage import ToolCalled
from gateway.config import GatewayConfig
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import gateway_settings, serving
from tests.support.builds import build_events
from tests.support.mailbox import Mailbox, local_smtp
from tests.support.oauth_browser import Browser, MemoryStorage
from tests.support.oauth_helpers import SECRET_KEY
from tests.support.sign_in import me, sign_in

REDIRECT = "http://127.0.0.1:33419/callback"


def notes_api(base_url: str, *, with_list: bool) -> str:
    """A small OpenAPI document: read one note, and (version 2) list notes."""
    listing = """
  /notes:
    get:
      operationId: listNotes
      summary: List every note
      responses:
        "200": {description: the notes, content: {application/json: {schema: {type: array, items: {type: object}}}}}
""" if with_list else ""
    return f"""openapi: 3.0.3
info: {{title: Notes, version: "1.0"}}
servers: [{{url: "{base_url}"}}]
paths:
  /notes/{{noteId}}:
    get:
      operationId: getNote
      summary: Read one note
      parameters:
        - {{name: noteId, in: path, required: true, schema: {{type: string}}}}
      responses:
        "200": {{description: the note, content: {{application/json: {{schema: {{type: object}}}}}}}}
{listing}"""


@dataclass
class Upstream:
    """The API the generated tools call, recording what reached it."""

    base_url: str
    seen: list[dict[str, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def notes_upstream(listen_host: str, host: str) -> AsyncIterator[Upstream]:
    upstream = Upstream(base_url="")

    async def note(request: web.Request) -> web.Response:
        upstream.seen.append(dict(request.headers))
        return web.json_response({"id": request.match_info["note_id"], "text": "buy milk"})

    async def notes(request: web.Request) -> web.Response:
        upstream.seen.append(dict(request.headers))
        return web.json_response([{"id": "n1", "text": "buy milk"}])

    app = web.Application()
    app.router.add_get("/notes/{note_id}", note)
    app.router.add_get("/notes", notes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, listen_host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream.base_url = f"http://{host}:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class BackendCase:
    """One backend under test: the backend, where the test's upstream API listens so its runners reach it
    (containers reach the host as host.docker.internal), and how to see what it keeps of a server."""

    backend: Backend
    listen_host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"
    docker: aiodocker.Docker | None = None

    async def leftovers(self, server_id: str, artifact_hashes: tuple[str, ...]) -> list[str]:
        """What the backend still keeps of a deleted server: processes and files, or containers, services
        and images."""
        found = [r.server_id for r in await self.backend.running() if r.server_id == server_id]
        if isinstance(self.backend, ProcessBackend):
            return found + [str(p) for p in [self.backend.root / server_id] if p.exists()]
        assert self.docker is not None
        label = json.dumps({"label": [f"{LABEL_SERVER}={server_id}"]})
        found += [c.id for c in await self.docker.containers.list(all=True, filters=label)]
        if isinstance(self.backend, SwarmBackend):
            services = await self.docker.services.list(filters={"label": f"{LABEL_SERVER}={server_id}"})
            found += [service["ID"] for service in services]
        for digest in artifact_hashes:
            with contextlib.suppress(DockerError):
                found.append((await self.docker.images.inspect(server_image_ref(digest)))["Id"])
        return found


@dataclass
class Platform:
    http: httpx.AsyncClient
    issuer: str
    admin: Nats
    backend: Backend
    email: str
    session: str
    org_id: str
    api_key: str
    upstream: Upstream
    case: BackendCase


@contextlib.asynccontextmanager
async def platform_on(stack: Stack, case: BackendCase, admin: Nats) -> AsyncIterator[Platform]:
    backend = case.backend
    async with contextlib.AsyncExitStack() as stack_:
        upstream = await stack_.enter_async_context(notes_upstream(case.listen_host, case.upstream_host))
        mailbox: Mailbox = await stack_.enter_async_context(local_smtp())
        await stack_.enter_async_context(running(create_auth_actor(AuthConfig()),
                                                 stack.settings("auth", smtp_url=mailbox.url)))
        await stack_.enter_async_context(running(create_actor("oauth"), stack.settings("oauth", secret_key=SECRET_KEY)))
        for name in ("planner", "codegen", "checker"):
            await stack_.enter_async_context(running(create_actor(name), stack.settings(
                name, planner_allow_private_fetch=True)))
        gw = await stack_.enter_async_context(serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)))
        deployer_settings = stack.settings(
            "deployer", public_url=gw.base_url, runner_nats_password=stack.nats.passwords["runner"],
            deploy_health_timeout=120.0, runner_allow_private_upstreams=True, secret_key=SECRET_KEY,
        )
        await stack_.enter_async_context(running(create_deployer(backend), deployer_settings))
        http = await stack_.enter_async_context(httpx.AsyncClient(base_url=gw.base_url, timeout=60))
        email = f"e2e-{secrets.token_hex(4)}@example.com"
        session = await sign_in(http, mailbox, email)
        cookie = {"Cookie": f"bmms_session={session}"}
        org_id = str((await me(http, cookie))["org_id"])
        key = await http.post("/v1/api-keys", json={"label": "e2e"}, headers=cookie)
        assert key.status_code == 201, key.text
        platform = Platform(http=http, issuer=gw.base_url, admin=admin, backend=backend, email=email,
                            session=session, org_id=org_id, api_key=key.json()["secret"], upstream=upstream, case=case)
        try:
            yield platform
        finally:
            await stack.forget_servers()
            for runner in await backend.running():
                await backend.remove(runner.server_id, (runner.artifact_hash,))
            await backend.close()


async def build(platform: Platform, document: str, server_id: str | None = None) -> BuildDeployed:
    body: dict[str, Any] = {"name": "Notes", "source": {"kind": "openapi", "document": document}}
    if server_id:
        body["server_id"] = server_id
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    accepted = await platform.http.post("/v1/builds", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    build_id = accepted.json()["build_id"]

    async def settled() -> dict[str, Any] | None:
        summary = (await platform.http.get(f"/v1/builds/{build_id}", headers=headers)).json()
        return summary if summary["status"] in ("deployed", "failed") else None

    summary = await eventually(settled, timeout=240, interval=0.2)
    assert isinstance(summary, dict)
    history = [r.event for r in await build_events(platform.admin.jetstream(), platform.org_id, build_id,
                                                   until=BuildDeployed, timeout=10)]
    last = history[-1]
    assert isinstance(last, BuildDeployed), [getattr(e, "message", getattr(e, "detail", "")) for e in history][-5:]
    return last


@contextlib.asynccontextmanager
async def mcp_client(platform: Platform, url: str, storage: MemoryStorage) -> AsyncIterator[Client]:
    """The real SDK client with its OAuth provider; `storage` is the client's config (tokens, registration)."""
    browser = Browser(platform.issuer, platform.email, session=platform.session)
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(client_name="e2e client", redirect_uris=[AnyUrl(REDIRECT)],
                                            grant_types=["authorization_code", "refresh_token"]),
        storage=storage, redirect_handler=browser.redirect_handler, callback_handler=browser.callback_handler,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def usage_events(admin: Nats, server_id: str) -> list[ToolCalled]:
    js = admin.jetstream()
    sub = await js.subscribe(TOOL_USAGE.subject(server=server_id), stream=USAGE.name, ordered_consumer=True)
    events: list[ToolCalled] = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await sub.next_msg(timeout=1)
            events.append(decode(ToolCalled, msg.data))
    await sub.unsubscribe()
    return events


def process_case(stack: Stack) -> BackendCase:
    """The process backend in a directory of its own."""
    return BackendCase(ProcessBackend(stack.root / f"e2e-runners-{secrets.token_hex(4)}"))


async def test_on_local_processes(stack: Stack, admin_nc: Nats) -> None:
    await hosted_server_flow(stack, admin_nc, process_case(stack))


async def test_on_docker(stack: Stack, admin_nc: Nats, docker: aiodocker.Docker, runner_images: RunnerImages) -> None:
    case = BackendCase(DockerBackend(runner_images, docker=docker, ready_timeout=120), listen_host="0.0.0.0",
                       upstream_host=HOST_ALIAS, docker=docker)
    await hosted_server_flow(stack, admin_nc, case)


async def test_on_swarm(
    stack: Stack, admin_nc: Nats, docker: aiodocker.Docker, runner_images: RunnerImages, swarm: None
) -> None:
    case = BackendCase(SwarmBackend(runner_images, docker=docker, ready_timeout=180), listen_host="0.0.0.0",
                       upstream_host=HOST_ALIAS, docker=docker)
    await hosted_server_flow(stack, admin_nc, case)


async def hosted_server_flow(stack: Stack, admin_nc: Nats, case: BackendCase) -> None:
    """Sign in, build from OpenAPI, OAuth + a tool call with the real SDK client, the usage event, redeploy
    and roll back under one URL and one client config, delete: nothing left."""
    async with platform_on(stack, case, admin_nc) as platform:
        first = await build(platform, notes_api(platform.upstream.base_url, with_list=False))
        assert first.url == f"{platform.issuer}/servers/{first.server_id}/mcp"
        assert first.backend == case.backend.name and first.version == 1
        storage = MemoryStorage()

        async with mcp_client(platform, first.url, storage) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            (get_note,) = tools
            result = await client.call_tool(get_note, {"noteId": "n7"})
            assert not result.is_error and "buy milk" in str(result.content)
        assert storage.tokens is not None and storage.client is not None
        assert all("authorization" not in {k.lower() for k in seen} for seen in platform.upstream.seen), \
            "the client's token went upstream"

        async def used() -> list[ToolCalled] | None:
            events = [e for e in await usage_events(platform.admin, first.server_id) if e.tool == get_note]
            return events or None

        (event,) = await eventually(used, timeout=30)  # type: ignore[misc]
        assert event.org_id == platform.org_id and event.status == "ok" and event.duration_ms > 0

        # Redeploy a new version: same URL, the same client config (tokens, registration) keeps working.
        second = await build(platform, notes_api(platform.upstream.base_url, with_list=True), first.server_id)
        assert (second.url, second.server_id, second.version) == (first.url, first.server_id, 2)
        tokens_before = storage.tokens
        async with mcp_client(platform, first.url, storage) as client:
            tools_v2 = sorted(t.name for t in (await client.list_tools()).tools)
            assert len(tools_v2) == 2 and get_note in tools_v2
            (list_notes,) = set(tools_v2) - {get_note}
            assert "buy milk" in str((await client.call_tool(list_notes, {})).content)
        assert storage.tokens == tokens_before, "the client had to authorize again after a redeploy"

        # Roll back to version 1: same URL, same config, the old tool list.
        headers = {"Authorization": f"Bearer {platform.api_key}"}
        rolled = await platform.http.post(f"/v1/servers/{first.server_id}/rollback", json={"version": 1},
                                          headers=headers)
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == 1 and rolled.json()["url"] == first.url
        async with mcp_client(platform, first.url, storage) as client:
            assert sorted(t.name for t in (await client.list_tools()).tools) == [get_note]
        assert storage.tokens == tokens_before

        # Delete: nothing of the server is left in the backend.
        shown = await platform.http.get(f"/v1/servers/{first.server_id}", headers=headers)
        hashes = tuple(v["artifact_hash"] for v in shown.json()["versions"])
        assert len(hashes) == 2
        deleted = await platform.http.delete(f"/v1/servers/{first.server_id}", headers=headers)
        assert deleted.status_code == 200, deleted.text
        assert await case.leftovers(first.server_id, hashes) == []
        gone = await platform.http.post(first.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert gone.status_code == 404
