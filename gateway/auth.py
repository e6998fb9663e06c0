"""Who is calling: `Authorization: Bearer <API key>`, or a browser's session cookie, resolved by the auth
actor to a Principal. `X-Org: <org id>` picks which of a person's organisations a request acts in (default:
their first one, the organisation they own from their first sign-in)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType

from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.identity import Authenticate, Principal
from bus_schemas.registry import AUTHENTICATE
from gateway.bus import BusClient
from gateway.problems import Problem, unauthenticated
from gateway.tracing import request_header

log = logging.getLogger("bmms.gateway.auth")

SESSION_COOKIE = "bmms_session"
"""The browser session cookie (HttpOnly, SameSite=Lax, Path=/; Secure over https); its value is the
session token, stored by the auth actor only as a SHA-256 digest."""
ORG_HEADER = "X-Org"
"""Request header naming the organisation (org id) a signed-in person acts in for this request."""
_ORG_HEADER_NAME = ORG_HEADER.lower().encode()

WEBSOCKET_BEARER_PROTOCOL = "bearer"
"""Browsers cannot set headers on a WebSocket, so they offer the subprotocols `bearer, <API key>`
(`new WebSocket(url, ["bearer", key])`); the server answers `bearer`. Unlike `?access_token=`, the key
never lands in a URL, so no access log or proxy records it."""


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The bearer credential of a request: the Authorization header, or for a WebSocket the
    `bearer, <token>` subprotocol pair."""
    header = request_header(connection.scope, b"authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        offered = [p.strip() for p in connection.headers.get("sec-websocket-protocol", "").split(",")]
        if len(offered) >= 2 and offered[0].lower() == WEBSOCKET_BEARER_PROTOCOL:
            return offered[1] or None
    return None


def session_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The session cookie's token, if the request carries one."""
    return connection.cookies.get(SESSION_COOKIE) or None


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL, default ports filled in; None when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def origin_allowed(connection: ASGIConnection[Any, Any, Any, Any], public_url: str | None) -> bool:
    """Whether the request's `Origin` is this gateway's own: the public URL's origin, or the origin the
    request was addressed to (its Host header). False without an `Origin` (or with `null`).

    Browsers always send `Origin` on WebSocket handshakes and cross-origin POSTs, and a page cannot forge
    it, so this tells our own pages from another site's."""
    origin = _origin_of(connection.headers.get("origin", ""))
    if origin is None:
        return False
    if public_url and origin == _origin_of(public_url):
        return True
    host = connection.headers.get("host", "")
    # The Host header has no scheme; take the Origin's, so default ports compare equal.
    return bool(host) and origin == _origin_of(f"{origin[0]}://{host}")


def requested_org(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The organisation named by `X-Org`, or None; 400 when the header cannot be an org id."""
    org = request_header(connection.scope, _ORG_HEADER_NAME)
    if org is None:
        return None
    if not SUBJECT_TOKEN_RE.match(org):
        log.info("rejected request: %s is not an org id", ORG_HEADER)
        raise Problem(400, f"{ORG_HEADER} must be an organisation id", code=FailureCode.INVALID)
    return org


class Authenticator:
    """Resolves API keys and session tokens through the AUTHENTICATE RPC, with a small in-process cache.

    Hot clients send many requests with the same credential; remembering a resolved one for a few
    seconds (keyed by its SHA-256, never the credential itself) saves an RPC per request. The price is
    that a revoked key or session keeps working for at most `ttl` seconds on a gateway that did not
    handle the revocation (the one that did forgets it at once). Failures are not cached, so a key
    created a moment ago works at once.
    """

    def __init__(self, bus: BusClient, ttl: float, max_entries: int) -> None:
        self.bus = bus
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[bytes, str], tuple[float, Principal]] = OrderedDict()

    async def principal(self, token: str | None, org: str | None = None) -> Principal:
        """The principal a credential acts for (in organisation `org`, when given); raises a 401 Problem
        when there is none, 403 when the caller may not act in `org`."""
        if not token:
            log.info("rejected request: no credential")
            raise unauthenticated("send an API key as `Authorization: Bearer <key>`, or sign in")
        key = (hashlib.sha256(token.encode()).digest(), org or "")
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self.bus.ask(AUTHENTICATE, Authenticate(token=token, org_id=org))
        self._cache[key] = (now + self.ttl, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return principal

    async def for_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        """The caller of a request: its bearer credential, else its session cookie, in its `X-Org`."""
        return await self.principal(bearer_token(connection) or session_token(connection), requested_org(connection))

    async def session_principal(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
        """The signed-in person of a browser request (session cookie only, first organisation), or None
        when there is no valid session: for pages that send a stranger to sign in rather than answer 401."""
        token = session_token(connection)
        if token is None:
            return None
        try:
            return await self.principal(token)
        except Problem as problem:
            if problem.status in (401, 403):
                return None
            raise

    def forget(self, *, token: str | None = None, subject: str | None = None, session_id: str | None = None,
               person_id: str | None = None, org_id: str | None = None) -> None:
        """Drop cached principals of a credential, of a subject (`api_key:<id>`), of a session, or of a
        person in one organisation (`person_id` with `org_id`: removed or given another role), so a
        revocation handled by this gateway holds here at once."""
        digest = hashlib.sha256(token.encode()).digest() if token else None
        stale = [
            key for key, (_, p) in self._cache.items()
            if key[0] == digest or (subject and p.subject == subject) or (session_id and p.session_id == session_id)
            or (person_id and p.person_id == person_id and p.org_id == org_id)
        ]
        for key in stale:
            del self._cache[key]
