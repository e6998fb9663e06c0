"""The runner's front: a generated server over Streamable HTTP, both protocol revisions, stateless.

The front is trusted code and never runs the generated module: it starts (or reaches) a worker in a sandbox
(`sandbox`, `BMMS_RUNNER_WORKER`), loads the module into it and forwards tool calls to it
(`tools.SandboxedTools`). It reads its settings once from the environment (`RunnerSettings`), builds the
upstream policy with the secret values (which stay here: the worker asks for upstream requests and the front
makes them, `egress`), and removes the credentials from `os.environ`. `runner_app` wires the pieces:

- `/mcp`: CORS for browser clients -> Host/Origin, bearer token and per-tool scope (`resource.McpEndpoint`)
  -> the SDK's Streamable HTTP handler (stateless; the 2026-07-28 per-request path and the 2025-11-25
  initialize path are dispatched by the SDK on the `MCP-Protocol-Version` header) -> the server's middleware
  (`metering.ToolCallMeter`: over-quota refusal, one usage event per call) -> `tools.SandboxedServer` -> the
  worker;
- `/.well-known/oauth-protected-resource/mcp` (and the public-path form): RFC 9728 metadata;
- `/healthz`: liveness and the tool list, no auth;
- the bus (`bus.RunnerBus`, when NATS is configured): JWKS, usage events, the QUOTAS and REVOKED watches.

The platform forwards `<origin>/servers/<id>/mcp` to this `/mcp` and
`<origin>/.well-known/oauth-protected-resource/servers/<id>/mcp` to `/.well-known/oauth-protected-resource/mcp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import uvicorn
from mcp.server import MCPServer
from mcp.server.auth.routes import cors_middleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bus_schemas.plans import Artifact
from bus_schemas.registry import REVOKED
from runner_template import egress
from runner_template.auth import AccessTokenVerifier, RevokedGrants, jwks_over_http
from runner_template.bus import RunnerBus
from runner_template.logs import AccessLog, configure_logging
from runner_template.metering import QuotaGate, ToolCallMeter, UsageOutbox
from runner_template.resource import WELL_KNOWN_PRM, McpEndpoint, Protection, transport_security
from runner_template.sandbox import Launcher, SandboxUnavailable, launcher_for
from runner_template.settings import LOOPBACK_HOSTS as LOOPBACK_HOSTS
from runner_template.settings import RUNNER_PREFIX as RUNNER_PREFIX
from runner_template.settings import RunnerSettings as RunnerSettings
from runner_template.tools import SandboxedServer, SandboxedTools, ToolsUnavailable, load_for

log = logging.getLogger("bmms.runner")

MCP_PATH = "/mcp"
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "Mcp-Protocol-Version", "Mcp-Method", "Mcp-Name",
                      "Mcp-Session-Id", "Last-Event-ID")
CORS_EXPOSE_HEADERS = ("Mcp-Session-Id", "WWW-Authenticate")
SECRET_VARIABLES = ("BMMS_RUNNER_NATS_PASSWORD",)
"""Credentials removed from the environment once read (with every `BMMS_SECRET_*`)."""


def scrub_secrets(environ: MutableMapping[str, str]) -> list[str]:
    """Remove credentials (the NATS password, every `BMMS_SECRET_*`) from `environ`; the names removed.

    Done once they are read: nothing this process starts later inherits them.
    """
    names = [k for k in environ if k in SECRET_VARIABLES or k.startswith(egress.SECRET_ENV_PREFIX)]
    for name in names:
        del environ[name]
    return names


def read_artifact(path: str) -> Artifact:
    """The artifact at `path`."""
    return msgspec.json.decode(Path(path).read_bytes(), type=Artifact)


async def start_tools(settings: RunnerSettings, artifact: Artifact, policy: egress.UpstreamPolicy | None,
                      launcher: Launcher | None = None) -> SandboxedTools:
    """The artifact's tools, loaded into a worker where `settings.worker` says (or `launcher`);
    ToolsUnavailable when it cannot be started or the module does not load."""
    launcher = launcher or launcher_for(settings.worker, settings.server_id or artifact.module_name)
    tools = SandboxedTools(launcher, load_for(artifact, settings.name), policy,
                           call_timeout=settings.tool_timeout_seconds, input_schemas=artifact.input_schemas,
                           output_schemas=artifact.output_schemas)
    await tools.start()
    log.info("tools loaded", extra={"event": "worker_ready", "tools": [t.name for t in tools.tools],
                                    "sandbox": launcher.description})
    return tools


@dataclass
class Runtime:
    """What a running runner app holds beside the MCP server (reachable as `app.state.runtime`)."""

    quota: QuotaGate
    outbox: UsageOutbox
    tools: SandboxedTools | None = None
    """The generated module's tools, in their worker (closed with the app)."""
    revoked: RevokedGrants = field(default_factory=lambda: RevokedGrants(REVOKED.ttl_seconds))
    """Grants revoked early (fed by the bus's REVOKED watch); their tokens are refused."""
    bus: RunnerBus | None = None
    protection: Protection | None = None


