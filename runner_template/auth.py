"""Resource Server token verification: RS256 access tokens from our Authorization Server.

`AccessTokenVerifier` is the mcp SDK's `TokenVerifier` seam. It accepts a token only if its header says
RS256 with a `kid` and type `at+jwt`, the key with that `kid` is in the Authorization Server's JWKS
(from a pluggable key source - the bus or HTTP - cached, fetched again on an unknown `kid` but at most once
per `refetch_interval`),
the signature verifies, `iss` is the issuer byte for byte, `aud` is this server's canonical URL, and
`exp`/`nbf` hold. Anything else - `alg: none`, HS256 "signed" with the public key, a key nobody
published, an expired token, a token for another server - is refused, and the reason logged.

A token whose `gid` claim names a grant in `RevokedGrants` (fed from the REVOKED bucket by the bus) is
refused too: "the grant was revoked"; so is one whose `jti` is there (that one token was revoked, RFC 7009):
"the token was revoked".

Scopes (see `bus_schemas.oauth`): read-only tools need `mcp:tools:read`, other tools `mcp:tools:write`,
and `mcp:tool:<name>` allows one tool whatever its kind. `scopes_for_tool` says which scopes a call
accepts, for the 403 `insufficient_scope` challenge.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jwt import JWTClaimsRegistry
from mcp.server.auth.provider import AccessToken

log = logging.getLogger("bmms.runner.auth")

ALGORITHM = "RS256"
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
SCOPE_TOOLS_READ = "mcp:tools:read"
SCOPE_TOOLS_WRITE = "mcp:tools:write"
SCOPE_TOOL_PREFIX = "mcp:tool:"


KeySource = Callable[[], Awaitable[Mapping[str, Any]]]
"""Where the verifier gets the Authorization Server's JWK Set (RFC 7517 JSON: `{"keys": [...]}`);
raises KeySourceUnavailable (or returns something unreadable) when it cannot."""


VERIFIED_REUSE_SECONDS = 60.0
"""How long a verified token is trusted without checking its signature again (never past its `exp`); it
bounds how long a signing key withdrawn from the JWKS still counts."""
VERIFIED_CACHE_SIZE = 4096


class TokenRejected(Exception):
    """Why a bearer token is not accepted."""


class KeySourceUnavailable(Exception):
    """The JWK Set could not be fetched now; the verifier keeps the keys it has."""


class RevokedGrants:
    """Grants, and single access tokens, revoked early, as the REVOKED bucket reports them: grant id or
    token id (`jti`) -> when it can be forgotten. The two never collide (`g` + 24 hex digits; 22 base64url).

    An entry is kept `keep_seconds` after its revocation (the bucket's TTL, longer than any token of the
    grant lives), so the set stays as small as the bucket."""

    def __init__(self, keep_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.keep_seconds = keep_seconds
        self.clock = clock
        self._until: dict[str, float] = {}
        self.updates = 0
        """Revocations applied (tests wait on it)."""

    def revoke(self, grant_id: str, revoked_at: float | None = None) -> None:
        """Record a revoked grant or access token (`revoked_at`: epoch seconds, default now)."""
        now = self.clock()
        self._until[grant_id] = (revoked_at if revoked_at is not None else now) + self.keep_seconds
        self.updates += 1
        if len(self._until) % 256 == 0:
            self._until = {g: t for g, t in self._until.items() if t > now}

    def __contains__(self, grant_id: object) -> bool:
        until = self._until.get(grant_id) if isinstance(grant_id, str) else None
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        return len(self._until)


def jwks_over_http(url: str, http: httpx2.AsyncClient | None = None) -> KeySource:
    """A key source that GETs the JWK Set at `url` (with `http`, or a fresh client per fetch)."""

    async def fetch() -> Mapping[str, Any]:
        try:
            if http is not None:
                response = await http.get(url, timeout=5.0)
            else:
                async with httpx2.AsyncClient(timeout=5.0, trust_env=False) as client:
                    response = await client.get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise KeySourceUnavailable(f"GET {url}: {exc!r}") from None
        if not isinstance(document, dict):
            raise KeySourceUnavailable(f"GET {url}: not a JWK Set")
        return document

    return fetch


def scopes_for_tool(name: str, *, read_only: bool) -> tuple[str, ...]:
    """The scopes any one of which lets a token call tool `name`."""
    return (SCOPE_TOOLS_READ if read_only else SCOPE_TOOLS_WRITE, f"{SCOPE_TOOL_PREFIX}{name}")


def may_call_tool(scopes: list[str] | tuple[str, ...], name: str, *, read_only: bool) -> bool:
    """Whether a token with `scopes` may call tool `name`."""
    return any(s in scopes for s in scopes_for_tool(name, read_only=read_only))


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("not a compact JWS (three dot-separated parts)")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except ValueError:
        raise TokenRejected("unreadable JOSE header") from None
    if not isinstance(header, dict):
        raise TokenRejected("the JOSE header is not an object")
    return header


class AccessTokenVerifier:
    """Verifies our access tokens for one MCP server (implements `mcp.server.auth.provider.TokenVerifier`)."""

    def __init__(
        self,
        *,
        issuer: str,
        resource: str,
        key_source: KeySource | None = None,
        jwks_url: str | None = None,
        required_scopes: tuple[str, ...] = (),
        cache_seconds: float = 300.0,
        refetch_interval: float = 10.0,
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
        http: httpx2.AsyncClient | None = None,
        revoked: RevokedGrants | None = None,
    ) -> None:
        self.issuer = issuer
        """Our Authorization Server's issuer, exactly as in its metadata and in `iss`."""
        self.resource = resource
        """This server's canonical URL (with `/mcp`); tokens must carry it as `aud`."""
        self._key_source = key_source or jwks_over_http(jwks_url or f"{issuer}/oauth/jwks.json", http)
        """Without one, the JWKS is fetched over HTTP from `jwks_url` (default: the issuer's)."""
        self.required_scopes = required_scopes
        self.cache_seconds = cache_seconds
        self.refetch_interval = refetch_interval
        self.leeway = leeway
        self.clock = clock
        self.revoked = revoked
        """Grants whose tokens are refused although valid otherwise; None: no revocation list."""
        self._verified: dict[str, tuple[AccessToken, float]] = {}
        """Tokens verified lately -> (their access info, until when the verification is reused): a client
        sends the same token with every call, and checking an RS256 signature each time costs more than the
        rest of a small tool call."""
        self._keys: dict[str, RSAKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK seam: the token's access info, or None (the SDK answers 401) with the reason logged."""
        try:
            return await self.verify(token)
        except TokenRejected as exc:
            log.info("bearer token refused for %s: %s", self.resource, exc)
            return None

    async def verify(self, token: str) -> AccessToken:
        """The token's access info; raises TokenRejected saying why not.

        A token verified within the last `VERIFIED_REUSE_SECONDS` (and not expired since) is not verified
        again, but its grant and id are checked against the revocations every time."""
        now = self.clock()
        cached = self._verified.get(token)
        if cached is not None and now < cached[1]:
            access = cached[0]
            claims = access.claims or {}
            self._refuse_revoked(claims.get("gid"), claims.get("jti"))
            return access
        access = await self._verify_signed(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (access, min(now + VERIFIED_REUSE_SECONDS, float(access.expires_at or now)))
        return access

    def _refuse_revoked(self, grant: object, token_id: object) -> None:
        if self.revoked is not None:
            for what, revocable in (("grant", grant), ("token", token_id)):
                if isinstance(revocable, str) and revocable in self.revoked:
                    raise TokenRejected(f"the {what} was revoked")

    async def _verify_signed(self, token: str) -> AccessToken:
        header = _header(token)
        if header.get("alg") != ALGORITHM:
            raise TokenRejected(f"algorithm {header.get('alg')!r} is not accepted (only {ALGORITHM})")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenRejected(f"token type {header.get('typ')!r} is not {ACCESS_TOKEN_TYPE}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("the token names no key (kid)")
        key = await self._key(kid)
        try:
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except JoseError as exc:
            raise TokenRejected(f"bad signature or token: {exc.error}") from None
        claims = decoded.claims
        registry = JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.resource},
            exp={"essential": True},
            sub={"essential": True},
            client_id={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise TokenRejected(f"claims refused: {exc.error}: {exc.description}") from None
        audience = claims["aud"]
        if audience != self.resource:  # a list audience would name other servers too: one server per token
            raise TokenRejected(f"audience {audience!r} is not {self.resource}")
        grant = claims.get("gid")
        self._refuse_revoked(grant, claims.get("jti"))
        scopes = str(claims.get("scope", "")).split()
        missing = [s for s in self.required_scopes if s not in scopes]
        if missing:
            raise TokenRejected(f"missing scope(s) {' '.join(missing)}")
        return AccessToken(
            token=token,
            client_id=str(claims["client_id"]),
            scopes=scopes,
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims["sub"]),
            claims={"iss": claims["iss"], "org_id": claims.get("org_id"), "jti": claims.get("jti"), "gid": grant},
        )

    async def _key(self, kid: str) -> RSAKey:
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self.cache_seconds
        if kid not in self._keys or stale:
            async with self._lock:
                fetched = self._attempted_at
                # An unknown kid may be a key rotated in since the last fetch: fetch again, but not more than
                # once per `refetch_interval`, so a flood of made-up kids cannot hammer the JWKS.
                due = fetched is None or now - fetched > (self.cache_seconds if kid in self._keys
                                                          else self.refetch_interval)
                if due:
                    await self._fetch()
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(f"no published key has kid {kid!r}")
        return key

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            key_set = KeySet.import_key_set(dict(await self._key_source()))  # type: ignore[arg-type]  # joserfc wants its KeySetSerialization TypedDict
        except (KeySourceUnavailable, ValueError, TypeError, KeyError, JoseError) as exc:
            log.warning("cannot fetch the JWKS for %s: %r", self.resource, exc)
            return  # keep the keys we have; the next unknown kid tries again
        self._keys = {
            str(k.kid): k for k in key_set.keys
            if isinstance(k, RSAKey) and k.kid and k.get("alg", ALGORITHM) == ALGORITHM
        }
        self._fetched_at = time.monotonic()
