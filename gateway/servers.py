"""/v1/servers: the caller's organisation's hosted MCP servers, their lifecycle and their logs.

The deployer answers every call; the organisation is always the caller's (from the principal), never
taken from the path, the query or the body, so another organisation's server is simply `not_found`.
Redeploying a new version is `POST /v1/builds` with `server_id` in the body.

- `GET /v1/servers` -> `{"servers": [...]}`
- `GET /v1/servers/{server_id}` -> the server with its versions
- `POST /v1/servers/{server_id}/stop`, `.../start` -> the server once the backend did it
- `POST /v1/servers/{server_id}/rollback {"version": n}` -> the server, running version n
- `DELETE /v1/servers/{server_id}` -> the server, `state: "deleted"`
- `GET /v1/servers/{server_id}/logs?tail=N` -> `{"server_id", "lines": [...]}`
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.identity import Principal
from bus_schemas.registry import CONTROL_SERVER, GET_SERVER, GET_SERVER_LOGS, LIST_SERVERS
from bus_schemas.servers import (
    ControlServer,
    GetServer,
    GetServerLogs,
    ListServers,
    ServerAction,
    ServerInfo,
    ServerList,
    ServerLogs,
    ServerReply,
)
from gateway.auth import provide_principal
from gateway.builds import require_json
from gateway.bus import BusClient
from gateway.problems import Problem


class ServerListView(msgspec.Struct, frozen=True, kw_only=True):
    """The organisation's servers (deleted ones left out)."""

    servers: tuple[ServerInfo, ...]


class ServerLogsView(msgspec.Struct, frozen=True, kw_only=True):
    """The last lines a server's runner wrote, oldest first."""

    server_id: str
    lines: tuple[str, ...]


class RollbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Run an earlier version of the server again (same URL)."""

    version: Annotated[int, msgspec.Meta(ge=1)]
    """One of the server's versions, as listed in `versions`."""


def checked_server_id(server_id: str) -> str:
    """A server id that can exist; anything else cannot name a server of the caller's."""
    if not SUBJECT_TOKEN_RE.match(server_id):
        raise Problem(404, f"no server {server_id[:80]!r} in this organisation", code=FailureCode.NOT_FOUND)
    return server_id


async def _control(
    bus: BusClient, principal: Principal, server_id: str, action: ServerAction, version: int | None = None
) -> ServerInfo:
    request = ControlServer(
        org_id=principal.org_id, server_id=checked_server_id(server_id), action=action, version=version,
        requested_by=principal.subject,
    )
    return (await bus.ask(CONTROL_SERVER, request, ServerReply)).server


class ServersController(Controller):
    """Hosted servers of the caller's organisation."""

    path = "/v1/servers"
    tags = ["servers"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/", summary="List servers")
    async def list_servers(
        self, principal: NamedDependency[Principal], bus: NamedDependency[BusClient]
    ) -> ServerListView:
        """The organisation's servers, with their public URLs and states."""
        listed = await bus.ask(LIST_SERVERS, ListServers(org_id=principal.org_id), ServerList)
        return ServerListView(servers=listed.servers)

    @get("/{server_id:str}", summary="Read a server")
    async def get_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], bus: NamedDependency[BusClient]
    ) -> ServerInfo:
        """One server of the caller's organisation with its versions; 404 for any other."""
        request = GetServer(org_id=principal.org_id, server_id=checked_server_id(server_id))
        return (await bus.ask(GET_SERVER, request, ServerReply)).server

    @post("/{server_id:str}/stop", status_code=200, summary="Stop a server")
    async def stop_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], bus: NamedDependency[BusClient]
    ) -> ServerInfo:
        """Stop the server's runner; its URL answers 404 until it is started again."""
        return await _control(bus, principal, server_id, "stop")

    @post("/{server_id:str}/start", status_code=200, summary="Start a server")
    async def start_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], bus: NamedDependency[BusClient]
    ) -> ServerInfo:
        """Start the server's current version again."""
        return await _control(bus, principal, server_id, "start")

    @post("/{server_id:str}/rollback", status_code=200, before_request=require_json, summary="Roll a server back")
    async def rollback_server(
        self,
        server_id: FromPath[str],
        data: JSONBody[RollbackBody],
        principal: NamedDependency[Principal],
        bus: NamedDependency[BusClient],
    ) -> ServerInfo:
        """Run an earlier version; the URL stays the same."""
        return await _control(bus, principal, server_id, "rollback", data.version)

    @delete("/{server_id:str}", status_code=200, summary="Delete a server")
    async def delete_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], bus: NamedDependency[BusClient]
    ) -> ServerInfo:
        """Stop the server for good and retire its URL; answers the server as it ends (`deleted`)."""
        return await _control(bus, principal, server_id, "delete")

    @get("/{server_id:str}/logs", summary="Read a server's logs")
    async def server_logs(
        self,
        server_id: FromPath[str],
        principal: NamedDependency[Principal],
        bus: NamedDependency[BusClient],
        tail: Annotated[int, QueryParameter(ge=1, le=5000, description="How many of the last lines.")] = 200,
    ) -> ServerLogsView:
        """The last `tail` lines the server's runner wrote."""
        request = GetServerLogs(org_id=principal.org_id, server_id=checked_server_id(server_id), tail=tail)
        logs = await bus.ask(GET_SERVER_LOGS, request, ServerLogs)
        return ServerLogsView(server_id=logs.server_id, lines=logs.lines)
