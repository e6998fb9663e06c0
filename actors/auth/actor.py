"""The auth actor's handlers: API keys for organisations."""

from __future__ import annotations

import secrets
from pathlib import Path

from actors.auth.keys import VerifiedKeys, new_api_key, parse_api_key, secret_matches
from actors.runtime.actor import Actor, Context
from bus_schemas.base import Failed, FailureCode
from bus_schemas.identity import (
    ApiKeyCreated,
    Authenticate,
    AuthenticateReply,
    CreateApiKey,
    CreateApiKeyReply,
    Principal,
)
from bus_schemas.registry import AUTHENTICATE, CREATE_API_KEY

REJECTED = "invalid or revoked API key"


def create_actor() -> Actor:
    """The auth actor."""
    actor = Actor("auth", migrations=Path(__file__).parent / "migrations")
    verified = VerifiedKeys()

    @actor.rpc(AUTHENTICATE)
    async def authenticate(request: Authenticate, ctx: Context) -> AuthenticateReply:
        cached = verified.get(request.token)
        if cached is not None:
            return Principal(org_id=cached[0], subject=f"api_key:{cached[1]}")
        parsed = parse_api_key(request.token)
        if parsed is None:
            ctx.log.info("rejected credential: not an API key")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
        key_id, secret = parsed
        row = await ctx.pool.fetchrow(
            "SELECT org_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id
        )
        if row is None or not secret_matches(row["secret_hash"], secret):
            ctx.log.info("rejected API key %s: %s", key_id, "unknown or revoked" if row is None else "wrong secret")
            return Failed(code=FailureCode.UNAUTHENTICATED, detail=REJECTED)
        verified.put(request.token, row["org_id"], key_id)
        return Principal(org_id=row["org_id"], subject=f"api_key:{key_id}")

    @actor.rpc(CREATE_API_KEY)
    async def create_api_key(request: CreateApiKey, ctx: Context) -> CreateApiKeyReply:
        key_id, full, secret_hash = new_api_key()
        async with ctx.pool.acquire() as conn, conn.transaction():
            org_id = await conn.fetchval(
                """
                INSERT INTO orgs (org_id, name) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
                RETURNING org_id
                """,
                f"o{secrets.token_hex(8)}", request.org_name,
            )
            await conn.execute(
                "INSERT INTO api_keys (key_id, org_id, label, secret_hash) VALUES ($1, $2, $3, $4)",
                key_id, org_id, request.label, secret_hash,
            )
        ctx.log.info("created API key %s for org %s", key_id, org_id)
        return ApiKeyCreated(org_id=org_id, key_id=key_id, secret=full)

    return actor
