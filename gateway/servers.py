"""/v1/servers: the caller's organisation's hosted MCP servers, their lifecycle and their logs.

The deployer answers every call; the organisation is always the caller's (from the principal), never
taken from the path, the query or the body, so another organisation's server is simply `not_found`.
Redeploying a new version is `POST /v1/builds` with `server_id` in the body.

- `GET /v1/servers` -> `{"servers": [...]}`
- `GET /v1/servers/{server_id}` -> the server with its versions, each with its `tool_count` and its
  `tool_changes` against the version that served before it (added, removed, changed, breaking marked)
- `POST /v1/servers/{server_id}/stop`, `.../start` -> the server once the backend did it
- `POST /v1/servers/{server_id}/rollback {"version": n}` -> the server, running version n
- `DELETE /v1/servers/{server_id}` -> the server, `state: "deleted"`
- `GET /v1/servers/{server_id}/logs?tail=N` -> `{"server_id", "lines": [...]}`
- `PUT /v1/servers/{server_id}/secrets/{NAME} {"value": "..."}` -> 204; a running server whose version
  reads NAME restarts with it (same URL)
- `GET /v1/servers/{server_id}/secrets` -> names with when and by whom they were set, which ones the
  current version `needed`, and which of those are `missing`; never a value
- `DELETE /v1/servers/{server_id}/secrets/{NAME}` -> 204

A secret's value goes to the deployer only (sealed at rest there) and never comes back: not in a reply,
a problem detail, an event or a log line.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.identity import Principal
from bus_schemas.registry import (
    CONTROL_SERVER,
    DELETE_SERVER_SECRET,
    GET_SERVER,
    GET_SERVER_LOGS,
    LIST_SERVER_SECRETS,
    LIST_SERVERS,
    SET_SERVER_SECRET,
)
from bus_schemas.servers import (
    SECRET_NAME_RE,
    ControlServer,
    DeleteServerSecret,
    GetServer,
    GetServerLogs,
    ListServers,
    ListServerSecrets,
    SecretValue,
    ServerAction,
    ServerInfo,
    ServerSecretInfo,
    SetServerSecret,
    VersionNumber,
)
from gateway.bus import BusClient
from gateway.problems import Problem, ProblemField
from gateway.services import EdgeServices, provide_principal


class ServerListView(msgspec.Struct, frozen=True, kw_only=True):
    """The organisation's servers (deleted ones left out)."""

    servers: tuple[ServerInfo, ...]


class ServerLogsView(msgspec.Struct, frozen=True, kw_only=True):
    """The last lines a server's runner wrote, oldest first."""

    server_id: str
    lines: tuple[str, ...]


class RollbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Run an earlier version of the server again (same URL)."""

    version: VersionNumber
    """One of the server's versions, as listed in `versions`."""


class SecretBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A secret's value (at most 8 KiB); it is stored encrypted and never shown again."""

    value: SecretValue


class ServerSecretsView(msgspec.Struct, frozen=True, kw_only=True):
    """A server's secrets by name (never values), and which ones its current version needs."""

    server_id: str
    secrets: tuple[ServerSecretInfo, ...]
    needed: tuple[str, ...]
    """Secret names the current version's tools read."""
    missing: tuple[str, ...]
    """Needed names not set yet: the tools that use them answer a tool error until they are."""


def checked_secret_name(name: str) -> str:
    """A secret name as the deployer keeps them: upper-snake-case, up to 64 characters."""
    if not SECRET_NAME_RE.match(name):
        raise Problem(400, f"a secret name is upper-snake-case (A-Z, 0-9, _; starting with a letter; at most 64 "
                      f"characters), not {name[:80]!r}", code=FailureCode.INVALID,
                      errors=[ProblemField(field="name", source="path", message="not an upper-snake-case name")])
    return name


def checked_server_id(server_id: str) -> str:
    """A server id that can exist; anything else cannot name a server of the caller's."""
    if not SUBJECT_TOKEN_RE.match(server_id):
        raise Problem(404, f"no server {server_id[:80]!r} in this organisation", code=FailureCode.NOT_FOUND)
    return server_id


async def server_of(bus: BusClient, principal: Principal, server_id: str) -> ServerInfo:
    """A server of the caller's organisation with its versions; a 404 problem for any other."""
    request = GetServer(org_id=principal.org_id, server_id=checked_server_id(server_id))
    return (await bus.ask(GET_SERVER, request)).server


