"""The runner's token verifier refuses every token our Authorization Server did not issue for this server,
with the JWKS served over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from runner_template.auth import (
    VERIFIED_REUSE_SECONDS,
    AccessTokenVerifier,
    RevokedGrants,
    TokenRejected,
    may_call_tool,
    scopes_for_tool,
)
from tests.support.oauth_helpers import document_server, serve_asgi

ISSUER = "https://bmms.example"
RESOURCE = "https://bmms.example/servers/weather/mcp"
KEY = RSAKey.generate_key(2048, parameters={"kid": "current", "alg": "RS256", "use": "sig"})
ROTATED = RSAKey.generate_key(2048, parameters={"kid": "rotated", "alg": "RS256", "use": "sig"})
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "stranger", "alg": "RS256", "use": "sig"})


def jwks(*keys: RSAKey) -> bytes:
    return json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, dict[str, tuple[bytes, dict[str, str]]], Any]]:
    documents = {"/oauth/jwks.json": (jwks(KEY), {})}
    app = document_server(documents)
    async with serve_asgi(app) as base:
        yield base, documents, app


def verifier_for(base: str, **options: Any) -> AccessTokenVerifier:
    return AccessTokenVerifier(issuer=ISSUER, resource=RESOURCE, jwks_url=f"{base}/oauth/jwks.json", **options)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"iss": ISSUER, "sub": "person:p1", "aud": RESOURCE, "exp": now + 900, "iat": now,
                              "jti": "j1", "scope": "mcp:tools:read", "client_id": "c1", "org_id": "o1"}
    values.update(changes)
    return values


def signed(key: RSAKey = KEY, **changes: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims(**changes), key, algorithms=["RS256"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], signature: bytes | None = None, hmac_key: bytes | None = None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature or b'')}"


async def refused(verifier: AccessTokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token)
    assert await verifier.verify_token(token) is None
    return str(info.value)


async def test_a_token_from_our_issuer_for_this_server_is_accepted(served: Any) -> None:
    base, _, _ = served
    access = await verifier_for(base).verify(signed())
    assert access.subject == "person:p1" and access.client_id == "c1" and access.resource == RESOURCE
    assert access.scopes == ["mcp:tools:read"] and access.claims and access.claims["iss"] == ISSUER


async def test_alg_none_is_refused(served: Any) -> None:
    base, _, _ = served
    reason = await refused(verifier_for(base), handmade({"alg": "none", "typ": "at+jwt", "kid": "current"}))
    assert "'none' is not accepted" in reason


async def test_hs256_signed_with_the_public_key_is_refused(served: Any) -> None:
    base, _, _ = served
    token = handmade({"alg": "HS256", "typ": "at+jwt", "kid": "current"}, hmac_key=KEY.as_pem(private=False))
    assert "'HS256' is not accepted" in await refused(verifier_for(base), token)


async def test_unknown_kid_is_refused_after_one_bounded_refetch(served: Any) -> None:
    base, _, app = served
    verifier = verifier_for(base, refetch_interval=3600)
    await verifier.verify(signed())
    assert "no published key" in await refused(verifier, signed(STRANGER))
    assert "no published key" in await refused(verifier, signed(STRANGER))
    assert app.hits["/oauth/jwks.json"] == 1  # made-up kids do not hammer the JWKS


async def test_a_rotated_in_key_is_picked_up_on_its_first_token(served: Any) -> None:
    base, documents, app = served
    verifier = verifier_for(base, refetch_interval=0)
    await verifier.verify(signed())
    documents["/oauth/jwks.json"] = (jwks(ROTATED, KEY), {})
    access = await verifier.verify(signed(ROTATED))
    assert access.subject == "person:p1" and app.hits["/oauth/jwks.json"] == 2


async def test_a_token_signed_by_another_key_under_our_kid_is_refused(served: Any) -> None:
    base, _, _ = served
    forged = jwt.encode({"alg": "RS256", "kid": "current", "typ": "at+jwt"}, claims(), STRANGER, algorithms=["RS256"])
    assert "bad signature" in await refused(verifier_for(base), forged)


async def test_expired_token_is_refused(served: Any) -> None:
    base, _, _ = served
    now = int(time.time())
    reason = await refused(verifier_for(base), signed(exp=now - 3600, iat=now - 4500))
    assert "exp" in reason


async def test_a_reused_token_is_verified_again_once_it_expires_and_refused_once_revoked(served: Any) -> None:
    base, _, _ = served
    now = [time.time()]
    revoked = RevokedGrants(keep_seconds=3600)
    verifier = verifier_for(base, clock=lambda: now[0])
    token = signed(exp=int(now[0]) + 90)
    assert (await verifier.verify(token)).subject == "person:p1"
    now[0] += VERIFIED_REUSE_SECONDS + 1  # the reuse ran out: verified again, still valid
    assert (await verifier.verify(token)).subject == "person:p1"
    now[0] += 60  # past exp + leeway: a reused verification never outlives the token
    assert "exp" in await refused(verifier, token)

    watching = verifier_for(base, revoked=revoked)
    other = signed(gid="g1", jti="j2")
    assert (await watching.verify(other)).subject == "person:p1"
    revoked.revoke("g1")
    assert "grant was revoked" in await refused(watching, other)  # checked on the reused verification too


async def test_token_for_another_servers_audience_is_refused(served: Any) -> None:
    base, _, _ = served
    reason = await refused(verifier_for(base), signed(aud="https://bmms.example/servers/other/mcp"))
    assert "aud" in reason
    both = signed(aud=[RESOURCE, "https://bmms.example/servers/other/mcp"])
    assert "audience" in await refused(verifier_for(base), both)


async def test_token_from_another_issuer_is_refused(served: Any) -> None:
    base, _, _ = served
    assert "iss" in await refused(verifier_for(base), signed(iss="https://bmms.example/"))


async def test_a_jwt_that_is_not_an_access_token_is_refused(served: Any) -> None:
    base, _, _ = served
    id_token = jwt.encode({"alg": "RS256", "kid": "current"}, claims(), KEY, algorithms=["RS256"])
    assert "token type 'JWT'" in await refused(verifier_for(base), id_token)


async def test_required_scopes_are_enforced(served: Any) -> None:
    base, _, _ = served
    verifier = verifier_for(base, required_scopes=("mcp:tools:write",))
    assert "missing scope" in await refused(verifier, signed(scope="mcp:tools:read"))


def test_tool_scopes_follow_the_grammar() -> None:
    assert scopes_for_tool("forecast", read_only=True) == ("mcp:tools:read", "mcp:tool:forecast")
    assert may_call_tool(["mcp:tools:read"], "forecast", read_only=True)
    assert not may_call_tool(["mcp:tools:read"], "delete_city", read_only=False)
    assert may_call_tool(["mcp:tool:delete_city"], "delete_city", read_only=False)
    assert may_call_tool(["mcp:tools:write"], "delete_city", read_only=False)
