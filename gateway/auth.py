"""Who is calling: `Authorization: Bearer <API key>` resolved by the auth actor to a Principal."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType

from bus_schemas.identity import Authenticate, Principal
from bus_schemas.registry import AUTHENTICATE
from gateway.bus import BusClient
from gateway.problems import unauthenticated

WEBSOCKET_BEARER_PROTOCOL = "bearer"
"""Browsers cannot set headers on a WebSocket, so they offer the subprotocols `bearer, <API key>`
(`new WebSocket(url, ["bearer", key])`); the server answers `bearer`. Unlike `?access_token=`, the key
never lands in a URL, so no access log or proxy records it."""


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The bearer credential of a request: the Authorization header, or for a WebSocket the
    `bearer, <token>` subprotocol pair."""
    header = connection.headers.get("authorization")
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


class Authenticator:
    """Resolves API keys through the AUTHENTICATE RPC, with a small in-process cache.

    Hot clients send many requests with the same key; remembering a resolved key for a few seconds
    (keyed by its SHA-256, never the key itself) saves an RPC per request. The price is that a revoked
    key keeps working for at most `ttl` seconds on this gateway. Failures are not cached, so a key
    created a moment ago works at once.
    """

    def __init__(self, bus: BusClient, ttl: float, max_entries: int) -> None:
        self.bus = bus
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    async def principal(self, token: str | None) -> Principal:
        """The principal a bearer token acts for; raises a 401 Problem when there is none."""
        if not token:
            raise unauthenticated("send an API key as `Authorization: Bearer <key>`")
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self.bus.ask(AUTHENTICATE, Authenticate(token=token), Principal)
        self._cache[digest] = (now + self.ttl, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return principal
