"""Hosted MCP servers: the deployer's registry of servers and versions, their lifecycle, their routes.

A server is what a person keeps: a stable public URL (`<servers_url>/<server_id>/mcp`, the audience of
every token issued for it) and a list of versions, each one checked build's artifact. Redeploying makes a
new version; rolling back points the server at an earlier one; the URL never changes.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from bus_schemas.base import Failed, Id, Message
from bus_schemas.plans import SecretName

ServerState = Literal["deploying", "running", "stopped", "failed", "deleted"]
BackendName = Literal["docker", "swarm", "process"]
Isolation = Literal["container", "sandbox", "process"]
"""Where the generated code runs. `container`: a container with no network, read-only, capability-free,
non-root, limited; `sandbox`: a bubblewrap sandbox (own user, no network, read-only root, limited);
`process`: a plain child process (development machines only, `BMMS_ALLOW_UNSANDBOXED_CODE`)."""


ToolPart = Literal["title", "description", "inputSchema", "annotations"]
"""A part of a `tools/list` entry that can change between versions (the name is the tool's identity)."""


class ToolChange(msgspec.Struct, frozen=True, kw_only=True):
    """A tool both versions serve, and what about it changed (`actors.deployer.tool_diff` says what breaks)."""

    name: str
    parts: tuple[ToolPart, ...]
    breaking: tuple[str, ...] = ()
    """Why a call that worked against the earlier version may now fail, one sentence each; empty: none."""
    notes: tuple[str, ...] = ()
    """Changes that fail no call but deserve a look, e.g. the tool may now destroy data."""


class ToolListDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What changed in a server's `tools/list` from the version that served before to this one."""

    since: int | None = None
    """The version compared with; None for a server's first version (every tool is `added`)."""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    """Tools no longer served: always breaking."""
    changed: tuple[ToolChange, ...] = ()
    breaking: bool = False
    """Whether a client of the earlier version may now fail: a tool removed or a change with `breaking` reasons."""


class ServerVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One deployed version of a server."""

    version: int
    build_id: Id
    artifact_hash: str
    created_at: str
    tool_count: int | None = None
    """How many tools the version serves."""
    tool_changes: ToolListDiff | None = None
    """Its tool list against the version that served before it was deployed; None while unknown (it never
    answered a health check, or ran before tool lists were recorded)."""


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

VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
"""A server version as a person may name one: 1 and up, within the registry's integer column."""


class ControlServer(Message, frozen=True, kw_only=True, tag="servers.control.v1"):
    """Stop, start, delete, or roll back (to `version`) a server; answers once the backend did it."""

    org_id: Id
    server_id: Id
    action: ServerAction
    version: VersionNumber | None = None
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


# --- server secrets: upstream credentials, held by the deployer, sealed at rest ---

SECRET_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
"""What a secret name looks like (`bus_schemas.plans.SecretName`), for checks outside a message."""
MAX_SECRET_BYTES = 8192
"""The largest secret value (UTF-8 bytes) the deployer keeps."""
MAX_SECRETS_PER_REQUEST = 32
"""The most secrets one build request may carry."""
SecretValue = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SECRET_BYTES)]
"""An upstream credential's value (at most MAX_SECRET_BYTES bytes of UTF-8, checked by the deployer)."""


class SetServerSecret(Message, frozen=True, kw_only=True, tag="servers.secrets.set.v1"):
    """Store (or replace) one secret of a server; a running server that needs it restarts with it.

    The only messages that carry a value are this one and StageBuildSecrets, as requests on `rpc.`
    subjects (never stored in a stream); no reply, event or log line holds one."""

    org_id: Id
    server_id: Id
    name: SecretName
    value: SecretValue
    requested_by: str = ""

    def __repr__(self) -> str:  # a logged request must not show the value
        return (f"SetServerSecret(org_id={self.org_id!r}, server_id={self.server_id!r}, name={self.name!r}, "
                "value=<redacted>)")


class ServerSecretSet(Message, frozen=True, kw_only=True, tag="servers.secrets.set_reply.v1"):
    """The secret is stored; `restarted` says whether the server's runner was restarted with it."""

    server_id: Id
    name: SecretName
    updated_at: str
    restarted: bool


class ListServerSecrets(Message, frozen=True, kw_only=True, tag="servers.secrets.list.v1"):
    """Which secrets a server has, which its current version needs, and which of those are missing."""

    org_id: Id
    server_id: Id


class ServerSecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One stored secret, without its value."""

    name: SecretName
    updated_at: str
    updated_by: str


class ServerSecrets(Message, frozen=True, kw_only=True, tag="servers.secrets.listed.v1"):
    """A server's secrets by name (never values)."""

    server_id: Id
    secrets: tuple[ServerSecretInfo, ...]
    needed: tuple[str, ...]
    """Secret names the running (or current) version reads."""
    missing: tuple[str, ...]
    """Of `needed`, those not set: tools that use them answer a tool error until they are."""


class DeleteServerSecret(Message, frozen=True, kw_only=True, tag="servers.secrets.delete.v1"):
    """Forget one secret of a server; a running server that needs it restarts without it."""

    org_id: Id
    server_id: Id
    name: SecretName
    requested_by: str = ""


class ServerSecretDeleted(Message, frozen=True, kw_only=True, tag="servers.secrets.deleted.v1"):
    server_id: Id
    name: SecretName
    restarted: bool


class StageBuildSecrets(Message, frozen=True, kw_only=True, tag="servers.secrets.stage.v1"):
    """Secrets given with a build request: kept sealed for the build and moved onto its server when the
    build deploys (or set on it at once, when it has deployed already)."""

    org_id: Id
    build_id: Id
    secrets: Annotated[dict[SecretName, SecretValue], msgspec.Meta(min_length=1, max_length=MAX_SECRETS_PER_REQUEST)]
    requested_by: str = ""

    def __repr__(self) -> str:  # a logged request must not show the values
        return (f"StageBuildSecrets(org_id={self.org_id!r}, build_id={self.build_id!r}, "
                f"names={sorted(self.secrets)!r}, values=<redacted>)")


class BuildSecretsStaged(Message, frozen=True, kw_only=True, tag="servers.secrets.staged.v1"):
    """The build's secrets are stored; `server_id` is set when the build had deployed already."""

    build_id: Id
    names: tuple[str, ...]
    server_id: Id | None = None


ListServersReply = ServerList | Failed
GetServerReply = ServerReply | Failed
ControlServerReply = ServerReply | Failed
GetServerLogsReply = ServerLogs | Failed
ResolveServerReply = ServerOwner | Failed
SetServerSecretReply = ServerSecretSet | Failed
ListServerSecretsReply = ServerSecrets | Failed
DeleteServerSecretReply = ServerSecretDeleted | Failed
StageBuildSecretsReply = BuildSecretsStaged | Failed


def servers_base(servers_url: str | None, issuer: str) -> str:
    """The base URL of the server URL space, without a trailing slash (default `<issuer>/servers`)."""
    return (servers_url or f"{issuer}/servers").rstrip("/")


def server_url(servers_url: str | None, issuer: str, server_id: str) -> str:
    """A server's stable public MCP URL: `<servers base>/<server_id>/mcp` (the audience of its tokens)."""
    return f"{servers_base(servers_url, issuer)}/{server_id}/mcp"
