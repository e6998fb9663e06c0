"""The HTTP edge's request and response bodies (the bus messages stay on the bus)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from bus_schemas.base import Id
from bus_schemas.builds import BuildSource, BuildStatus
from bus_schemas.plans import SecretName
from bus_schemas.servers import MAX_SECRETS_PER_REQUEST, SecretValue


class CreateBuild(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ask for a new MCP server."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    """A short name for the server."""
    source: BuildSource
    """What the server should do; `kind` says which form: plain_words, openapi or tool_spec."""
    server_id: Id | None = None
    """Deploy the build as a new version of this server of the organisation (same URL); omit for a new server."""
    secrets: Annotated[dict[SecretName, SecretValue], msgspec.Meta(max_length=MAX_SECRETS_PER_REQUEST)] | None = None
    """Upstream credentials by secret name (e.g. `{"NOTES_KEY": "..."}` for the security scheme `notes_key`, or
    `credentials.secret_name`): handed to the deployer alone, sealed, and set on the build's server before it
    starts; they never enter the build request, its events or the plan."""


class BuildLinks(msgspec.Struct, frozen=True, kw_only=True):
    """Where to read the build and follow its events."""

    self_: str = msgspec.field(name="self")
    stream: str
    """WebSocket of the build's whole event history, then live events."""


class BuildCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A build was accepted; follow `links.stream` to watch it."""

    build_id: str
    status: BuildStatus
    links: BuildLinks


class BuildView(msgspec.Struct, frozen=True, kw_only=True):
    """Where a build stands."""

    build_id: str
    name: str
    status: BuildStatus
    created_at: str
    updated_at: str
    last_seq: int
    """Stream sequence of the last event reflected here."""
    failure: str | None = None
    server_id: str | None = None
    """The server the build deployed as (`/v1/servers/{server_id}`), once `status` is `deployed`."""
    url: str | None = None
    """That server's stable MCP URL, for MCP clients, once deployed."""
    links: BuildLinks


def build_links(build_id: str) -> BuildLinks:
    """The links of one build."""
    base = f"/v1/builds/{build_id}"
    return BuildLinks(self_=base, stream=f"{base}/stream")
