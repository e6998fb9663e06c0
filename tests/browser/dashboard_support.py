"""What the dashboard's browser tests share: a whole platform in-process on the process backend (the actors, the
gateway, a local mailbox, a small upstream API with three operations behind an API key), a person signed in
through the emailed link in a real browser, and builds started and awaited over the JSON API.

One platform per test module (`dashboard_platform`): starting one costs seconds, and the tests of a module act as
one person in one organisation, each on its own servers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web
from nats.aio.client import Client as Nats
from playwright.async_api import Browser, Page, expect

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from actors.catalog import create_actor
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.process import ProcessBackend
from actors.runtime.bus import connect
from gateway.config import GatewayConfig
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import gateway_settings, serving
from tests.support.mailbox import Mailbox, local_smtp
from tests.support.oauth_helpers import SECRET_KEY
from tests.support.sign_in import COOKIE, fresh_ip

SCREENSHOTS_DIR = os.environ.get("BMMS_DASHBOARD_SCREENSHOTS")
"""Where the README's screenshots are written when set (e.g. `docs/screenshots`); unset: none are taken."""


def notes_document(base_url: str) -> str:
    """A small OpenAPI document: three operations on notes, each behind the `notes_key` API key header."""
    return f"""openapi: 3.0.3
info: {{title: Notes, version: "1.0"}}
servers: [{{url: "{base_url}"}}]
components:
  securitySchemes:
    notes_key: {{type: apiKey, in: header, name: X-Notes-Key}}
security: [{{notes_key: []}}]
paths:
  /notes:
    get:
      operationId: listNotes
      summary: List every note
      responses:
        "200":
          description: the notes
          content: {{application/json: {{schema: {{type: array, items: {{type: object}}}}}}}}
  /notes/{{noteId}}:
    get:
      operationId: getNote
      summary: Read one note
      parameters:
        - {{name: noteId, in: path, required: true, schema: {{type: string}}}}
      responses:
        "200": {{description: the note, content: {{application/json: {{schema: {{type: object}}}}}}}}
    delete:
      operationId: deleteNote
      summary: Delete one note
      parameters:
        - {{name: noteId, in: path, required: true, schema: {{type: string}}}}
      responses:
        "204": {{description: deleted}}
"""


@contextlib.asynccontextmanager
async def notes_upstream() -> AsyncIterator[str]:
    """The notes API on a free port (its document at /openapi.yaml); yields its base URL."""

    async def note(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["note_id"], "text": "buy milk"})

    async def notes(_: web.Request) -> web.Response:
        return web.json_response([{"id": "n1", "text": "buy milk"}])

    async def delete(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def document(request: web.Request) -> web.Response:
        return web.Response(text=notes_document(f"http://{request.host}"), content_type="application/yaml")

    app = web.Application()
    app.router.add_get("/notes", notes)
    app.router.add_get("/notes/{note_id}", note)
    app.router.add_delete("/notes/{note_id}", delete)
    app.router.add_get("/openapi.yaml", document)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp keeps the server private
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class DashboardPlatform:
    """A running platform, and the mailbox its sign-in links go to."""

    base_url: str
    http: httpx.AsyncClient
    mailbox: Mailbox
    admin: Nats
    upstream: str


@contextlib.asynccontextmanager
async def dashboard_platform(stack: Stack) -> AsyncIterator[DashboardPlatform]:
    """Every actor a build needs, the gateway and the process backend's deployer, until the block ends."""
    backend = ProcessBackend(stack.root / f"dashboard-runners-{secrets.token_hex(4)}")
    async with contextlib.AsyncExitStack() as stack_:
        upstream = await stack_.enter_async_context(notes_upstream())
        mailbox = await stack_.enter_async_context(local_smtp())
        await stack_.enter_async_context(running(create_auth_actor(AuthConfig()),
                                                 stack.settings("auth", smtp_url=mailbox.url)))
        await stack_.enter_async_context(running(create_actor("oauth"), stack.settings("oauth", secret_key=SECRET_KEY)))
        for name in ("planner", "codegen", "checker", "metering"):
            await stack_.enter_async_context(running(create_actor(name), stack.settings(
                name, planner_allow_private_fetch=True)))
        gw = await stack_.enter_async_context(serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)))
        await stack_.enter_async_context(running(create_deployer(backend), stack.settings(
            "deployer", public_url=gw.base_url, runner_nats_password=stack.nats.passwords["runner"],
            deploy_health_timeout=120.0, runner_allow_private_upstreams=True, secret_key=SECRET_KEY)))
        http = await stack_.enter_async_context(httpx.AsyncClient(base_url=gw.base_url, timeout=60))
        admin = await connect(stack.settings("admin"), "test-dashboard-admin")
        stack_.push_async_callback(admin.close)
        try:
            yield DashboardPlatform(base_url=gw.base_url, http=http, mailbox=mailbox, admin=admin, upstream=upstream)
        finally:
            await stack.forget_servers()
            for runner in await backend.running():
                await backend.remove(runner.server_id, (runner.artifact_hash,))
            await backend.close()


