"""Hosted MCP servers: the deployer's registry of servers and versions, their lifecycle, their routes.

A server is what a person keeps: a stable public URL (`<servers_url>/<server_id>/mcp`, the audience of
every token issued for it) and a list of versions, each one checked build's artifact. Redeploying makes a
new version; rolling back points the server at an earlier one; the URL never changes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from bus_schemas.base import Failed, Id, Message

ServerState = Literal["deploying", "running", "stopped", "failed", "deleted"]
BackendName = Literal["docker", "swarm", "process"]
Isolation = Literal["container", "process"]
"""`container`: read-only, capability-free, non-root, limited; `process`: a child process with rlimits only."""


class ServerVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One deployed version of a server."""

    version: int
    build_id: Id
    artifact_hash: str
    created_at: str


class InstallSnippet(msgspec.Struct, frozen=True, kw_only=True):
    """How to add the server to one MCP client."""

    client: str
    """e.g. "Claude Code", "Claude Desktop", "ChatGPT", "Cursor", "VS Code"."""
    format: Literal["shell", "json", "text"]
    text: str


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A server as its organisation sees it."""

    server_id: Id
    org_id: Id
    name: str
    url: str
    """The stable public MCP endpoint (and the token audience)."""
    state: ServerState
    version: int | None
    """The version that runs (or would run when started)."""
    backend: BackendName
    isolation: Isolation
    versions: tuple[ServerVersion, ...] = ()
    detail: str | None = None
    """Why the server is `failed`, or what the backend warns about (e.g. process isolation)."""


class ServerRoute(msgspec.Struct, frozen=True, kw_only=True):
    """Where the gateway (dev routing) forwards a server's public URL: the value in the ROUTES bucket."""

    server_id: Id
    org_id: Id
    upstream: str
    """Base URL of the running runner, e.g. http://127.0.0.1:41234 (its MCP endpoint is `<upstream>/mcp`)."""
    version: int


class ServerChanged(Message, frozen=True, kw_only=True, tag="servers.changed.v1"):
    """A server's state or version changed (servers.<org>.<server>.changed)."""

    org_id: Id
    server_id: Id
    state: ServerState
    version: int | None
    url: str
    at: str
    detail: str | None = None


class ListServers(Message, frozen=True, kw_only=True, tag="servers.list.v1"):
    """The organisation's servers (deleted ones left out)."""

    org_id: Id


class ServerList(Message, frozen=True, kw_only=True, tag="servers.listed.v1"):
    servers: tuple[ServerInfo, ...]


class GetServer(Message, frozen=True, kw_only=True, tag="servers.get.v1"):
    """One server of one organisation; `not_found` for another organisation's."""

    org_id: Id
    server_id: Id


class ServerReply(Message, frozen=True, kw_only=True, tag="servers.server.v1"):
    server: ServerInfo


ServerAction = Literal["stop", "start", "delete", "rollback"]


class ControlServer(Message, frozen=True, kw_only=True, tag="servers.control.v1"):
    """Stop, start, delete, or roll back (to `version`) a server; answers once the backend did it."""

    org_id: Id
    server_id: Id
    action: ServerAction
    version: int | None = None
    """For `rollback`: the earlier version to run."""
    requested_by: str = ""


class GetServerLogs(Message, frozen=True, kw_only=True, tag="servers.logs.v1"):
    """The last lines a server's runner wrote."""

    org_id: Id
    server_id: Id
    tail: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200


class ServerLogs(Message, frozen=True, kw_only=True, tag="servers.logs_reply.v1"):
    server_id: Id
    lines: tuple[str, ...]


class ResolveServer(Message, frozen=True, kw_only=True, tag="servers.resolve.v1"):
    """Which organisation owns a server (for the Authorization Server's `resource` check and metering)."""

    server_id: Id


class ServerOwner(Message, frozen=True, kw_only=True, tag="servers.owner.v1"):
    server_id: Id
    org_id: Id
    url: str
    tool_names: tuple[str, ...] = ()


ListServersReply = ServerList | Failed
GetServerReply = ServerReply | Failed
ControlServerReply = ServerReply | Failed
GetServerLogsReply = ServerLogs | Failed
ResolveServerReply = ServerOwner | Failed


def servers_base(servers_url: str | None, issuer: str) -> str:
    """The base URL of the server URL space, without a trailing slash (default `<issuer>/servers`)."""
    return (servers_url or f"{issuer}/servers").rstrip("/")


def server_url(servers_url: str | None, issuer: str, server_id: str) -> str:
    """A server's stable public MCP URL: `<servers base>/<server_id>/mcp` (the audience of its tokens)."""
    return f"{servers_base(servers_url, issuer)}/{server_id}/mcp"
