"""Runners under test: the sample artifact served in-process by `runner_app`, its JWKS answered on the real
bus (as the oauth NATS user) from keys made here, tokens signed here, MCP clients from the real SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import msgspec
import msgspec.structs
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.codegen.artifacts import build_artifact
from actors.runtime.bus import connect
from bus_schemas.oauth import GetJwks, Jwks, PublicJwk
from bus_schemas.plans import Artifact
from bus_schemas.registry import OAUTH_GET_JWKS
from runner_template import egress
from runner_template.app import MCP_PATH, RunnerSettings, Runtime, bind, runner_app, serve, start_tools
from runner_template.rpc import subscriptions_live
from tests.conftest import Stack
from tests.support.codegen_samples import SECRET_NAME, plan_hash, sample_plan

ISSUER = "https://bmms.example"
PUBLIC_HOST = "mcp.example.test"
SECRET_VALUE = "upstream-s3cr3t-from-the-deployer"


def resource_for(server_id: str) -> str:
    """The canonical public URL of a hosted server."""
    return f"https://{PUBLIC_HOST}/servers/{server_id}/mcp"


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})


KEY = new_key("current")
ROTATED = new_key("rotated")
STRANGER = new_key("stranger")


def token(resource: str, *, key: RSAKey = KEY, scope: str = "mcp:tools:read", **changes: Any) -> str:
    """An access token as our Authorization Server issues it, with `changes` to its claims."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "person:p1", "aud": resource, "exp": now + 900, "iat": now,
                              "jti": uuid.uuid4().hex, "scope": scope, "client_id": "client-1", "org_id": "org-1"}
    claims.update(changes)
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims, key, algorithms=["RS256"])


@dataclass
class JwksResponder:
    """Answers rpc.oauth.jwks on the real bus with the keys it holds now, counting requests."""

    keys: list[RSAKey] = field(default_factory=lambda: [KEY])
    requests: int = 0

    def reply(self) -> bytes:
        public = [PublicJwk(**{k: v for k, v in key.as_dict(private=False).items()
                               if k in ("kty", "n", "e", "kid", "alg", "use")}) for key in self.keys]
        return msgspec.json.encode(Jwks(keys=tuple(public), max_age=300))


@pytest.fixture
async def jwks(stack: Stack) -> AsyncIterator[JwksResponder]:
    responder = JwksResponder()
    nc = await connect(stack.settings("oauth"), "test-jwks")

    async def answer(msg: Any) -> None:
        msgspec.json.decode(msg.data, type=GetJwks)
        responder.requests += 1
        await msg.respond(responder.reply())

    await nc.subscribe(OAUTH_GET_JWKS.subject, queue="test-jwks", cb=answer)
    await subscriptions_live(nc)
    yield responder
    await nc.close()


def sample_artifact(upstream_url: str = "http://127.0.0.1:9") -> Artifact:
    plan = sample_plan(upstream_url)
    return build_artifact(plan, plan_hash(plan))


def settings_for(stack: Stack | None, server_id: str, **changes: Any) -> RunnerSettings:
    """A protected runner's settings on the test bus (as the runner NATS user)."""
    values: dict[str, Any] = {
        "artifact": "-", "resource": resource_for(server_id), "issuer": ISSUER, "server_id": server_id,
        "org_id": f"org-{server_id}", "allowed_origins": ("https://app.example.test",),
        "jwks_refetch_seconds": 0.0,
    }
    if stack is not None:
        values.update(nats_url=stack.nats.url, nats_user="runner", nats_password=stack.nats.passwords["runner"])
    values.update(changes)
    return RunnerSettings(**values)


@dataclass(frozen=True)
class RunningRunner:
    """A runner app served on a free loopback port."""

    base: str
    settings: RunnerSettings
    runtime: Runtime

    @property
    def url(self) -> str:
        return self.base + MCP_PATH


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on a free port in this event loop; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, sock, on_ready=started.set, stop=stop))
    await asyncio.wait_for(started.wait(), timeout=15)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@contextlib.asynccontextmanager
async def runner(settings: RunnerSettings, artifact: Artifact | None = None,
                 upstream_hosts: tuple[str, ...] | None = None, *, wait_for_bus: bool = True,
                 ) -> AsyncIterator[RunningRunner]:
    """The runner for `settings` served in this loop: its worker in a bubblewrap sandbox, the upstream secret in
    its egress policy."""
    artifact = artifact or sample_artifact()
    policy = egress.UpstreamPolicy.from_environment(
        artifact.upstream_hosts if upstream_hosts is None else upstream_hosts, artifact.secrets,
        {f"{egress.SECRET_ENV_PREFIX}{SECRET_NAME}": SECRET_VALUE, egress.ALLOW_PRIVATE_ENV: "1"},
        timeout_seconds=10,
    )
    settings = msgspec.structs.replace(settings, artifact="-")
    app = runner_app(settings, await start_tools(settings, artifact, policy))
    async with serving(app) as base:
        runtime = app.state.runtime
        if runtime.bus is not None and wait_for_bus:
            await asyncio.wait_for(runtime.bus.connected.wait(), timeout=15)
        yield RunningRunner(base=base, settings=settings, runtime=runtime)


@contextlib.asynccontextmanager
async def mcp_client(url: str, bearer: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    """The real SDK client over Streamable HTTP, sending `bearer` as its token."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        yield client


class RecordingUpstream:
    """A local upstream API that records every request's headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.queries: list[dict[str, str]] = []

    async def user(self, request: Request) -> Response:
        self.requests.append(dict(request.headers))
        self.queries.append(dict(request.query_params))
        return JSONResponse({"id": request.path_params["user_id"], "name": "Ada"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/users/{user_id:path}", self.user)])
