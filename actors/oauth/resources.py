"""Which MCP server a `resource` (RFC 8707) names, and which organisation owns it.

The URL must have the shape of the server URL space (`<servers_url>/<server-id>/mcp`), and the server must
exist in the deployer's registry, which says who owns it (asked over the bus, RESOLVE_SERVER). A token
is only ever issued for a server that exists, to a person of the organisation that owns it: the
runner checks `aud`, so a token for a made-up or foreign URL would otherwise open another
organisation's server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from nats.aio.client import Client

from actors.runtime.bus import call
from bus_schemas.base import Failed, FailureCode
from bus_schemas.registry import RESOLVE_SERVER
from bus_schemas.servers import ResolveServer, ServerOwner, servers_base

__all__ = ["RegistryUnavailable", "ResourceServer", "resolve_resource", "server_id_of", "servers_base"]

_SERVER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ResourceServer:
    """A hosted MCP server that a token can be issued for."""

    resource: str
    """Its canonical URL, exactly as tokens carry it in `aud`."""
    server_id: str
    org_id: str
    """The owning organisation (from the deployer's registry)."""


class RegistryUnavailable(Exception):
    """The server registry did not answer; nothing can be issued for a server until it does."""


def server_id_of(resource: str, servers_url: str) -> str | None:
    """The server id in `resource` (`<servers_url>/<server-id>/mcp`), or None if it has another shape."""
    parts = urlsplit(resource)
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    prefix = f"{servers_url}/"
    if not resource.startswith(prefix) or not resource.endswith("/mcp"):
        return None
    server_id = resource[len(prefix) : -len("/mcp")]
    return server_id if _SERVER_ID.match(server_id) else None


async def resolve_resource(nc: Client, resource: str, servers_url: str) -> ResourceServer | None:
    """The server `resource` names, or None if it is not a server hosted here.

    Raises RegistryUnavailable when the deployer's registry does not answer.
    """
    server_id = server_id_of(resource, servers_url)
    if server_id is None:
        return None
    reply = await call(nc, RESOLVE_SERVER, ResolveServer(server_id=server_id), timeout=5)
    if isinstance(reply, ServerOwner):
        if reply.url != resource:
            return None
        return ResourceServer(resource=resource, server_id=server_id, org_id=reply.org_id)
    if isinstance(reply, Failed) and reply.code == FailureCode.NOT_FOUND:
        return None
    raise RegistryUnavailable(reply.detail if isinstance(reply, Failed) else "no answer")