async def _control(
    bus: BusClient, principal: Principal, server_id: str, action: ServerAction, version: int | None = None
) -> ServerInfo:
    request = ControlServer(
        org_id=principal.org_id, server_id=checked_server_id(server_id), action=action, version=version,
        requested_by=principal.subject,
    )
    return (await bus.ask(CONTROL_SERVER, request)).server


class ServersController(Controller):
    """Hosted servers of the caller's organisation."""

    path = "/v1/servers"
    tags = ["servers"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/", summary="List servers")
    async def list_servers(
        self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerListView:
        """The organisation's servers, with their public URLs and states."""
        listed = await services.bus.ask(LIST_SERVERS, ListServers(org_id=principal.org_id))
        return ServerListView(servers=listed.servers)

    @get("/{server_id:str}", summary="Read a server")
    async def get_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerInfo:
        """One server of the caller's organisation with its versions; 404 for any other."""
        return await server_of(services.bus, principal, server_id)

    @post("/{server_id:str}/stop", status_code=200, summary="Stop a server")
    async def stop_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerInfo:
        """Stop the server's runner; its URL answers 404 until it is started again."""
        return await _control(services.bus, principal, server_id, "stop")

    @post("/{server_id:str}/start", status_code=200, summary="Start a server")
    async def start_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerInfo:
        """Start the server's current version again."""
        return await _control(services.bus, principal, server_id, "start")

    @post("/{server_id:str}/rollback", status_code=200, summary="Roll a server back")
    async def rollback_server(
        self,
        server_id: FromPath[str],
        data: JSONBody[RollbackBody],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> ServerInfo:
        """Run an earlier version; the URL stays the same."""
        return await _control(services.bus, principal, server_id, "rollback", data.version)

    @delete("/{server_id:str}", status_code=200, summary="Delete a server")
    async def delete_server(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerInfo:
        """Stop the server for good and retire its URL; answers the server as it ends (`deleted`)."""
        return await _control(services.bus, principal, server_id, "delete")

    @get("/{server_id:str}/logs", summary="Read a server's logs")
    async def server_logs(
        self,
        server_id: FromPath[str],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
        tail: Annotated[int, QueryParameter(ge=1, le=5000, description="How many of the last lines.")] = 200,
    ) -> ServerLogsView:
        """The last `tail` lines the server's runner wrote."""
        request = GetServerLogs(org_id=principal.org_id, server_id=checked_server_id(server_id), tail=tail)
        logs = await services.bus.ask(GET_SERVER_LOGS, request)
        return ServerLogsView(server_id=logs.server_id, lines=logs.lines)

    @put("/{server_id:str}/secrets/{name:str}", status_code=204,
         summary="Set a server secret")
    async def set_secret(
        self,
        server_id: FromPath[str],
        name: FromPath[str],
        data: JSONBody[SecretBody],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> None:
        """Store an upstream credential of the server under NAME (the tools read it as that secret); a
        running server whose version reads it restarts with it, same URL. Setting it again replaces it."""
        request = SetServerSecret(
            org_id=principal.org_id, server_id=checked_server_id(server_id), name=checked_secret_name(name),
            value=data.value, requested_by=principal.subject,
        )
        await services.bus.ask(SET_SERVER_SECRET, request)

    @get("/{server_id:str}/secrets", summary="List a server's secrets")
    async def list_secrets(
        self, server_id: FromPath[str], principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]
    ) -> ServerSecretsView:
        """The server's secret names (never values), which its current version needs, and which are missing."""
        request = ListServerSecrets(org_id=principal.org_id, server_id=checked_server_id(server_id))
        listed = await services.bus.ask(LIST_SERVER_SECRETS, request)
        return ServerSecretsView(server_id=listed.server_id, secrets=listed.secrets, needed=listed.needed,
                                 missing=listed.missing)

    @delete("/{server_id:str}/secrets/{name:str}", status_code=204, summary="Delete a server secret")
    async def delete_secret(
        self,
        server_id: FromPath[str],
        name: FromPath[str],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
    ) -> None:
        """Forget the secret; a running server whose version reads it restarts without it."""
        request = DeleteServerSecret(org_id=principal.org_id, server_id=checked_server_id(server_id),
                                     name=checked_secret_name(name), requested_by=principal.subject)
        await services.bus.ask(DELETE_SERVER_SECRET, request)
