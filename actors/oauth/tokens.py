"""Opaque secrets (codes, refresh tokens, client secrets) and signed access tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105
"""The `typ` header of access tokens (RFC 9068), so no other JWT of ours passes for one."""


def new_secret(prefix: str) -> str:
    """A 256-bit random secret with a readable prefix (`bmms_rt_...`), so a leaked one is recognisable."""
    return f"{prefix}{secrets.token_urlsafe(32)}"


def digest(value: str) -> str:
    """What is stored instead of a secret: its SHA-256 (hex). The secrets carry 256 bits of entropy, so a
    fast hash suffices to make a stolen table useless; no salt or stretching is needed."""
    return hashlib.sha256(value.encode()).hexdigest()


def pkce_matches(code_verifier: str, code_challenge: str) -> bool:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) == challenge, compared in constant time."""
    computed = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode("ascii")).digest()).rstrip(b"=")
    return hmac.compare_digest(computed.decode("ascii"), code_challenge)


def mint_access_token(
    key: RSAKey,
    *,
    issuer: str,
    subject: str,
    audience: str,
    client_id: str,
    scope: str,
    org_id: str,
    lifetime: int,
    now: float | None = None,
    grant_id: str | None = None,
) -> tuple[str, str]:
    """(the RS256 JWT, its jti). A token issued under a grant carries its id as `gid`, so resource servers
    can refuse it once the grant is revoked (service tokens have none)."""
    issued = int(time.time() if now is None else now)
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": issued + lifetime,
        "iat": issued,
        "nbf": issued,
        "jti": jti,
        "scope": scope,
        "client_id": client_id,
        "org_id": org_id,
    }
    if grant_id is not None:
        claims["gid"] = grant_id
    header = {"alg": "RS256", "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    return jwt.encode(header, claims, key, algorithms=["RS256"]), jti


def our_access_token_claims(token: str, keys: KeySet, issuer: str) -> dict[str, Any] | None:
    """The claims of `token` if it is an access token we signed (RS256 with a published key, type at+jwt)
    for `issuer`; None for anything else (another JWT, a forgery, a refresh token, garbage). Expiry is the
    caller's business."""
    try:
        decoded = jwt.decode(token, keys, algorithms=["RS256"])
    except (JoseError, ValueError, TypeError):
        return None
    if decoded.header.get("typ") != ACCESS_TOKEN_TYPE or not decoded.header.get("kid"):
        return None
    claims = decoded.claims
    return claims if claims.get("iss") == issuer else None