@dataclass(frozen=True)
class Person:
    """A person signed in through the dashboard, and their session cookie (for the same person's API calls)."""

    email: str
    session: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.session}"}


async def sign_in_in_browser(page: Page, platform: DashboardPlatform, email: str) -> Person:
    """Sign in as a person does: open the dashboard, be sent to sign in, ask for the link, open it from the
    mailbox and press its button; back on the dashboard."""
    await page.set_extra_http_headers({"X-Forwarded-For": fresh_ip()})  # sign-in links are limited per address
    await page.goto(f"{platform.base_url}/dashboard")
    await expect(page).to_have_url(f"{platform.base_url}/sign-in?next=/dashboard")
    before = platform.mailbox.count(email)
    await page.get_by_label("Email").fill(email)
    await page.get_by_role("button", name="Email me a sign-in link").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    token = await platform.mailbox.link_token(email, before)
    await page.goto(f"{platform.base_url}/v1/auth/magic-link/callback?token={token}")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{platform.base_url}/dashboard")
    cookie = next(c for c in await page.context.cookies() if c["name"] == COOKIE)
    return Person(email=email, session=cookie["value"])


async def signed_in_person(chromium: Browser, platform: DashboardPlatform, name: str) -> Person:
    """A new person signed in through the browser (in a context of their own, closed after)."""
    context = await chromium.new_context()
    try:
        page = await context.new_page()
        return await sign_in_in_browser(page, platform, f"{name}-{secrets.token_hex(4)}@example.com")
    finally:
        await context.close()


async def as_person(page: Page, platform: DashboardPlatform, person: Person) -> Page:
    """`page` with the person's session cookie, as if they had signed in in it."""
    host = urlsplit(platform.base_url).hostname or "127.0.0.1"
    await page.context.add_cookies([{"name": COOKIE, "value": person.session, "domain": host, "path": "/",
                                     "httpOnly": True, "sameSite": "Lax"}])
    return page


async def start_build(platform: DashboardPlatform, person: Person, body: dict[str, Any]) -> str:
    """A build submitted over the JSON API with the person's session; its id."""
    accepted = await platform.http.post("/v1/builds", json=body, headers=person.headers)
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["build_id"])


async def settled_build(platform: DashboardPlatform, person: Person, build_id: str) -> dict[str, Any]:
    """The build once deployed (or failed), read over the JSON API."""

    async def settled() -> dict[str, Any] | None:
        summary: dict[str, Any] = (await platform.http.get(f"/v1/builds/{build_id}", headers=person.headers)).json()
        return summary if summary["status"] in ("deployed", "failed") else None

    summary = await eventually(settled, timeout=240, interval=0.2)
    assert isinstance(summary, dict)
    return summary


async def server_json(platform: DashboardPlatform, person: Person, server_id: str) -> dict[str, Any]:
    shown = await platform.http.get(f"/v1/servers/{server_id}", headers=person.headers)
    assert shown.status_code == 200, shown.text
    server: dict[str, Any] = shown.json()
    return server


async def fits_the_width(page: Page) -> None:
    """The page scrolls only vertically: nothing is wider than the viewport."""
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the viewport"


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """A screenshot for the README, when `BMMS_DASHBOARD_SCREENSHOTS` names where to keep it."""
    if SCREENSHOTS_DIR:
        Path(SCREENSHOTS_DIR).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SCREENSHOTS_DIR) / f"{name}.png"), full_page=full_page)


def tool_spec_body(name: str, *tools: str, server_id: str | None = None) -> dict[str, Any]:
    """A tool-spec build whose tools each return their one text input."""
    spec = [{"name": tool, "description": f"Echo a text ({tool}).", "parameters": [{"name": "text", "type": "string"}],
             "implementation": {"kind": "function", "body": "return text"}} for tool in tools]
    body: dict[str, Any] = {"name": name, "source": {"kind": "tool_spec", "tools": spec}}
    if server_id:
        body["server_id"] = server_id
    return body
