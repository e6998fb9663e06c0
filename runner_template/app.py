"""Serving a generated server over Streamable HTTP (stateless, so replicas need no sticky routing).

The runner reads its settings once from the environment: the artifact the deployer wrote (`Artifact` JSON,
the generated module with its tool list, secret names and upstream hosts), where to listen, and the
secret values as `BMMS_SECRET_<NAME>`. The Resource Server wiring (token verifier, protected resource
metadata, CORS, usage events) plugs in through `create_server(..., token_verifier=, auth=)`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvicorn
from mcp.server import MCPServer
from starlette.applications import Starlette

from bus_schemas.plans import Artifact
from runner_template import upstream
from runner_template.server import create_server, load_module

MCP_PATH = "/mcp"


@dataclass(frozen=True)
class RunnerSettings:
    """A runner's settings, each `BMMS_RUNNER_<FIELD>` in the environment."""

    artifact: str
    """Path of the artifact (Artifact JSON) to serve."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 0
    """Port; 0 picks a free one (the ready line says which)."""
    name: str | None = None
    """The server's name in MCP; defaults to the artifact's module name."""
    upstream_timeout_seconds: float = 30.0
    """Timeout of each upstream call."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> RunnerSettings:
        """Read the settings from `BMMS_RUNNER_*` variables."""
        artifact = environ.get("BMMS_RUNNER_ARTIFACT")
        if not artifact:
            raise SystemExit("BMMS_RUNNER_ARTIFACT must name the artifact to serve")
        return cls(
            artifact=artifact,
            host=environ.get("BMMS_RUNNER_HOST", "127.0.0.1"),
            port=int(environ.get("BMMS_RUNNER_PORT", "0")),
            name=environ.get("BMMS_RUNNER_NAME") or None,
            upstream_timeout_seconds=float(environ.get("BMMS_RUNNER_UPSTREAM_TIMEOUT_SECONDS", "30")),
        )


def read_artifact(path: str) -> Artifact:
    """The artifact at `path`."""
    return msgspec.json.decode(Path(path).read_bytes(), type=Artifact)


def server_for_artifact(artifact: Artifact, *, name: str | None = None) -> MCPServer:
    """Import the artifact's module and serve its tools (exactly the ones the artifact lists)."""
    module = load_module(artifact.module_name, artifact.module_source)
    return create_server(module, name=name or artifact.module_name, expected_tools=artifact.tools)


def create_app(server: MCPServer, *, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app: the MCP endpoint at /mcp, stateless, JSON responses."""
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so port 0 resolves to a known port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, sock: socket.socket, *, on_ready: Callable[[], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve `app` on `sock` until `stop` is set (or a signal, when run as the process's main)."""
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"), on_ready)
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


def main(environ: Mapping[str, str] | None = None) -> None:
    """Run one generated server as this process, until SIGINT/SIGTERM."""
    env = os.environ if environ is None else environ
    settings = RunnerSettings.from_environment(env)
    artifact = read_artifact(settings.artifact)
    upstream.configure(upstream.UpstreamPolicy.from_environment(
        artifact.upstream_hosts, artifact.secrets, env, timeout_seconds=settings.upstream_timeout_seconds,
    ))
    app = create_app(server_for_artifact(artifact, name=settings.name), host=settings.host)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        print(f"runner listening on http://{shown}:{port}{MCP_PATH}", flush=True)

    asyncio.run(serve(app, sock, on_ready=ready))