def runner_app(settings: RunnerSettings, tools: SandboxedTools) -> Starlette:
    """The whole runner for `settings`: the started worker's tools behind the Resource Server, with the bus."""
    runtime = Runtime(quota=QuotaGate(), outbox=UsageOutbox(settings.usage_queue_size), tools=tools)
    if settings.nats_url:
        settings.check_bus()
        runtime.bus = RunnerBus(url=settings.nats_url, user=settings.nats_user, password=settings.nats_password,
                                server_id=settings.server_id, org_id=settings.org_id, quota=runtime.quota,
                                outbox=runtime.outbox, revoked=runtime.revoked)
    else:
        log.warning("no BMMS_RUNNER_NATS_URL: usage events are not published and quotas are not enforced")
    meter = ToolCallMeter(server_id=settings.server_id, org_id=settings.org_id, quota=runtime.quota,
                          outbox=runtime.outbox if runtime.bus else None)
    server = SandboxedServer(tools, name=tools.load.server_name, middleware=[meter])
    if not settings.insecure_no_auth:
        if not (settings.resource and settings.issuer):
            raise ValueError("a protected runner needs its resource URL and the issuer")
        key_source = (runtime.bus.fetch_jwks if runtime.bus is not None
                      else jwks_over_http(settings.jwks_url or f"{settings.issuer}/oauth/jwks.json"))
        verifier = AccessTokenVerifier(issuer=settings.issuer, resource=settings.resource, key_source=key_source,
                                       refetch_interval=settings.jwks_refetch_seconds, revoked=runtime.revoked)
        runtime.protection = Protection(resource=settings.resource, issuer=settings.issuer, verifier=verifier,
                                        read_only=tools.read_only())
    else:
        log.warning("BMMS_RUNNER_INSECURE_NO_AUTH=1: serving without any token check (tests only)")
    return create_app(server, protection=runtime.protection, allowed_hosts=settings.host_allowlist(),
                      allowed_origins=settings.origin_allowlist(), server_id=settings.server_id, runtime=runtime)


def create_app(
    server: MCPServer,
    *,
    protection: Protection | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    allowed_origins: Sequence[str] = (),
    server_id: str = "",
    runtime: Runtime | None = None,
) -> Starlette:
    """The ASGI app around `server` (see the module doc); `protection` None serves /mcp without auth.

    `allowed_hosts` and `allowed_origins` configure the SDK's DNS-rebinding guard (which the SDK would
    otherwise derive from the bind address alone) and CORS.
    """
    security = transport_security(list(allowed_hosts), list(allowed_origins))
    # Built for its session manager (stateless, JSON responses); the routes around it are ours.
    server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True, json_response=True,
                               transport_security=security)
    manager = server.session_manager
    endpoint = CORSMiddleware(
        McpEndpoint(manager.handle_request, security, protection),
        allow_origins=list(allowed_origins), allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=list(CORS_ALLOW_HEADERS), expose_headers=list(CORS_EXPOSE_HEADERS), max_age=600,
    )

    async def healthz(request: Request) -> Response:
        tools = [t.name for t in await server.list_tools()]
        return JSONResponse({"status": "ok", "server_id": server_id, "tools": tools},
                            headers={"Cache-Control": "no-store"})

    routes = [Route(MCP_PATH, endpoint), Route("/healthz", healthz, methods=["GET"])]
    if protection is not None:
        document = protection.protected_resource_metadata()

        async def metadata(request: Request) -> Response:
            return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

        paths = {WELL_KNOWN_PRM + MCP_PATH, WELL_KNOWN_PRM + urlsplit(protection.resource).path}
        routes += [Route(p, cors_middleware(metadata, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"])
                   for p in sorted(paths)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            bus = runtime.bus if runtime is not None else None
            if bus is not None:
                await bus.start()
            try:
                yield
            finally:
                if bus is not None:
                    await bus.stop()
                if runtime is not None and runtime.tools is not None:
                    await runtime.tools.close()

    app = Starlette(routes=routes, middleware=[Middleware(AccessLog)], lifespan=lifespan)
    app.state.runtime = runtime
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so port 0 resolves to a known port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it every
    # response waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, sock: socket.socket, *, on_ready: Callable[[], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve `app` on `sock` until `stop` is set (or a signal, when run as the process's main)."""
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, log_config=None),
                     on_ready)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if stop is not None:
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        server.should_exit = True
    await task


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it listens (after the app's lifespan started)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_ready is not None and not self.should_exit:
            self._on_ready()


def main(environ: MutableMapping[str, str] | None = None) -> None:
    """Run one generated server as this process, until SIGINT/SIGTERM."""
    env = os.environ if environ is None else environ
    settings = RunnerSettings.from_environment(env)
    artifact = read_artifact(settings.artifact)
    policy = egress.UpstreamPolicy.from_environment(
        artifact.upstream_hosts, artifact.secrets, env, timeout_seconds=settings.upstream_timeout_seconds,
    )
    scrub_secrets(env)
    configure_logging(settings.log_level)

    async def run() -> None:
        try:
            tools = await start_tools(settings, artifact, policy)
        except (ToolsUnavailable, SandboxUnavailable) as exc:
            raise SystemExit(f"the runner cannot serve its tools: {exc}") from None
        # Bound only now: whoever waits for the port to accept must not see a runner whose module failed.
        sock = bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host

        def ready() -> None:
            print(f"runner listening on http://{shown}:{port}{MCP_PATH}", flush=True)

        await serve(runner_app(settings, tools), sock, on_ready=ready)

    asyncio.run(run())
