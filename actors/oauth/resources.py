"""Which MCP server a `resource` (RFC 8707) names, and which organisation owns it.

This is the one seam where the deployer's server registry will be asked (issue 5): today no server
registry exists, so any well-formed URL in the platform's server URL space is accepted for any
organisation (`org_id` None). Once the registry exists, `resolve_resource` asks it over the bus and
returns the owning organisation; the consent step already refuses a resource owned by another
organisation than the signed-in person's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_SERVER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ResourceServer:
    """A hosted MCP server that a token can be issued for."""

    resource: str
    """Its canonical URL, exactly as tokens carry it in `aud`."""
    server_id: str
    org_id: str | None
    """The owning organisation; None while there is no server registry to ask."""


def servers_base(servers_url: str | None, issuer: str) -> str:
    """The base URL of the server URL space, without a trailing slash."""
    return (servers_url or f"{issuer}/servers").rstrip("/")


async def resolve_resource(resource: str, servers_url: str) -> ResourceServer | None:
    """The server `resource` names (`<servers_url>/<server-id>/mcp`), or None if it is not one of ours."""
    parts = urlsplit(resource)
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    prefix = f"{servers_url}/"
    if not resource.startswith(prefix) or not resource.endswith("/mcp"):
        return None
    server_id = resource[len(prefix) : -len("/mcp")]
    if not _SERVER_ID.match(server_id):
        return None
    return ResourceServer(resource=resource, server_id=server_id, org_id=None)
