"""The scope grammar of tokens for hosted MCP servers (enforced by each server's runner).

    mcp:tools:read         call the server's read-only tools (those annotated `readOnlyHint`)
    mcp:tools:write        call the server's tools that change something
    mcp:tool:<name>        call one named tool, whatever kind it is (`<name>`: [A-Za-z0-9_.-]{1,64})
    offline_access         accepted for clients that ask for it; refresh tokens are issued either way

A token's audience (`aud`) is the one server it was issued for, so scopes never name a server.
`mcp:tools:read` is what using a server at all needs: it is always granted, also to a client that asks only
for `mcp:tools:write` or `mcp:tool:<name>` (a runner's 403 challenge names only the scope missing for one
call, so clients take read for granted), and a refresh that narrows the scope keeps it. Every other scope is
optional on the consent page. When a client asks for no scope, it gets `mcp:tools:read mcp:tools:write`.
"""

from __future__ import annotations

import re

from bus_schemas.oauth import SCOPE_OFFLINE_ACCESS as OFFLINE
from bus_schemas.oauth import SCOPE_TOOL_PREFIX as TOOL_PREFIX
from bus_schemas.oauth import SCOPE_TOOLS_READ as READ
from bus_schemas.oauth import SCOPE_TOOLS_WRITE as WRITE
from bus_schemas.oauth import SCOPES_SUPPORTED as SUPPORTED

DEFAULT_SCOPES = (READ, WRITE)

_TOOL = re.compile(r"^mcp:tool:[A-Za-z0-9_.-]{1,64}$")


class ScopeError(ValueError):
    """A scope outside the grammar."""


def parse_scope(scope: str | None) -> tuple[str, ...]:
    """The requested scopes, de-duplicated in order; the defaults when none were asked for."""
    if scope is None or not scope.strip():
        return DEFAULT_SCOPES
    seen: list[str] = []
    for item in scope.split(" "):
        if not item:
            continue
        if item not in SUPPORTED and not _TOOL.match(item):
            raise ScopeError(f"unknown scope {item[:80]!r}: use mcp:tools:read, mcp:tools:write or mcp:tool:<name>")
        if item not in seen:
            seen.append(item)
    return tuple(seen)


def requested_scopes(scope: str | None) -> tuple[str, ...]:
    """The scopes an authorization request puts on the consent page: those asked for, `mcp:tools:read` first
    whether asked for or not (it is always granted)."""
    return (READ, *(s for s in parse_scope(scope) if s != READ))


def narrowed_scope(granted: str, asked: str | None) -> str:
    """The scope of a refreshed token: the granted scopes asked for again (all of them when none are asked),
    keeping `mcp:tools:read`; ScopeError when one asked for was not granted (a refresh may only narrow)."""
    scopes = granted.split()
    if asked is None or not asked.strip():
        return granted
    wanted = asked.split()
    if any(s not in scopes for s in wanted):
        raise ScopeError(f"a refresh may only narrow the granted scope ({granted})")
    return " ".join(s for s in scopes if s in wanted or s == READ)


def describe(scope: str) -> str:
    """What a scope allows, in words for the consent page."""
    if scope == READ:
        return "Use the server's read-only tools"
    if scope == WRITE:
        return "Use the server's tools that change things"
    if scope == OFFLINE:
        return "Stay connected when you are away (refresh tokens)"
    return f"Use the tool “{scope.removeprefix(TOOL_PREFIX)}”"


def is_optional(scope: str) -> bool:
    """Whether the person may untick it on the consent page."""
    return scope != READ
