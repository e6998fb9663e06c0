"""A running gateway for the tests: real nats-server and Postgres, auth (and usually planner) actors
in this event loop, and the gateway served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from litestar import Litestar
from nats.aio.client import Client

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from actors.catalog import create_actor
from actors.runtime.bus import call, connect
from actors.runtime.settings import Settings
from bus_schemas.identity import ApiKeyCreated, CreateApiKey
from bus_schemas.registry import CREATE_API_KEY
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.server import serve_gateway
from gateway.services import EdgeServices
from tests.conftest import Stack, running
from tests.support.mailbox import Mailbox


@dataclass
class Gateway:
    """A gateway served on a free port."""

    base_url: str
    app: Litestar

    @property
    def ws_url(self) -> str:
        """The base URL for WebSockets."""
        return "ws" + self.base_url.removeprefix("http")

    @property
    def services(self) -> EdgeServices:
        """The gateway's running services (feeds registry, auth cache...)."""
        services: EdgeServices = self.app.state.services
        return services


@contextlib.asynccontextmanager
async def serving(settings: Settings, config: GatewayConfig | None = None) -> AsyncIterator[Gateway]:
    """Serve a gateway on a free port in this event loop until the block ends."""
    app = create_app(settings, config)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_gateway(settings, stop, ready.set_result, app=app))
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("the gateway stopped before it was ready")
    if ready not in done:
        raise TimeoutError("the gateway was not ready within 30 s")
    try:
        yield Gateway(base_url=ready.result(), app=app)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def serving_with_client(
    settings: Settings, config: GatewayConfig | None = None, *, timeout: float = 10
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """`serving`, plus an HTTP client on the gateway's URL."""
    async with serving(settings, config) as gw, httpx.AsyncClient(base_url=gw.base_url, timeout=timeout) as http:
        yield gw, http


def gateway_settings(stack: Stack, **overrides: object) -> Settings:
    """Settings of a gateway on a free port (never a fixed one: something listens on :8000 here)."""
    return stack.settings("gateway", **{"http_port": 0, "rpc_timeout": 5.0, **overrides})


async def new_api_key(nc: Client, org_name: str) -> ApiKeyCreated:
    """An API key for a (new or existing) organisation, made the way the operator CLI makes it."""
    created = await call(nc, CREATE_API_KEY, CreateApiKey(org_name=org_name), timeout=10)
    assert isinstance(created, ApiKeyCreated), created
    return created


@pytest.fixture(scope="module")
async def module_admin(stack: Stack) -> AsyncIterator[Client]:
    nc = await connect(stack.settings("admin"), "test-gateway-admin")
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def auth_actor(stack: Stack) -> AsyncIterator[None]:
    async with running(create_actor("auth"), stack.settings("auth")):
        yield


@pytest.fixture(scope="module")
async def planner_actor(stack: Stack) -> AsyncIterator[None]:
    async with running(create_actor("planner"), stack.settings("planner")):
        yield


@pytest.fixture(scope="module")
async def gateway(stack: Stack, auth_actor: None, planner_actor: None) -> AsyncIterator[Gateway]:
    # A short grace period so the tests can watch an idle build's consumer go away.
    async with serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)) as gw:
        yield gw


@pytest.fixture(scope="module")
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
async def key(module_admin: Client, auth_actor: None) -> ApiKeyCreated:
    return await new_api_key(module_admin, "gateway-tests-org-a")


@pytest.fixture(scope="module")
async def other_key(module_admin: Client, auth_actor: None) -> ApiKeyCreated:
    return await new_api_key(module_admin, "gateway-tests-org-b")


def bearer(created: ApiKeyCreated) -> dict[str, str]:
    """The Authorization header of an API key."""
    return {"Authorization": f"Bearer {created.secret}"}


@pytest.fixture(scope="module")
async def org_gateway(stack: Stack, mailbox: Mailbox) -> AsyncIterator[Gateway]:
    """A gateway whose people sign in by mail (a real SMTP server), with its own auth actor."""
    async with (
        running(create_auth_actor(AuthConfig()), stack.settings("auth", smtp_url=mailbox.url)),
        # a long auth cache: only the gateway forgetting what it cached makes a removal hold at once
        serving(gateway_settings(stack), GatewayConfig(auth_cache_seconds=300)) as gw,
    ):
        yield gw


PLAIN = {"name": "weather", "source": {"kind": "plain_words", "text": "tell me the weather in a city"}}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "trace_id"} <= body.keys()
    assert body["trace_id"] == response.headers["x-trace-id"]
    return body
